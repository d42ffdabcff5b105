"""`jaxbert import-hf` for decoders: a Hugging Face GPT-2 / Llama folder or a GGUF file ->
a jaxbert bundle (model.json with the DecoderConfig and head "causal_lm", params/, tokenizer/).

Which family a folder holds is its config.json model_type, looked up in
hf.decoder_names.ARCHS; a GGUF file is read as the folder it stands for (gguf_reader).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
from flax import traverse_util

from jaxbert.checkpoint import save_bundle
from jaxbert.decoder import DecoderConfig
from jaxbert.errors import UserError
from jaxbert.hf import decoder_names

log = logging.getLogger("jaxbert")

HEAD = "causal_lm"  # model.json "head" of every decoder bundle


def is_gguf(src: str) -> bool:
  return src.lower().endswith(".gguf")


def handles(src: str) -> bool:
  """Whether `src` is a decoder this module imports (a GGUF file or a decoder folder)."""
  if is_gguf(src):
    return True
  try:
    with open(os.path.join(src, "config.json")) as f:
      # Any model_type but BERT's: the BERT importer would only say it is not BERT.
      return json.load(f).get("model_type", "bert") != "bert"
  except (OSError, ValueError, AttributeError):
    return False


@dataclasses.dataclass
class DecoderImportReport:
  source: str
  out_dir: str
  config: DecoderConfig
  origin: str
  parameters: int
  tokenizer: str
  unused: list[str]
  warnings: list[str]

  def __str__(self) -> str:
    c = self.config
    lines = [f"imported {self.source} ({self.origin}) -> {self.out_dir}",
             f"  model: {c.arch} decoder, {c.num_layers} layers, hidden {c.hidden_size}, "
             f"{c.num_heads} heads ({c.num_kv_heads} key/value), MLP {c.intermediate_size}, "
             f"vocab {c.vocab_size}, context {c.max_position_embeddings}, "
             f"{'tied' if c.tie_word_embeddings else 'untied'} output embeddings"
             + (f", rope base {c.rope_theta:g}" if c.arch == "llama" else ""),
             f"  parameters: {self.parameters:,d} (float32)",
             f"  tokenizer: {self.tokenizer}"]
    if self.unused:
      lines.append(f"  unused tensors ({len(self.unused)}): {', '.join(self.unused[:10])}")
    return "\n".join(lines)


def _read_folder(src: str):
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.importer import read_safetensors  # pylint: disable=g-import-not-at-top
  path = os.path.join(src, "config.json")
  try:
    with open(path) as f:
      hf_cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None
  _arch(hf_cfg, path)  # an unknown model_type is reported before any weights are read
  tensors = read_safetensors(src)
  return hf_cfg, tensors, bpe_tokenizer.load(src), ", ".join(hf_cfg.get("architectures") or [])


def _arch(hf_cfg: dict, where: str) -> decoder_names.Arch:
  kind = hf_cfg.get("model_type")
  if kind not in decoder_names.ARCHS:
    raise UserError(f"{where}: model_type {kind!r} is not one jaxbert imports; it imports "
                    f"'bert', {', '.join(repr(k) for k in decoder_names.ARCHS)} and GGUF files "
                    "of Llama-style models")
  return decoder_names.ARCHS[kind]


def convert(hf_cfg: dict, tensors: dict, where: str):
  """(DecoderConfig, params tree of float32 arrays, unused tensor names, warnings)."""
  arch = _arch(hf_cfg, where)
  cfg = arch.config_from_hf(hf_cfg, where)
  warnings = []
  dtypes = sorted({str(t.dtype) for t in tensors.values() if t.dtype.kind == "f"} - {"float32"})
  if dtypes:
    warnings.append(f"weights stored as {', '.join(dtypes)}; converted to float32")
  rows = arch.rows(cfg)
  missing = [r.hf for r in rows if r.hf not in tensors]
  if missing:
    raise UserError(f"{where} lacks tensors {', '.join(missing[:6])}"
                    f"{' ...' if len(missing) > 6 else ''}; the file is incomplete or "
                    "config.json does not match it")
  flat = decoder_names.to_flax(rows, tensors)
  expected = {p: s for p, s in _shapes(cfg).items()}
  for path, a in flat.items():
    if tuple(a.shape) != expected.get(path):
      raise UserError(f"{where}: {'/'.join(path)} has shape {a.shape} but config.json implies "
                      f"{expected.get(path)}; the weights and config.json disagree")
  consumed = {r.hf for r in rows}
  for name in arch.tied:
    if name in tensors and name not in consumed:
      consumed.add(name)
      emb = flat[("decoder", "embeddings", "tokens", "embedding")]
      if not np.array_equal(np.asarray(tensors[name], np.float32), emb):
        warnings.append(f"{name} differs from the input embeddings; the model ties them "
                        "(tie_word_embeddings) and keeps the input embeddings")
  unused = sorted(k for k in set(tensors) - consumed if not k.endswith((".attn.bias",
                                                                        ".attn.masked_bias")))
  return cfg, traverse_util.unflatten_dict(flat), unused, warnings


def _shapes(cfg: DecoderConfig) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxbert.decoder import DecoderLM  # pylint: disable=g-import-not-at-top
  tree = jax.eval_shape(lambda: DecoderLM(cfg).init(jax.random.key(0),
                                                    jnp.zeros((1, 1), jnp.int32))["params"])
  return {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(tree).items()}


def import_decoder(src: str, out_dir: str, *, overwrite: bool = False) -> DecoderImportReport:
  src = os.path.abspath(src)
  if os.path.exists(out_dir) and not overwrite:
    raise UserError(f"{os.path.abspath(out_dir)} already exists; choose another --out or "
                    "remove it first")
  if is_gguf(src):
    from jaxbert import gguf_reader  # pylint: disable=g-import-not-at-top
    hf_cfg, tensors, tokenizer, origin = gguf_reader.read_gguf(src)
  else:
    hf_cfg, tensors, tokenizer, origin = _read_folder(src)
  cfg, params, unused, warnings = convert(hf_cfg, tensors, src)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(f"{src}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                    f"vocabulary has {cfg.vocab_size} rows; they do not belong together")
  extra = {"family": "decoder", "source": src, "hf_model_type": hf_cfg["model_type"],
           "origin": origin}
  save_bundle(out_dir, params, cfg, tokenizer, head=HEAD, extra=extra, overwrite=overwrite)
  for w in warnings:
    log.warning("%s: %s", src, w)
  n = int(sum(np.size(v) for v in traverse_util.flatten_dict(params).values()))
  specials = ", ".join(f"{k} {getattr(tokenizer, k + '_id')}" for k in ("bos", "eos", "pad")
                       if getattr(tokenizer, k + "_id") is not None)
  return DecoderImportReport(
      source=src, out_dir=os.path.abspath(out_dir), config=cfg, origin=origin, parameters=n,
      tokenizer=(f"byte-level BPE, {tokenizer.vocab_size} tokens ({specials})"
                 + (", chat template" if tokenizer.chat_template else "")),
      unused=unused, warnings=warnings)
