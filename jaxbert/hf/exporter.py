"""`export_hf`: a jaxbert bundle or training run -> a folder `transformers` loads."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tokenizers
from flax import traverse_util
from safetensors import numpy as st_numpy

from jaxbert.checkpoint import new_directory, write_json_atomic
from jaxbert.errors import UserError
from jaxbert.handover import read_checkpoint
from jaxbert.hf.names import (HEAD_DESCRIPTIONS, ARCHITECTURES, HF_CONFIG, SAFETENSORS_FILE,
                              config_to_hf, encoder_tensors, head_tensors, pooler_tensors)
from jaxbert.hf.spm_convert import spm_to_tokenizers, template
from jaxbert.model import BertConfig
from jaxbert.run_task import run_task, run_workdir


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
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  from jaxbert.heads import last_token  # pylint: disable=g-import-not-at-top
  workdir = run_workdir(checkpoint)
  if last_token.is_classifier_run(workdir):  # a decoder fine-tuned to classify
    return last_token.export(checkpoint, workdir, out_dir, architecture, overwrite=overwrite)
  if decoder_weights.is_decoder(checkpoint):  # GPT-2 / Llama-style decoders
    from jaxbert.hf.decoder_export import export_decoder  # pylint: disable=g-import-not-at-top
    return export_decoder(checkpoint, out_dir, architecture, overwrite=overwrite)
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
    notes = []
    if "classifier" in arch_heads:
      id2label = _label_names(checkpoint, ckpt, num_labels, notes)
      hf_config["id2label"] = id2label
      hf_config["label2id"] = {v: int(k) for k, v in id2label.items()}
      if arch == "BertForSequenceClassification" and num_labels == 1:
        hf_config["problem_type"] = "regression"
    write_json_atomic(os.path.join(tmp, HF_CONFIG), hf_config)
    # save() + open() rather than save_file(), which creates the file readable by its owner only.
    with open(os.path.join(tmp, SAFETENSORS_FILE), "wb") as f:
      f.write(st_numpy.save(tensors, metadata={"format": "pt"}))
    notes += _export_tokenizer(ckpt.tokenizer, tmp, cfg)
  return ExportReport(source=ckpt.description, out_dir=out_dir, architecture=arch,
                      num_tensors=len(tensors),
                      num_parameters=int(sum(t.size for t in tensors.values())),
                      dropped=dropped, notes=notes)


def _label_names(checkpoint: str, ckpt, num_labels: int, notes: list[str]) -> dict[str, str]:
  """id2label for config.json: the fine-tuned task's label names (a bundle's own, from
  import-hf), else LABEL_i with a note saying why."""
  id2label = ckpt.extra.get("id2label") or {}
  workdir = run_workdir(checkpoint)
  if workdir is not None:
    try:
      spec = run_task(workdir, ckpt.tokenizer, key="checkpoint").spec
      id2label = {str(i): name for i, name in enumerate(spec.label_names)}
    except UserError as e:
      notes.append(f"label names are LABEL_0..LABEL_{num_labels - 1}: {e}")
      return {str(i): f"LABEL_{i}" for i in range(num_labels)}
  if len(id2label) != num_labels:
    id2label = {str(i): f"LABEL_{i}" for i in range(num_labels)}
  return id2label


def _export_tokenizer(tokenizer, out_dir: str, cfg: BertConfig) -> list[str]:
  """Writes the tokenizer: its own files, plus a tokenizer.json with BERT's [CLS] A [SEP]
  B [SEP] template and a tokenizer_config.json, so that transformers' AutoTokenizer gives
  the ids jaxbert gives (a SentencePiece model is rebuilt with `tokenizers`, see
  spm_convert). Returns notes for the report."""
  from jaxbert import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  tokenizer.save(out_dir)
  path = os.path.join(out_dir, tok_lib.HF_TOKENIZER_FILE)
  specials = [tok_lib.PAD, tok_lib.UNK, tok_lib.CLS, tok_lib.SEP, tok_lib.MASK]
  if isinstance(tokenizer, tok_lib.WordPieceTokenizer):
    tok = tokenizers.Tokenizer.from_file(path)
    tok.post_processor = template(tok_lib.CLS, tokenizer.cls_id, tok_lib.SEP, tokenizer.sep_id)
    tok_class, notes = "BertTokenizer", []
  else:
    with open(os.path.join(out_dir, tok_lib.SPM_MODEL_FILE), "rb") as f:
      tok = spm_to_tokenizers(f.read(), tok_lib.CLS, tok_lib.SEP, specials)
    # The generic fast tokenizer reads tokenizer.json as it is; BertTokenizer would
    # rebuild a WordPiece from a vocab.txt this model does not have.
    tok_class = "PreTrainedTokenizerFast"
    notes = [f"tokenizer: SentencePiece {'lowercasing ' if tokenizer.lowercase else ''}model "
             f"written as {tok_lib.HF_TOKENIZER_FILE} (AutoTokenizer loads it; "
             f"{tok_lib.SPM_MODEL_FILE} is there too)"]
  tok.save(path)
  write_json_atomic(os.path.join(out_dir, tok_lib.HF_CONFIG_FILE), {
      "tokenizer_class": tok_class, "do_lower_case": bool(tokenizer.lowercase),
      "model_max_length": cfg.max_position_embeddings, "unk_token": tok_lib.UNK,
      "sep_token": tok_lib.SEP, "pad_token": tok_lib.PAD, "cls_token": tok_lib.CLS,
      "mask_token": tok_lib.MASK, "clean_up_tokenization_spaces": False,
      "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
  return notes
