"""`import_hf`: a Hugging Face BERT folder -> a jaxbert bundle."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors import numpy as st_numpy

from jaxbert.checkpoint import save_bundle
from jaxbert.errors import UserError
from jaxbert.hf.names import (BUFFERS, HEAD_DESCRIPTIONS, HF_CONFIG, SAFETENSORS_FILE,
                              SAFETENSORS_INDEX, bundle_head, config_from_hf, encoder_tensors,
                              head_tensors, pooler_tensors)
from jaxbert.model import BertConfig

log = logging.getLogger("jaxbert")


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
             + (", ".join(HEAD_DESCRIPTIONS[h] for h in self.heads_present) or "none")
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
  from jaxbert.hf import decoder_import  # pylint: disable=g-import-not-at-top
  if decoder_import.handles(src_dir):  # GPT-2 / Llama folders and GGUF files
    return decoder_import.import_decoder(src_dir, out_dir, overwrite=overwrite)
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
      raise UserError(f"{where} has part of the {HEAD_DESCRIPTIONS[head]} but lacks "
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

  ignored = sorted(k for k in tensors if k.removeprefix(prefix) in BUFFERS)
  unused = sorted(set(tensors) - consumed - set(ignored))
  head = bundle_head(heads_present, architectures)
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


