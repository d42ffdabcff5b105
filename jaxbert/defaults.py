"""The full set of run-config keys with their defaults.

`configs/*.py` start from `pretrain_config()` or `finetune_config()` and change a few
values; every key a user can override on the command line is defined here once.
"""

from __future__ import annotations

import dataclasses
import os

from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.model import BertConfig, preset


# Where data lives differs per machine, so no config file names it: these environment
# variables give the defaults (the command line's --config.data.* still wins).
CORPUS_ENV = "JAXBERT_CORPUS"       # pre-training text: data.corpus
DATA_DIR_ENV = "JAXBERT_DATA_DIR"   # prepared tfds datasets: data.data_dir (fine-tuning)


def corpus_default() -> str:
  return os.environ.get(CORPUS_ENV, "")


def data_dir_default() -> str:
  return os.environ.get(DATA_DIR_ENV, "")


def model_config(preset_name: str = "mini") -> ConfigDict:
  """`preset` plus every BertConfig field (vocab_size comes from the tokenizer)."""
  fields = {f.name: f.default for f in dataclasses.fields(BertConfig) if f.name != "vocab_size"}
  return ConfigDict({"preset": preset_name, "override_preset_sizes": False, **fields})


def bert_config(model: ConfigDict, vocab_size: int) -> BertConfig:
  """The frozen BertConfig a run's `model` group describes."""
  fields = {k: v for k, v in model.items() if k not in ("preset", "override_preset_sizes")}
  sizes = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
  try:
    if model.preset and not model.override_preset_sizes:
      return preset(model.preset, vocab_size=vocab_size,
                    **{k: v for k, v in fields.items() if k not in sizes})
    return BertConfig(vocab_size=vocab_size, **fields)
  except ValueError as e:
    raise UserError(f"config.model: {e}") from None


def optim_config() -> ConfigDict:
  """The `optim` group with its defaults (BERT's AdamW settings); jaxbert/optim.py says
  what each key does."""
  return ConfigDict({
      "name": "adamw",          # or "lamb"
      "lr": 1e-4,               # peak learning rate, reached at the end of warm-up
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-6,
      "weight_decay": 0.01,     # decoupled; never on LayerNorm parameters or biases
      "clip_norm": 1.0,         # global gradient norm; 0 disables
      "warmup_steps": 0,        # > 0 overrides warmup_fraction
      "warmup_fraction": 0.1,
      "decay": "linear",        # or "cosine", "constant"
      "end_lr_fraction": 0.0,
      "accum_steps": 1,         # micro-batches per optimizer update
      # Parameters that do not train: a selector (jaxbert/params.py), e.g. "encoder",
      # "bottom:6", "layers:0,1" or "bert/encoder/layer_(0|1)/attention/.*".
      "freeze": "none",
      "layer_lr_decay": 1.0,    # < 1: lr * decay ** (L + 1 - depth) per layer
  })


def train_config(**overrides) -> ConfigDict:
  c = ConfigDict({
      "steps": 1000,            # optimizer steps (x optim.accum_steps micro-batches)
      "batch_size": 32,         # global batch, split over all devices of all processes
      "seed": 0,
      "log_every": 50,
      "eval_every": 500,
      "checkpoint_every": 500,
      "keep_checkpoints": 3,
      "progress": True,         # a bar on a terminal, a line a minute in a log file
      "peak_flops": 0.0,        # device matmul peak for MFU; 0 measures it at start
      "prng_impl": "threefry2x32",  # or "rbg": the key stream (dropout masks: jaxbert/dropout.py)
      # Steps with a non-finite loss or gradient are skipped; this many in a row stop the
      # run (0: never stop).
      "max_nonfinite": 10,
  })
  c.update(overrides)
  return c


def mesh_config() -> ConfigDict:
  return ConfigDict({"data": -1, "fsdp": 1})


def pretrain_config(preset_name: str = "mini") -> ConfigDict:
  c = ConfigDict()
  c.task = "pretrain"
  c.name = f"pretrain-{preset_name}"
  # Continued pre-training (say at a longer sequence length, as BERT's second phase, or on
  # more text): a pre-training workdir, checkpoint step folder or bundle whose encoder and
  # MLM/NSP heads start this run, with its tokenizer; optimizer, step and schedule start
  # fresh. config.model must describe the same architecture (dropout may differ).
  c.init = ""
  c.model = model_config(preset_name)
  c.data = ConfigDict({
      # A local file, folder or glob (one sentence/paragraph per line, blank line between
      # documents), or "tfds:<name>" for a tfds text dataset (e.g. tfds:wikipedia/20230601.en).
      "corpus": corpus_default(),  # "" unless $JAXBERT_CORPUS is set
      "text_field": "text",
      "split": "train",
      "tfds_data_dir": "",      # "" -> WORKDIR/tfds for local corpora, tfds's default otherwise
      "heldout_fraction": 0.01,  # whole documents held out for evaluation
      "max_seq_len": 128,
      "max_predictions_per_seq": 20,
      "mask_prob": 0.15,
      "short_seq_prob": 0.1,
      "whole_word": False,
      # Most examples packed into one row (0: one per row). Each attends only to itself and
      # predicts its own next sentence; a row has floor(mask_prob * T) + packing predictions.
      "packing": 0,
      "num_workers": 2,          # loader worker processes (0: in the training process)
      "eval_examples": 2048,
  })
  c.tokenizer = ConfigDict({
      "path": "",               # an existing tokenizer directory; "" trains one on the corpus
      "vocab_size": 8000,
      "model_type": "unigram",  # or "bpe"
      "lowercase": True,
      "train_sentences": 500_000,
  })
  c.optim = optim_config()
  c.optim.lr = 1e-3
  c.optim.warmup_fraction = 0.05
  c.train = train_config(batch_size=64, steps=10_000, eval_every=1000, checkpoint_every=500)
  c.mesh = mesh_config()
  return c


def finetune_config(task: str = "glue/sst2") -> ConfigDict:
  c = ConfigDict()
  c.task = "finetune"
  # Named after data.task, whatever sets it (a config file, --config.data.task=...), unless
  # set itself; a local task by its folder's name.
  c.name = ""
  # A pre-training workdir, one of its checkpoints/<step> folders, or a `jaxbert import-hf`
  # bundle. The encoder comes from there (architecture, weights, tokenizer); heads are new.
  c.init = ""
  # Parts of that encoder to initialise afresh instead of loading: a selector
  # (jaxbert/params.py) such as "pooler" (tuned to next-sentence prediction), "top:K"
  # (the last K layers) or both, "pooler,top:2".
  c.reinit = ""
  # Architecture for random initialisation only (with tokenizer.path); dropout, dtype and
  # remat apply in both cases.
  c.model = model_config("mini")
  # Sentence classification and regression read "cls" (the pooler on [CLS], as BERT) or
  # "mean" (the average of the encoder's outputs over the real pieces).
  c.head = ConfigDict({"pooling": "cls"})
  c.lora = lora_config()
  c.tokenizer = ConfigDict({"path": ""})
  c.data = ConfigDict({
      "task": task,             # a tfds name (glue/sst2, conll2003, squad/v1.1, ...) or local file
      "train_split": "train",   # tfds split syntax, slicing included: train[:10%]
      "eval_split": "validation",
      # tfds data_dir of a tfds task ("" unless $JAXBERT_DATA_DIR is set; a tfds task needs
      # one). Local task files are always prepared under WORKDIR/tfds.
      "data_dir": data_dir_default(),
      "max_seq_len": 128,
      # Batches are cut to one of this many lengths, chosen from the training rows (the
      # longest covers them all), instead of padded to max_seq_len: the step's work follows
      # the real lengths; evaluation likewise. 1: every batch at max_seq_len. See
      # jaxbert/data/buckets.py.
      "length_buckets": 4,
      # load_task options for both splits (QA: doc_stride, max_query_len, max_answer_len,
      # n_best_size, null_score_threshold; local files: format, labels, column names) ...
      "options": ConfigDict(type_safe=False),
      # ... and for one split only (SQuAD v1.1 in ../shared: article_split=(0.0, 0.8) to train,
      # (0.8, 1.0) to evaluate, so no context is in both).
      "train_options": ConfigDict(type_safe=False),
      "eval_options": ConfigDict(type_safe=False),
  })
  c.optim = optim_config()
  c.optim.lr = 5e-5
  c.optim.warmup_fraction = 0.1
  c.train = train_config(batch_size=32, steps=0, log_every=20, eval_every=10**9,
                         checkpoint_every=200)
  c.train.epochs = 3.0          # > 0: steps = ceil(epochs * train examples / batch_size)
  # Early stopping on the task's main validation metric, checked at every evaluation
  # (train.eval_every sets the cadence): stop after `patience` evaluations without an
  # improvement of more than `min_delta`. 0 turns it off.
  c.train.early_stopping_patience = 0
  c.train.early_stopping_min_delta = 0.0
  c.mesh = mesh_config()
  c.sweep = sweep_config()
  # A reference, not a copy: overriding data.task renames the run (FieldReference ops are
  # how ml_collections derives one field from another).
  c.name = c.data.get_ref("task")._apply_op(task_run_name)  # pylint: disable=protected-access
  return c


def task_run_name(task: str) -> str:
  """finetune-glue-sst2 for a tfds task, finetune-<folder or file stem> for local files."""
  if not os.path.exists(task):  # a tfds name (or a path the run will report missing)
    return "finetune-" + (task.strip("/").replace("/", "-") or "local")
  return "finetune-" + os.path.splitext(os.path.basename(os.path.abspath(task)))[0]


def lora_config() -> ConfigDict:
  """The `lora` group: low-rank adapters on a frozen pre-trained model (jaxbert/lora.py)."""
  return ConfigDict({
      "rank": 0,                # R >= 1 turns LoRA on; 0: plain fine-tuning
      "alpha": 16.0,            # the adapters' product is scaled by alpha / rank
      # The kernels adapted: a selector over parameter names (jaxbert/params.py); by
      # default every attention and MLP projection kernel of every layer.
      "targets": r".*/layer_\d+/.*/kernel",
  })


def sweep_config() -> ConfigDict:
  """The `sweep` group: `jaxbert sweep` trains one fine-tuning run per point of `space`."""
  return ConfigDict({
      # Config key -> values, nested like the config: space.optim.lr = [1e-5, 3e-5] or, on
      # the command line, --config.sweep.space.optim.lr=[1e-5,3e-5]. A key's values are a
      # list, or for method="random" also {"uniform": (lo, hi)}, {"log_uniform": (lo, hi)}
      # or {"int_uniform": (lo, hi)}. train.seed is crossed with every setting; a setting's
      # seeds are summarised by their median.
      "space": ConfigDict({group: ConfigDict(type_safe=False)
                           for group in ("model", "data", "optim", "train")}, type_safe=False),
      "method": "grid",         # "grid": every combination; "random": sample settings
      "num_trials": 0,          # trial budget (all seeds counted); 0: the whole grid
      "seed": 0,                # random search draws
      "metric": "",             # objective; "" is the task's main validation metric
      # Train trials that differ only in seed and learning-rate schedule as one compiled
      # program, parameters stacked on a trial axis (jaxbert/side_by_side.py).
      "side_by_side": True,
      "max_side_by_side": 0,    # most trials in one program (memory); 0: no limit
  })


# ----------------------------------------------------------------------------- decoders


def model_family(config: ConfigDict) -> str:
  """"decoder" for a config whose model group describes a decoder (it has `arch`), else
  "encoder"; run.build_task and validate look the task's builder and schema up by it."""
  model = config.get("model")
  return "decoder" if model is not None and "arch" in model else "encoder"


def decoder_model_config(preset_name: str = "gpt-mini") -> ConfigDict:
  """`preset` plus every DecoderConfig field but vocab_size (the tokenizer's); None takes
  the preset's value, so --config.model.preset=... and a size override compose."""
  from jaxbert.decoder import DecoderConfig  # pylint: disable=g-import-not-at-top
  fields = {f.name: None for f in dataclasses.fields(DecoderConfig) if f.name != "vocab_size"}
  fields.update(dtype="float32", remat=False)  # the run's, whatever the preset
  return ConfigDict({"preset": preset_name, **fields})


def decoder_config(model: ConfigDict, vocab_size: int):
  """The frozen DecoderConfig a run's decoder `model` group describes."""
  from jaxbert import decoder  # pylint: disable=g-import-not-at-top
  fields = {k: v for k, v in model.items() if k != "preset" and v is not None}
  try:
    if model.preset:
      return decoder.decoder_preset(model.preset, **fields, vocab_size=vocab_size)
    missing = [k for k in ("arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                           "intermediate_size", "max_position_embeddings") if k not in fields]
    if missing:
      raise ValueError(f"model.preset is empty, so set model.{missing[0]} (or name a preset)")
    return decoder.DecoderConfig(**fields, vocab_size=vocab_size)
  except ValueError as e:
    raise UserError(f"config.model: {e}") from None


def decoder_pretrain_config(preset_name: str = "gpt-mini") -> ConfigDict:
  """Causal-LM pre-training of a decoder (jaxbert/clm.py): the encoder's pre-training keys
  less its masking, pairing and packing ones (documents are always packed)."""
  c = pretrain_config()
  c.name = f"pretrain-{preset_name}"
  # Continued pre-training: an imported decoder (jaxbert import-hf) or a decoder run's
  # workdir or checkpoint; its tokenizer and architecture (config.model's dropout_rate,
  # dtype and remat apply), optimizer and schedule fresh.
  c.model = decoder_model_config(preset_name)
  for key in ("max_predictions_per_seq", "mask_prob", "short_seq_prob", "whole_word", "packing"):
    del c.data[key]
  for key in ("model_type", "lowercase"):  # always a BPE with byte fallback, cased
    del c.tokenizer[key]
  c.data.max_seq_len = 256
  c.data.eval_examples = 512  # held-out rows evaluated
  c.optim.lr = 6e-4
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.decay = "cosine"
  c.optim.end_lr_fraction = 0.1
  return c


# ----------------------------------------------------------------------- instruction tuning

INSTRUCT_TASK = "instruct"  # config.data.task of instruction tuning (jaxbert/instruct.py)


def is_instruct(config: ConfigDict) -> bool:
  """Whether `config` is an instruction-tuning run: `jaxbert finetune` with
  data.task = "instruct" (run.build_task and validate pick its task and schema by it)."""
  data = config.get("data")
  return config.get("task") == "finetune" and data is not None and data.get("task") == INSTRUCT_TASK


def instruct_config() -> ConfigDict:
  """Instruction tuning (supervised fine-tuning) of a decoder on JSONL examples
  (jaxbert/data/instruct_data.py): fine-tuning's keys with a decoder's model group (the
  architecture is config.init's; dropout_rate, dtype and remat apply) and its own data
  group."""
  c = finetune_config()
  c.name = "instruct"
  del c.head
  c.model = decoder_model_config("")
  c.data = ConfigDict({
      "task": INSTRUCT_TASK,
      # JSONL, one {"prompt", "completion"} or {"messages": [...]} object a line: a file, or
      # a folder holding train.jsonl and dev.jsonl (or valid.jsonl).
      "train_file": "",
      "eval_file": "",          # "" with a train_file folder: its dev.jsonl
      "max_seq_len": 512,       # pieces per packed row; a longer example is cut
      # The generation pass over the held-out prompts (greedy): this many prompts (0: held-out
      # loss only), at most max_new_tokens new pieces each.
      "generate_examples": 256,
      "max_new_tokens": 64,
  })
  c.optim.lr = 2e-5
  c.optim.weight_decay = 0.0
  c.train.batch_size = 8
  c.train.epochs = 2.0
  return c
