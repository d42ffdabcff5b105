"""Hugging Face BERT checkpoints <-> jaxbert, with no PyTorch and no pickle.

`import_hf` reads a Hugging Face BERT folder (`config.json`, `model.safetensors`,
`tokenizer.json`/`vocab.txt`) through safetensors' numpy API and writes a jaxbert
bundle (see jaxbert/checkpoint.py). `export_hf` writes a bundle or a training run
back as a folder `transformers` loads. jaxbert's parameter names mirror Hugging
Face's, so the conversion is one table of (HF name, Flax path, shape, transposed?)
built from the model config: Linear weights are (out, in) in PyTorch and (in, out)
Flax kernels, LayerNorm `weight` is Flax `scale`, embeddings are not transposed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors import numpy as st_numpy

from jaxbert.checkpoint import MODEL_JSON, load_bundle, save_bundle, write_json_atomic
from jaxbert.errors import UserError
from jaxbert.model import BertConfig

log = logging.getLogger("jaxbert")

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_CONFIG = "config.json"
# Buffers Hugging Face keeps in some state dicts; they are not parameters.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

# Hugging Face class -> (jaxbert heads it holds, whether it has a pooler, bundle head name).
ARCHITECTURES = {
    "BertModel": ((), True, "encoder"),
    "BertForPreTraining": (("mlm", "nsp"), True, "pretraining"),
    "BertForMaskedLM": (("mlm",), False, "masked_lm"),
    "BertForNextSentencePrediction": (("nsp",), True, "next_sentence"),
    "BertForSequenceClassification": (("classifier",), True, "sequence_classification"),
    "BertForTokenClassification": (("classifier",), False, "token_classification"),
    "BertForQuestionAnswering": (("qa_outputs",), False, "question_answering"),
}
_HEAD_DESCRIPTIONS = {"mlm": "masked-LM head (cls.predictions)",
                      "nsp": "next-sentence head (cls.seq_relationship)",
                      "classifier": "classifier", "qa_outputs": "QA span head (qa_outputs)"}


@dataclasses.dataclass(frozen=True)
class _Tensor:
  hf: str                 # Hugging Face name; encoder names without the "bert." prefix
  path: tuple[str, ...]   # Flax parameter path
  shape: tuple[int, ...]  # Flax shape
  transpose: bool         # a Linear weight: HF (out, in) <-> Flax kernel (in, out)

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return self.shape[::-1] if self.transpose else self.shape


def _linear(hf: str, path: tuple[str, ...], n_in: int, n_out: int) -> list[_Tensor]:
  return [_Tensor(f"{hf}.weight", path + ("kernel",), (n_in, n_out), True),
          _Tensor(f"{hf}.bias", path + ("bias",), (n_out,), False)]


def _layer_norm(hf: str, path: tuple[str, ...], n: int) -> list[_Tensor]:
  return [_Tensor(f"{hf}.weight", path + ("scale",), (n,), False),
          _Tensor(f"{hf}.bias", path + ("bias",), (n,), False)]


def encoder_tensors(cfg: BertConfig) -> list[_Tensor]:
  """Embeddings and transformer layers (no pooler), under Flax "bert/"."""
  h, inter = cfg.hidden_size, cfg.intermediate_size
  rows = [_Tensor(f"embeddings.{name}.weight", ("bert", "embeddings", name, "embedding"),
                  (n, h), False)
          for name, n in (("word_embeddings", cfg.vocab_size),
                          ("position_embeddings", cfg.max_position_embeddings),
                          ("token_type_embeddings", cfg.type_vocab_size))]
  rows += _layer_norm("embeddings.LayerNorm", ("bert", "embeddings", "LayerNorm"), h)
  for i in range(cfg.num_layers):
    hf, fx = f"encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
    for name in ("query", "key", "value"):
      rows += _linear(f"{hf}.attention.self.{name}", fx + ("attention", name), h, h)
    rows += _linear(f"{hf}.attention.output.dense", fx + ("attention", "output", "dense"), h, h)
    rows += _layer_norm(f"{hf}.attention.output.LayerNorm",
                        fx + ("attention", "output", "LayerNorm"), h)
    rows += _linear(f"{hf}.intermediate.dense", fx + ("intermediate", "dense"), h, inter)
    rows += _linear(f"{hf}.output.dense", fx + ("output", "dense"), inter, h)
    rows += _layer_norm(f"{hf}.output.LayerNorm", fx + ("output", "LayerNorm"), h)
  return rows


def pooler_tensors(cfg: BertConfig) -> list[_Tensor]:
  return _linear("pooler.dense", ("bert", "pooler", "dense"), cfg.hidden_size, cfg.hidden_size)


def head_tensors(head: str, cfg: BertConfig, num_labels: int = 0) -> list[_Tensor]:
  """A head's tensors; its HF names are full names (never "bert."-prefixed)."""
  h = cfg.hidden_size
  if head == "mlm":
    # The decoder weight is tied to the word embeddings, so it has no row here.
    return (_linear("cls.predictions.transform.dense", ("mlm", "dense"), h, h)
            + _layer_norm("cls.predictions.transform.LayerNorm", ("mlm", "LayerNorm"), h)
            + [_Tensor("cls.predictions.bias", ("mlm", "bias"), (cfg.vocab_size,), False)])
  if head == "nsp":
    return _linear("cls.seq_relationship", ("nsp",), h, 2)
  if head == "classifier":
    return _linear("classifier", ("classifier",), h, num_labels)
  if head == "qa_outputs":
    return _linear("qa_outputs", ("qa_outputs",), h, 2)
  raise ValueError(f"unknown head {head!r}")


# --- config ----------------------------------------------------------------------

def config_from_hf(d: dict, where: str) -> BertConfig:
  """BertConfig from a Hugging Face config.json dict; absent keys take HF's defaults."""
  if d.get("model_type", "bert") != "bert":
    raise UserError(f"{where}: model_type is {d['model_type']!r}; jaxbert imports only BERT "
                    "(model_type 'bert') checkpoints")
  if d.get("position_embedding_type", "absolute") != "absolute":
    raise UserError(f"{where}: position_embedding_type={d['position_embedding_type']!r} is not "
                    "supported; jaxbert's BERT has absolute (learned) position embeddings only")
  act = d.get("hidden_act", "gelu")
  if act not in _ACT_FROM_HF:
    raise UserError(f"{where}: hidden_act={act!r} is not supported; use one of "
                    f"{sorted(_ACT_FROM_HF)}")
  default = BertConfig()
  try:
    return BertConfig(
        vocab_size=int(d.get("vocab_size", default.vocab_size)),
        hidden_size=int(d.get("hidden_size", default.hidden_size)),
        num_layers=int(d.get("num_hidden_layers", default.num_layers)),
        num_heads=int(d.get("num_attention_heads", default.num_heads)),
        intermediate_size=int(d.get("intermediate_size", default.intermediate_size)),
        hidden_act=_ACT_FROM_HF[act],
        hidden_dropout=float(d.get("hidden_dropout_prob", default.hidden_dropout)),
        attention_dropout=float(d.get("attention_probs_dropout_prob", default.attention_dropout)),
        max_position_embeddings=int(d.get("max_position_embeddings",
                                          default.max_position_embeddings)),
        type_vocab_size=int(d.get("type_vocab_size", default.type_vocab_size)),
        layer_norm_eps=float(d.get("layer_norm_eps", default.layer_norm_eps)),
        initializer_range=float(d.get("initializer_range", default.initializer_range)))
  except (TypeError, ValueError) as e:
    raise UserError(f"{where}: {e}") from None


def config_to_hf(cfg: BertConfig) -> dict:
  return {
      "model_type": "bert",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "hidden_act": _ACT_TO_HF[cfg.hidden_act],
      "hidden_dropout_prob": cfg.hidden_dropout,
      "attention_probs_dropout_prob": cfg.attention_dropout,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size,
      "layer_norm_eps": cfg.layer_norm_eps,
      "initializer_range": cfg.initializer_range,
      "position_embedding_type": "absolute",
      "torch_dtype": "float32",
  }


# --- import ----------------------------------------------------------------------

@dataclasses.dataclass
class ImportReport:
  """What `import_hf` found and wrote; str() is what `jaxbert import-hf` prints."""

  source: str
  out_dir: str
  config: BertConfig
  architectures: list[str]
  head: str                     # the bundle's head name (see ARCHITECTURES)
  heads_present: list[str]      # jaxbert heads read from the checkpoint
  new: list[str]                # Flax paths initialised here (not in the checkpoint)
  unused: list[str]             # checkpoint tensors jaxbert does not use
  ignored_buffers: list[str]
  warnings: list[str]           # logged by import_hf; str() leaves them out
  encoder_parameters: int       # bert/... (pooler included)
  tokenizer: str

  def __str__(self) -> str:
    c = self.config
    lines = [f"imported {self.source} ({', '.join(self.architectures) or 'no architectures'}) "
             f"-> {self.out_dir}",
             f"  model: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
             f"intermediate {c.intermediate_size}, vocab {c.vocab_size}, {c.hidden_act}",
             f"  encoder: {self.encoder_parameters:,d} parameters (embeddings, layers, pooler)",
             f"  tokenizer: {self.tokenizer}",
             "  heads in the checkpoint: "
             + (", ".join(_HEAD_DESCRIPTIONS[h] for h in self.heads_present) or "none")
             + f" (bundle head: {self.head})"]
    if self.new:
      lines.append(f"  initialised here, not in the checkpoint: {', '.join(self.new)}")
    lines.append("  at fine-tuning: the encoder (bert/...) is loaded; the task head is new")
    if self.ignored_buffers:
      lines.append(f"  ignored buffers: {', '.join(self.ignored_buffers)}")
    if self.unused:
      shown = ", ".join(self.unused[:10]) + (" ..." if len(self.unused) > 10 else "")
      lines.append(f"  unused tensors ({len(self.unused)}): {shown}")
    return "\n".join(lines)


def read_safetensors(src_dir: str) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` (or its sharded index) as numpy arrays."""
  single = os.path.join(src_dir, SAFETENSORS_FILE)
  index = os.path.join(src_dir, SAFETENSORS_INDEX)
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    try:
      with open(index) as f:
        files = [os.path.join(src_dir, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"cannot read {index}: {e}") from None
  else:
    pickled = [n for n in ("pytorch_model.bin", "tf_model.h5")
               if os.path.exists(os.path.join(src_dir, n))]
    hint = (f" It has {', '.join(pickled)}, which jaxbert does not read (pickle/TensorFlow); "
            "save the model once with safe_serialization=True to get model.safetensors."
            if pickled else "")
    raise UserError(f"{src_dir} has no {SAFETENSORS_FILE}.{hint}")
  tensors = {}
  for path in files:
    try:
      tensors.update(st_numpy.load_file(path))
    except (OSError, SafetensorError) as e:
      raise UserError(f"cannot read {path}: {e}") from None
  return tensors


def _canonical_name(key: str) -> str:
  # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
  if ".LayerNorm." in key:
    key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta",
                                                                       ".LayerNorm.bias")
  return key


def _encoder_prefix(names, where: str) -> str:
  if "bert.embeddings.word_embeddings.weight" in names:
    return "bert."
  if "embeddings.word_embeddings.weight" in names:
    return ""
  raise UserError(f"{where} holds no BERT word embeddings (expected "
                  "'bert.embeddings.word_embeddings.weight' or "
                  "'embeddings.word_embeddings.weight'); is it a BERT checkpoint?")


def _take(tensors, rows, prefix, where, consumed) -> dict[tuple[str, ...], np.ndarray]:
  """Flax path -> float32 array for `rows`, checking shapes; consumed names are recorded."""
  out = {}
  for row in rows:
    name = prefix + row.hf
    t = tensors[name]
    if tuple(t.shape) != row.hf_shape:
      raise UserError(f"{where}: tensor {name} has shape {tuple(t.shape)} but config.json "
                      f"implies {row.hf_shape}; the weights and config.json disagree")
    t = np.asarray(t, np.float32)
    out[row.path] = np.ascontiguousarray(t.T if row.transpose else t)
    consumed.add(name)
  return out


def _new_linear(rows, cfg: BertConfig, seed: int) -> dict[tuple[str, ...], np.ndarray]:
  """Hugging Face's init for a Linear: normal(initializer_range) weight, zero bias."""
  rng = np.random.default_rng(seed)
  return {r.path: (rng.normal(0.0, cfg.initializer_range, r.shape).astype(np.float32)
                   if r.path[-1] == "kernel" else np.zeros(r.shape, np.float32)) for r in rows}


def import_hf(src_dir: str, out_dir: str, *, overwrite: bool = False) -> ImportReport:
  """Converts a Hugging Face BERT folder into a jaxbert bundle at `out_dir`.

  Reads config.json, model.safetensors and the tokenizer (tokenizer.json or
  vocab.txt + tokenizer_config.json). Heads found (MLM, NSP, classifier, QA) are
  kept; a missing pooler is initialised as Hugging Face would. Returns a report.
  """
  from jaxbert.tokenizer import check_vocab, load_tokenizer  # pylint: disable=g-import-not-at-top
  src_dir = os.path.abspath(src_dir)
  if not os.path.isdir(src_dir):
    raise UserError(f"{src_dir} is not a directory; give a Hugging Face model folder "
                    "(config.json, model.safetensors, vocab.txt or tokenizer.json)")
  if os.path.exists(out_dir) and not overwrite:
    raise UserError(f"{os.path.abspath(out_dir)} already exists; choose another --out or "
                    "remove it first")
  config_path = os.path.join(src_dir, HF_CONFIG)
  try:
    with open(config_path) as f:
      hf_cfg = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{config_path} is missing; a Hugging Face model folder has a "
                    "config.json") from None
  except (OSError, ValueError) as e:
    raise UserError(f"cannot parse {config_path}: {e}") from None
  cfg = config_from_hf(hf_cfg, config_path)
  architectures = list(hf_cfg.get("architectures") or [])
  tokenizer = load_tokenizer(src_dir)
  check_vocab(tokenizer, cfg.vocab_size, src_dir)

  where = os.path.join(src_dir, SAFETENSORS_FILE)
  tensors = {}
  for key, value in read_safetensors(src_dir).items():
    tensors[_canonical_name(key)] = value
  prefix = _encoder_prefix(tensors, where)
  consumed: set[str] = set()
  warnings: list[str] = []
  dtypes = sorted({str(t.dtype) for t in tensors.values() if t.dtype.kind == "f"} - {"float32"})
  if dtypes:
    warnings.append(f"weights stored as {', '.join(dtypes)}; converted to float32")

  rows = encoder_tensors(cfg)
  missing = [prefix + r.hf for r in rows if prefix + r.hf not in tensors]
  if missing:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    raise UserError(f"{where} lacks encoder tensors {shown}; the file is incomplete or "
                    f"config.json (num_hidden_layers={cfg.num_layers}) does not match it")
  flat = _take(tensors, rows, prefix, where, consumed)
  new = []
  pooler = pooler_tensors(cfg)
  if all(prefix + r.hf in tensors for r in pooler):
    flat.update(_take(tensors, pooler, prefix, where, consumed))
  else:
    flat.update(_new_linear(pooler, cfg, seed=0))
    new.append("bert/pooler")

  heads_present = []
  mlm_bias = "cls.predictions.bias"
  if mlm_bias not in tensors and "cls.predictions.decoder.bias" in tensors:
    tensors[mlm_bias] = tensors["cls.predictions.decoder.bias"]
    consumed.add("cls.predictions.decoder.bias")
  num_labels = tensors["classifier.weight"].shape[0] if "classifier.weight" in tensors else 0
  for head in ("mlm", "nsp", "classifier", "qa_outputs"):
    head_rows = head_tensors(head, cfg, num_labels)
    have = [r.hf for r in head_rows if r.hf in tensors]
    if not have:
      continue
    if len(have) < len(head_rows):
      absent = [r.hf for r in head_rows if r.hf not in tensors]
      raise UserError(f"{where} has part of the {_HEAD_DESCRIPTIONS[head]} but lacks "
                      f"{', '.join(absent)}; the file is incomplete")
    flat.update(_take(tensors, head_rows, "", where, consumed))
    heads_present.append(head)
  if "mlm" in heads_present:
    word_embeddings = prefix + "embeddings.word_embeddings.weight"
    for name, ref in (("cls.predictions.decoder.weight", word_embeddings),
                      ("cls.predictions.decoder.bias", mlm_bias)):
      if name in tensors and name not in consumed:
        consumed.add(name)
        same = np.array_equal(np.asarray(tensors[name], np.float32),
                              np.asarray(tensors[ref], np.float32))
        if not same:
          warnings.append(f"{name} differs from {ref}; jaxbert ties them and keeps {ref}")
  if "classifier" in heads_present:
    n_cfg = len(hf_cfg.get("id2label") or {}) or hf_cfg.get("num_labels")
    if n_cfg and n_cfg != num_labels:
      warnings.append(f"config.json has {n_cfg} labels but classifier.weight has {num_labels} rows")

  ignored = sorted(k for k in tensors if k.removeprefix(prefix) in _BUFFERS)
  unused = sorted(set(tensors) - consumed - set(ignored))
  head = _bundle_head(heads_present, architectures)
  extra = {"source": src_dir, "hf_architectures": architectures}
  if "classifier" in heads_present and hf_cfg.get("id2label"):
    extra["id2label"] = {str(k): v for k, v in hf_cfg["id2label"].items()}
  params = traverse_util.unflatten_dict(flat)
  save_bundle(out_dir, params, cfg, tokenizer, head=head, extra=extra, overwrite=overwrite)
  for w in warnings:
    log.warning("%s: %s", src_dir, w)
  return ImportReport(
      source=src_dir, out_dir=os.path.abspath(out_dir), config=cfg, architectures=architectures,
      head=head, heads_present=heads_present, new=new, unused=unused, ignored_buffers=ignored,
      warnings=warnings,
      encoder_parameters=int(sum(v.size for k, v in flat.items() if k[0] == "bert")),
      tokenizer=(f"{type(tokenizer).__name__}, {tokenizer.vocab_size} pieces, "
                 f"{'lowercased' if tokenizer.lowercase else 'cased'}"))


def _bundle_head(heads: list[str], architectures: list[str]) -> str:
  if "mlm" in heads and "nsp" in heads:
    return "pretraining"
  if "mlm" in heads:
    return "masked_lm"
  if "classifier" in heads:
    token = "BertForTokenClassification" in architectures
    return "token_classification" if token else "sequence_classification"
  if "qa_outputs" in heads:
    return "question_answering"
  if "nsp" in heads:
    return "next_sentence"
  return "encoder"


# --- reading any jaxbert checkpoint ---------------------------------------------

@dataclasses.dataclass
class Checkpoint:
  """Parameters and what describes them, from a bundle or a training run."""

  params: dict
  config: BertConfig
  tokenizer: object
  head: str
  extra: dict
  description: str


def _restore_params(item_dir: str, prefix: tuple[str, ...]) -> dict:
  """Only the parameter subtree of a training state (no optimizer state), as numpy."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"cannot read the checkpoint at {item_dir} ({e})") from None
  tree = tree.tree if hasattr(tree, "tree") else tree
  item = tree
  for key in prefix:
    item = item[key]
  for key in reversed(prefix):
    item = {key: item}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  for key in prefix:
    out = out[key]
  return out


def read_checkpoint(path: str) -> Checkpoint:
  """A bundle (import-hf), a training workdir (its latest step) or one step folder."""
  from jaxbert import handover  # pylint: disable=g-import-not-at-top
  from jaxbert.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, MODEL_JSON)):
    params, cfg, tokenizer, meta = load_bundle(path)
    return Checkpoint(params, cfg, tokenizer, meta.get("head", "encoder"), meta.get("extra", {}),
                      f"bundle {path}")
  source = handover.open_source(path)
  workdir = os.path.dirname(os.path.dirname(os.path.dirname(source.item_dir)))
  with open(os.path.join(workdir, "config.json")) as f:
    run_config = json.load(f)
  cfg = source.model_cfg
  if run_config.get("init"):
    # A fine-tuning run keeps the architecture of the checkpoint it started from.
    model = run_config.get("model", {})
    cfg = handover.open_source(run_config["init"]).model_cfg.replace(
        hidden_dropout=model.get("hidden_dropout", cfg.hidden_dropout),
        attention_dropout=model.get("attention_dropout", cfg.attention_dropout))
  cfg = cfg.replace(dtype="float32", remat=False)
  params = _restore_params(source.item_dir, source.prefix)
  heads = [h for h in ("mlm", "nsp", "classifier", "qa_outputs") if h in params]
  kind = (tasks_lib.TFDS_TASKS.get(run_config.get("data", {}).get("task", ""))
          if run_config.get("task") == "finetune" else None)
  token = kind is not None and kind.kind == "token_classification"
  architectures = ["BertForTokenClassification"] if token else []
  return Checkpoint(params, cfg, source.tokenizer, _bundle_head(heads, architectures), {},
                    source.description)


# --- export ----------------------------------------------------------------------

@dataclasses.dataclass
class ExportReport:
  """What `export_hf` wrote; str() is what `jaxbert export-hf` prints."""

  source: str
  out_dir: str
  architecture: str
  num_tensors: int
  num_parameters: int
  dropped: list[str]
  notes: list[str]

  def __str__(self) -> str:
    lines = [f"exported {self.source} -> {self.out_dir}",
             f"  architecture: {self.architecture} ({self.num_tensors} tensors, "
             f"{self.num_parameters:,d} parameters, float32 safetensors)"]
    if self.dropped:
      lines.append(f"  not exported (not part of {self.architecture}): {', '.join(self.dropped)}")
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


def _default_architecture(head: str, heads: list[str]) -> str:
  for arch, (arch_heads, _, name) in ARCHITECTURES.items():
    if name == head and all(h in heads for h in arch_heads):
      return arch
  if "mlm" in heads and "nsp" in heads:
    return "BertForPreTraining"
  for arch in ("BertForMaskedLM", "BertForSequenceClassification", "BertForQuestionAnswering",
               "BertForNextSentencePrediction"):
    if ARCHITECTURES[arch][0][0] in heads:
      return arch
  return "BertModel"


def export_hf(checkpoint: str, out_dir: str, architecture: str | None = None,
              *, overwrite: bool = False) -> ExportReport:
  """Writes `checkpoint` (bundle or training run) as a Hugging Face folder.

  `architecture` (a key of ARCHITECTURES) defaults to the one matching the heads
  present. Writes config.json, model.safetensors (float32; the tied MLM decoder is
  left out, as `save_pretrained` does) and the vocabulary.
  """
  ckpt = read_checkpoint(checkpoint)
  cfg = ckpt.config
  flat = traverse_util.flatten_dict(ckpt.params)
  heads = [h for h in ("mlm", "nsp", "classifier", "qa_outputs") if (h,) in {k[:1] for k in flat}]
  arch = architecture or _default_architecture(ckpt.head, heads)
  if arch not in ARCHITECTURES:
    raise UserError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")
  arch_heads, with_pooler, _ = ARCHITECTURES[arch]
  lacking = [h for h in arch_heads if h not in heads]
  if lacking:
    raise UserError(f"{arch} needs the {', '.join(_HEAD_DESCRIPTIONS[h] for h in lacking)}, which "
                    f"{ckpt.description} does not have (it has: {', '.join(heads) or 'no head'}); "
                    "export it as BertModel")
  num_labels = flat[("classifier", "kernel")].shape[1] if "classifier" in heads else 0
  rows = encoder_tensors(cfg) + (pooler_tensors(cfg) if with_pooler else [])
  prefix = "" if arch == "BertModel" else "bert."
  rows = [dataclasses.replace(r, hf=prefix + r.hf) for r in rows]
  for head in arch_heads:
    rows += head_tensors(head, cfg, num_labels)
  tensors = {}
  for row in rows:
    if row.path not in flat:
      raise UserError(f"{ckpt.description} lacks parameter {'/'.join(row.path)}")
    value = np.asarray(flat[row.path], np.float32)
    if tuple(value.shape) != row.shape:
      raise UserError(f"{ckpt.description}: parameter {'/'.join(row.path)} has shape "
                      f"{tuple(value.shape)}, the model config implies {row.shape}")
    tensors[row.hf] = np.ascontiguousarray(value.T if row.transpose else value)
  used = {r.path for r in rows}
  dropped = sorted({"/".join(k[:2]) if k[0] == "bert" else k[0] for k in flat if k not in used})

  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise UserError(f"{out_dir} already exists; choose another --out or remove it first")
  tmp = out_dir + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  hf_config = {"architectures": [arch], **config_to_hf(cfg),
               "pad_token_id": int(ckpt.tokenizer.pad_id)}
  if "classifier" in arch_heads:
    id2label = ckpt.extra.get("id2label") or {}
    if len(id2label) != num_labels:
      id2label = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    hf_config["id2label"] = id2label
    hf_config["label2id"] = {v: int(k) for k, v in id2label.items()}
    if arch == "BertForSequenceClassification" and num_labels == 1:
      hf_config["problem_type"] = "regression"
  write_json_atomic(os.path.join(tmp, HF_CONFIG), hf_config)
  # save() + open() rather than save_file(), which creates the file readable by its owner only.
  with open(os.path.join(tmp, SAFETENSORS_FILE), "wb") as f:
    f.write(st_numpy.save(tensors, metadata={"format": "pt"}))
  notes = _export_tokenizer(ckpt.tokenizer, tmp, cfg)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return ExportReport(source=ckpt.description, out_dir=out_dir, architecture=arch,
                      num_tensors=len(tensors),
                      num_parameters=int(sum(t.size for t in tensors.values())),
                      dropped=dropped, notes=notes)


def _export_tokenizer(tokenizer, out_dir: str, cfg: BertConfig) -> list[str]:
  """Writes the vocabulary; returns notes for the report."""
  from jaxbert import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  tokenizer.save(out_dir)
  if not isinstance(tokenizer, tok_lib.WordPieceTokenizer):
    return [f"the tokenizer is SentencePiece ({tok_lib.SPM_MODEL_FILE} written): Hugging Face's "
            "BertTokenizer cannot read it, so tokenize with the sentencepiece library and add "
            f"[CLS]={tokenizer.cls_id} / [SEP]={tokenizer.sep_id} yourself; the weights load "
            "normally"]
  # Our tokenizer.json adds no specials (jaxbert places them); Hugging Face expects the
  # [CLS] A [SEP] B [SEP] template in the file.
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, tok_lib.HF_TOKENIZER_FILE)
  tok = tokenizers.Tokenizer.from_file(path)
  cls_, sep = tok_lib.CLS, tok_lib.SEP
  tok.post_processor = processors.TemplateProcessing(
      single=f"{cls_}:0 $A:0 {sep}:0", pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
      special_tokens=[(cls_, tokenizer.cls_id), (sep, tokenizer.sep_id)])
  tok.save(path)
  write_json_atomic(os.path.join(out_dir, tok_lib.HF_CONFIG_FILE), {
      "tokenizer_class": "BertTokenizer", "do_lower_case": bool(tokenizer.lowercase),
      "model_max_length": cfg.max_position_embeddings, "unk_token": tok_lib.UNK,
      "sep_token": sep, "pad_token": tok_lib.PAD, "cls_token": cls_, "mask_token": tok_lib.MASK})
  return []
