"""validate(config): a run config checked as a whole, once, when it is loaded.

`jaxbert pretrain`, `finetune` and `sweep` call it through config.load, before any
data is read, so a mistake in any key is reported within seconds as one line that
names the key: `train.batch_size=0 is invalid: must be an integer >= 1`. It checks

- the keys: each is one jaxbert/defaults.py defines for the task (the free-form
  option groups aside), and each of those is there;
- every value's type and range or choices (RULES; optim.* in `check_optim`, which
  the optimizer also runs on configs that never went through a file);
- the keys that depend on each other (steps or epochs, warm-up within the steps,
  init beside tokenizer.path and reinit, sequence length within the model);
- the selectors (optim.freeze, reinit; jaxbert/params.py): their syntax, and that
  each item picks a parameter of the model the config describes, whose names come
  from jax.eval_shape (no weights, no data);
- a sweep's search space: its shape, and each value set on the config passes the
  same checks.

What needs the devices (train.batch_size divisible by them) or the data (a split
smaller than a batch) is checked where those become known.
"""

from __future__ import annotations

import copy
import functools
import glob
import json
import math
import os

from jaxbert import defaults
from jaxbert import model_keys
from jaxbert import params as params_lib
from jaxbert.config import ConfigDict, set_key, suggest
from jaxbert.errors import UserError
from jaxbert.decoder import PRESETS as DECODER_PRESETS
from jaxbert.model import PRESETS, BertConfig

TASKS = ("pretrain", "finetune")
OPTIMIZERS = ("adamw", "lamb")
DECAYS = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
TOKENIZER_MODELS = ("unigram", "bpe")
POOLINGS = ("cls", "mean")
SWEEP_METHODS = ("grid", "random")
# Parameter names do not depend on the vocabulary; a small one keeps eval_shape quick.
PLACEHOLDER_VOCAB = 128


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int):
  return lambda v: _is_int(v) and v >= lo, f"must be an integer >= {lo}"


def _num(test, want: str):
  return lambda v: _is_num(v) and test(v), want


def _choice(options):
  return lambda v: v in options, f"use one of {list(options)}"


_BOOL = (lambda v: isinstance(v, bool), "must be True or False")
_STR = (lambda v: isinstance(v, str), "must be a string")
_NONEMPTY = (lambda v: isinstance(v, str) and v != "", "must be a non-empty string")
_ANY_INT = (_is_int, "must be an integer")
_FRACTION = _num(lambda v: 0 <= v < 1, "must be in [0, 1)")
_POSITIVE = _num(lambda v: v > 0, "must be > 0")
_NONNEG = _num(lambda v: v >= 0, "must be >= 0")
_MESH = (lambda v: _is_int(v) and (v == -1 or v >= 1),
         "must be -1 (the devices left over) or an integer >= 1")

RULES = {
    "task": _choice(TASKS), "name": _STR, "init": _STR, "reinit": _STR,
    "model.preset": (lambda v: v == "" or v in PRESETS,
                     f"use one of {list(PRESETS)}, or \"\" for the sizes in config.model"),
    "model.override_preset_sizes": _BOOL,
    **{f"model.{k}": _int(1) for k in ("hidden_size", "num_layers", "num_heads",
                                        "intermediate_size", "max_position_embeddings",
                                        "type_vocab_size")},
    "model.hidden_act": _STR, "model.hidden_dropout": _FRACTION,
    "model.attention_dropout": _FRACTION, "model.layer_norm_eps": _POSITIVE,
    "model.initializer_range": _POSITIVE, "model.dtype": _choice(DTYPES), "model.remat": _BOOL,
    "head.pooling": _choice(POOLINGS),
    "lora.rank": (_int(0)[0], "must be an integer >= 1 (0: no LoRA)"), "lora.alpha": _POSITIVE,
    "lora.targets": _STR,
    "tokenizer.path": _STR, "tokenizer.vocab_size": _int(1),
    "tokenizer.model_type": _choice(TOKENIZER_MODELS), "tokenizer.lowercase": _BOOL,
    "tokenizer.train_sentences": _int(1),
    "data.corpus": _STR, "data.text_field": _NONEMPTY, "data.split": _NONEMPTY,
    "data.tfds_data_dir": _STR, "data.heldout_fraction": _num(lambda v: 0 < v < 1, "must be in (0, 1)"),
    "data.max_seq_len": _int(4), "data.max_predictions_per_seq": _int(1),
    "data.mask_prob": _num(lambda v: 0 < v < 1, "must be in (0, 1)"),
    "data.short_seq_prob": _num(lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "data.whole_word": _BOOL, "data.packing": _int(0), "data.num_workers": _int(0),
    "data.eval_examples": _int(1),
    "data.task": (_NONEMPTY[0], "set --config.data.task=path/to/folder (your own files) or a "
                  "tfds task name (glue/sst2, conll2003, squad/v1.1, ...)"),
    "data.train_split": _NONEMPTY, "data.eval_split": _NONEMPTY,
    "data.data_dir": _STR, "data.length_buckets": _int(1),
    "data.train_file": _STR, "data.eval_file": _STR, "data.generate_examples": _int(0),
    "data.max_new_tokens": _int(1),
    "train.steps": _int(0), "train.batch_size": _int(1), "train.seed": _ANY_INT,
    "train.log_every": _int(1), "train.eval_every": _int(1), "train.checkpoint_every": _int(1),
    "train.keep_checkpoints": _int(1), "train.progress": _BOOL, "train.peak_flops": _NONNEG,
    "train.prng_impl": _choice(PRNG_IMPLS), "train.max_nonfinite": _int(0),
    "train.epochs": _NONNEG, "train.early_stopping_patience": _int(0),
    "train.early_stopping_min_delta": _NONNEG,
    "mesh.data": _MESH, "mesh.fsdp": _MESH,
    "sweep.method": _choice(SWEEP_METHODS), "sweep.num_trials": _int(0), "sweep.seed": _ANY_INT,
    "sweep.metric": _STR, "sweep.side_by_side": _BOOL, "sweep.max_side_by_side": _int(0),
}


# A decoder's model group (defaults.decoder_model_config); None takes the preset's value.
DECODER_RULES = {
    "model.preset": (lambda v: v == "" or v in DECODER_PRESETS,
                     f"use one of {list(DECODER_PRESETS)}, or \"\" for the sizes in config.model"),
    "model.arch": _choice(("gpt2", "llama")),
    **{f"model.{k}": _int(1) for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                        "intermediate_size", "max_position_embeddings")},
    "model.norm_eps": _POSITIVE, "model.rope_theta": _POSITIVE,
    "model.initializer_range": _POSITIVE, "model.dropout_rate": _FRACTION,
    "model.tie_word_embeddings": _BOOL, "model.dtype": _choice(DTYPES), "model.remat": _BOOL,
}


def _bad(key: str, value, want: str) -> UserError:
  return UserError(f"{key}={value!r} is invalid: {want}")


def check_optim(o, prefix: str = "optim") -> None:
  """The `optim` group's values (jaxbert/optim.py says what each does)."""

  def check(ok: bool, key: str, want: str):
    if not ok:
      raise _bad(f"{prefix}.{key}", o[key], want)

  num = lambda k: _is_num(o[k])
  check(o.name in OPTIMIZERS, "name", f"use one of {list(OPTIMIZERS)}")
  check(o.decay in DECAYS, "decay", f"use one of {list(DECAYS)}")
  check(num("lr") and o.lr > 0, "lr", "must be > 0")
  check(num("b1") and 0 <= o.b1 < 1, "b1", "must be in [0, 1)")
  check(num("b2") and 0 <= o.b2 < 1, "b2", "must be in [0, 1)")
  check(num("eps") and o.eps > 0, "eps", "must be > 0")
  check(num("weight_decay") and o.weight_decay >= 0, "weight_decay", "must be >= 0")
  check(o.clip_norm is None or num("clip_norm") and o.clip_norm >= 0, "clip_norm",
        "must be >= 0 (0 or None disables)")
  check(num("warmup_steps") and int(o.warmup_steps) == o.warmup_steps and o.warmup_steps >= 0,
        "warmup_steps", "must be an integer >= 0")
  check(num("warmup_fraction") and 0 <= o.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)")
  check(num("end_lr_fraction") and 0 <= o.end_lr_fraction <= 1, "end_lr_fraction", "must be in [0, 1]")
  check(num("accum_steps") and int(o.accum_steps) == o.accum_steps and o.accum_steps >= 1,
        "accum_steps", "must be an integer >= 1")
  check(num("layer_lr_decay") and 0 < o.layer_lr_decay <= 1, "layer_lr_decay",
        "must be in (0, 1] (1 disables)")
  check(isinstance(o.freeze, str), "freeze", "must be a string")


def _leaves(config: ConfigDict, prefix: str = "") -> dict:
  """Leaf keys -> values, not descending into free-form groups (data.options, sweep.space)."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ConfigDict):
      if v.is_type_safe:
        out.update(_leaves(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    else:
      out[f"{prefix}{k}"] = v
  return out


def schema(task: str, family: str = "encoder") -> ConfigDict:
  if task == "pretrain":
    return defaults.decoder_pretrain_config() if family == "decoder" else defaults.pretrain_config()
  return defaults.finetune_config()


def validate(config: ConfigDict) -> None:
  """Every check that needs neither the devices nor the data; a UserError names the key."""
  task = config.get("task")
  if task not in TASKS:
    raise _bad("config.task", task, f"use one of {list(TASKS)}")
  decoder = defaults.model_family(config) == "decoder"
  want = _leaves(defaults.instruct_config() if defaults.is_instruct(config)
                 else schema(task, defaults.model_family(config)))
  have = _leaves(config)
  for key in have:
    if key not in want:
      close = suggest(key, list(want))
      raise UserError(f"unknown config key {key!r} in the {task} config"
                      + (f"; did you mean {close}?" if close else ""))
  for key in want:
    if key not in have:
      raise UserError(f"the config lacks {key}; start config files from jaxbert.defaults "
                      f"{task}_config() and change what differs")
  for key, value in have.items():
    if decoder and key.startswith("model."):  # their own rules, below
      ok, text = DECODER_RULES.get(key, (lambda v: True, ""))
      if value is not None and not ok(value):
        raise _bad(key, value, text)
    elif key in RULES:
      ok, text = RULES[key]
      if not ok(value):
        raise _bad(key, value, text)
  check_optim(config.optim)
  _check_together(config)
  _check_selectors(config)
  if task == "finetune":
    _check_sweep(config)


def _check_together(c: ConfigDict) -> None:
  t, o, finetune = c.train, c.optim, c.task == "finetune"
  if finetune and t.epochs <= 0 and t.steps < 1:
    raise _bad("train.steps", t.steps, "must be an integer >= 1 (or set train.epochs > 0)")
  if not finetune and t.steps < 1:
    raise _bad("train.steps", t.steps, "must be an integer >= 1")
  if c.mesh.data == -1 and c.mesh.fsdp == -1:
    raise UserError("mesh.data and mesh.fsdp cannot both be -1")
  if c.init and not os.path.exists(c.init):
    raise UserError(f"config.init={c.init}: no such file or directory")
  if c.init and c.tokenizer.path:
    raise UserError("set either config.init (its tokenizer is used) or config.tokenizer.path")
  if finetune and c.reinit and not c.init:
    raise UserError(f"config.reinit={c.reinit!r} re-initialises parts of a pre-trained "
                    "encoder, but config.init is empty; set config.init or drop config.reinit")
  if finetune and c.lora.rank and not c.init:
    raise UserError(f"config.lora.rank={c.lora.rank} adapts a pre-trained model, but "
                    "config.init is empty; set config.init or drop config.lora.rank")
  if defaults.is_instruct(c) and not c.init:
    raise UserError("instruction tuning (data.task='instruct') starts from a decoder: set "
                    "--config.init=BUNDLE (jaxbert import-hf) or a causal-LM run's workdir")
  if finetune and not c.init and not c.tokenizer.path:
    raise UserError("fine-tuning from random initialisation needs --config.tokenizer.path "
                    "(or start from a checkpoint with --config.init=...)")
  if not finetune and not c.data.corpus:
    raise UserError("config.data.corpus is empty; set --config.data.corpus=PATH (a file, folder "
                    f"or glob of text, or tfds:NAME) or the environment variable "
                    f"{defaults.CORPUS_ENV}")
  steps = t.steps  # 0 in fine-tuning: from train.epochs, known with the data
  warmup = int(o.warmup_steps) if o.warmup_steps > 0 else int(round(o.warmup_fraction * steps))
  if steps and o.decay != "constant" and warmup >= steps:
    raise UserError(f"warm-up of {warmup} steps (optim.warmup_steps / optim.warmup_fraction) "
                    f"leaves no room to decay within {steps} training steps; shorten the warm-up "
                    "or set optim.decay='constant'")
  patience = t.get("early_stopping_patience", 0)
  if steps and patience and t.eval_every >= steps * int(o.accum_steps):
    raise UserError(f"train.early_stopping_patience={patience} needs evaluations during "
                    f"training: set train.eval_every below the {steps * int(o.accum_steps)} steps")
  model_keys.check(c)
  model = architecture(c)  # bert_config's own checks, named config.model
  if model is not None and c.data.max_seq_len > model.max_position_embeddings:
    raise _bad("data.max_seq_len", c.data.max_seq_len,
               f"must be <= the model's max_position_embeddings={model.max_position_embeddings}")


def check_data_locations(c: ConfigDict) -> None:
  """The run's data is where the config says (config.load runs it after validate): a
  pre-training corpus that exists, a tfds task's data_dir or a local task's files; one line
  naming the key, and the environment variable when the value came from it."""
  if c.task == "pretrain":
    corpus = c.data.corpus
    if corpus.startswith("tfds:") or glob.glob(corpus):
      return
    origin = f" (from {defaults.CORPUS_ENV})" if corpus == os.environ.get(defaults.CORPUS_ENV) else ""
    raise UserError(f"config.data.corpus={corpus}{origin}: the corpus path {corpus} does not "
                    "exist; give a text file, a folder or glob of them, or tfds:NAME")
  if defaults.is_instruct(c):
    from jaxbert.data import instruct_data  # pylint: disable=g-import-not-at-top
    for path, key in zip(instruct_data.resolve_files(c.data.train_file, c.data.eval_file),
                         ("config.data.train_file", "config.data.eval_file")):
      instruct_data.read_jsonl(path, key)  # a bad line is reported now, before JAX starts
    return
  from jaxbert.data import tasks  # pylint: disable=g-import-not-at-top
  tasks.task_data_dir(c.data.task, c.data.data_dir, "")


# ----------------------------------------------------------------------------- selectors


def _check_selectors(c: ConfigDict) -> None:
  selectors = [params_lib.parse(c.optim.freeze, "optim.freeze", params_lib.FREEZE)]
  if "reinit" in c:
    selectors.append(params_lib.parse(c.reinit, "config.reinit", params_lib.REINIT))
  lora = c.get("lora") is not None and c.lora.rank > 0
  if lora:  # the syntax now; that it picks a kernel once the model's names are known
    from jaxbert import lora as lora_lib  # pylint: disable=g-import-not-at-top
    params_lib.parse(c.lora.targets, "config.lora.targets", lora_lib.TARGETS)
  if all(s.empty for s in selectors) and not lora:
    return
  model = architecture(c)
  if model is None:  # the checkpoint's architecture is unreadable: the run says why
    return
  names = model_names(model, c.task)
  lay = params_lib.layout(names)
  for s in selectors:
    s.select(names, lay)
  if lora:  # every encoder kernel is 2-D
    lora_lib.targets({n: (0, 0) for n in names}, c.lora.targets)


def architecture(c: ConfigDict):
  """The model the run trains (its vocabulary a placeholder): config.model, or for
  fine-tuning from config.init the checkpoint's, None if that cannot be read (and for a
  decoder continued from config.init: the run checks it against its weights)."""
  if defaults.model_family(c) == "decoder":
    return None if c.init else defaults.decoder_config(c.model, PLACEHOLDER_VOCAB)
  if c.task == "finetune" and c.init:
    return _checkpoint_architecture(c.init)
  return defaults.bert_config(c.model, PLACEHOLDER_VOCAB)


def _checkpoint_architecture(init: str) -> BertConfig | None:
  """As handover.open_source finds it, from the small JSON files only."""
  from jaxbert.checkpoint import MODEL_JSON, read_model_json  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(init)
  try:
    if os.path.isfile(os.path.join(path, MODEL_JSON)):
      return read_model_json(path)["model"]
    if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
      workdir = os.path.dirname(os.path.dirname(path))
    elif os.path.isdir(os.path.join(path, "checkpoints")):
      workdir = path
    else:
      return None
    with open(os.path.join(workdir, "config.json")) as f:
      model = ConfigDict(json.load(f)["model"])
    return defaults.bert_config(model, PLACEHOLDER_VOCAB)
  except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError):
    return None


@functools.lru_cache(maxsize=16)
def model_names(model: BertConfig, task: str) -> tuple[str, ...]:
  """The parameter names of the run's model; for fine-tuning, of every head kind (the
  task's kind is known only once its data is read)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert import model as model_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(model, BertConfig):  # a decoder
    from jaxbert.heads import causal_lm  # pylint: disable=g-import-not-at-top
    shapes = jax.eval_shape(lambda: causal_lm.CausalLM(model.replace(num_layers=1)).init(
        jax.random.key(0), causal_lm.dummy_batch(8)))
    return tuple(sorted({n.replace("/layer_0/", f"/layer_{i}/")
                         for n in params_lib.tree_names(shapes["params"])
                         for i in range(model.num_layers)}))
  one = model.replace(num_layers=1, remat=False, vocab_size=PLACEHOLDER_VOCAB)
  if task == "pretrain":
    models = [model_lib.BertForPreTraining(one)]
  else:
    from jaxbert import heads  # pylint: disable=g-import-not-at-top
    from jaxbert.data.tasks import TaskSpec  # pylint: disable=g-import-not-at-top
    models = []
    for kind in heads.kinds():
      spec = TaskSpec(name="probe", kind=kind, num_labels=2, label_names=("a", "b"),
                      text_fields=("text",), label_field="label", metrics=(),
                      main_metric="", higher_is_better=True, eval_split="validation")
      models.append(heads.get(kind).model(one, spec))
  batch = model_lib.dummy_batch(one, seq_len=min(8, one.max_position_embeddings), predictions=1)
  names = set()
  for m in models:
    shapes = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), batch))
    names.update(params_lib.tree_names(shapes["params"]))
  # One layer is traced; every layer has layer_0's parameters.
  return tuple(sorted({n.replace("/layer_0/", f"/layer_{i}/")
                       for n in names for i in range(model.num_layers)}))


# ----------------------------------------------------------------------------- sweeps


def _check_sweep(c: ConfigDict) -> None:
  has_values = lambda d: any(not isinstance(v, dict) or has_values(v) for v in d.values())
  if not has_values(c.sweep.space.to_dict()):
    return
  from jaxbert import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  sweep_lib.expand(c)  # the space's shape, distributions, method and trial budget
  for key, values in sweep_lib.search_space(c).items():
    if isinstance(values, list):
      points = values
    else:
      name, bounds = values
      points = [int(b) if name == "int_uniform" else b for b in bounds]
    for value in points:
      probe = copy.deepcopy(c)
      probe.sweep = defaults.sweep_config()
      try:
        set_key(probe, key, value)
        validate(probe)
      except UserError as e:
        raise UserError(f"config.sweep.space.{key} holds {value!r}: {e}") from None
