"""`export_hf`: a jaxbert bundle or training run -> a folder `transformers` loads."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from flax import traverse_util
from safetensors import numpy as st_numpy

from jaxbert.checkpoint import new_directory, write_json_atomic
from jaxbert.errors import UserError
from jaxbert.handover import read_checkpoint
from jaxbert.hf.names import (HEAD_DESCRIPTIONS, ARCHITECTURES, HF_CONFIG, SAFETENSORS_FILE,
                              config_to_hf, encoder_tensors, head_tensors, pooler_tensors)
from jaxbert.model import BertConfig


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
    raise UserError(f"{arch} needs the {', '.join(HEAD_DESCRIPTIONS[h] for h in lacking)}, which "
                    f"{ckpt.description} does not have (it has: {', '.join(heads) or 'no head'}); "
                    "export it as BertModel")
  pooling = ckpt.extra.get("pooling", "cls")
  if arch == "BertForSequenceClassification" and pooling != "cls":
    raise UserError(f"{ckpt.description} was fine-tuned with head.pooling={pooling!r}, but "
                    "transformers' BertForSequenceClassification classifies the pooled [CLS], so "
                    "it would predict differently; export the encoder with --architecture "
                    "BertModel and pool its outputs yourself")
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
  with new_directory(out_dir, overwrite) as tmp:
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
