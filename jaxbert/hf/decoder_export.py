"""`jaxbert export-hf` for decoders: a decoder bundle or causal-LM run -> a folder that
transformers loads as GPT2LMHeadModel or LlamaForCausalLM (config.json, float32
model.safetensors without the tied output weight, as save_pretrained writes it, and the
tokenizer as tokenizer.json + tokenizer_config.json)."""

from __future__ import annotations

import dataclasses
import os

from flax import traverse_util
from safetensors import numpy as st_numpy

from jaxbert.checkpoint import new_directory, write_json_atomic
from jaxbert.errors import UserError
from jaxbert.hf import decoder_names


@dataclasses.dataclass
class DecoderExportReport:
  source: str
  out_dir: str
  architecture: str
  num_tensors: int
  num_parameters: int
  notes: list[str]

  def __str__(self) -> str:
    lines = [f"exported {self.source} -> {self.out_dir}",
             f"  architecture: {self.architecture} ({self.num_tensors} tensors, "
             f"{self.num_parameters:,d} parameters, float32 safetensors)"]
    return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def export_decoder(checkpoint: str, out_dir: str, architecture: str | None = None, *,
                   overwrite: bool = False) -> DecoderExportReport:
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  cfg, params, tokenizer = decoder_weights.load(checkpoint)
  arch = decoder_names.arch_of(cfg)
  hf_config = arch.config_to_hf(cfg)
  name = hf_config["architectures"][0]
  if architecture not in (None, name):
    raise UserError(f"--architecture {architecture}: a {cfg.arch} decoder exports as {name} only")
  flat = traverse_util.flatten_dict(params)
  rows = arch.rows(cfg)
  missing = [p for r in rows for p in r.paths if p not in flat]
  if missing:
    raise UserError(f"{checkpoint} lacks parameter {'/'.join(missing[0])}")
  tensors = decoder_names.to_hf(rows, flat)
  for key in ("bos", "eos", "pad"):
    # Written even when absent (null): GPT2Config would otherwise default to GPT-2's 50256.
    value = getattr(tokenizer, f"{key}_id", None)
    hf_config[f"{key}_token_id"] = None if value is None else int(value)
  hf_config["torch_dtype"] = "float32"
  out_dir = os.path.abspath(out_dir)
  with new_directory(out_dir, overwrite) as tmp:
    write_json_atomic(os.path.join(tmp, "config.json"), hf_config)
    # save() + open() rather than save_file(), which creates the file readable by its owner only.
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
      f.write(st_numpy.save(tensors, metadata={"format": "pt"}))
    notes = _write_tokenizer(tokenizer, tmp, cfg)
  return DecoderExportReport(source=os.path.abspath(checkpoint), out_dir=out_dir,
                             architecture=name, num_tensors=len(tensors),
                             num_parameters=int(sum(t.size for t in tensors.values())),
                             notes=notes)


def _write_tokenizer(tokenizer, out_dir: str, cfg) -> list[str]:
  """tokenizer.json + tokenizer_config.json that AutoTokenizer reads to jaxbert's ids."""
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  if not isinstance(tokenizer, bpe_tokenizer.BPETokenizer):
    tokenizer = _spm_as_bpe(tokenizer)
    notes = ["tokenizer: SentencePiece BPE written as tokenizer.json (AutoTokenizer loads it)"]
  else:
    notes = []
  tokenizer.save(out_dir)
  config = dict(tokenizer.config, tokenizer_class="PreTrainedTokenizerFast",
                model_max_length=cfg.max_position_embeddings, clean_up_tokenization_spaces=False)
  write_json_atomic(os.path.join(out_dir, bpe_tokenizer.CONFIG_FILE), config)
  return notes


def _spm_as_bpe(tokenizer):
  """Own pre-training's SentencePiece BPE (jaxbert.decoder_tokenizer) as a BPETokenizer."""
  from jaxbert import decoder_tokenizer as dtok  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.spm_convert import spm_to_tokenizers  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer.save(tmp)
    with open(os.path.join(tmp, dtok.SPM_LM_FILE), "rb") as f:
      proto = f.read()
  eos = tokenizer.id_to_piece(tokenizer.eos_id)
  pad = tokenizer.id_to_piece(tokenizer.pad_id)
  tok = spm_to_tokenizers(proto, eos, eos, [pad, tokenizer.id_to_piece(tokenizer.unk_id), eos])
  tok.post_processor = None  # a decoder's text gets no [CLS]/[SEP]-style template
  if tok.normalizer is None:
    # Text kept as it is (no whitespace clean-up): tokenizers' Metaspace would not prepend
    # its "▁" to text that starts with a space, SentencePiece does; prepend it here instead.
    from tokenizers import normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top
    from jaxbert.hf.spm_convert import _proto  # pylint: disable=g-import-not-at-top
    m = _proto(proto)
    steps = [normalizers.Prepend("\u2581")] if m.normalizer_spec.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="never", split=bool(m.trainer_spec.split_by_whitespace))
  return bpe_tokenizer.BPETokenizer(tok, {"eos_token": eos, "pad_token": pad,
                                          "add_bos_token": False, "add_eos_token": False})

