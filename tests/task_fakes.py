"""Test doubles for fine-tuning task data: a tokenizer, file writing, oracle outputs."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np


class FakeTokenizer:
  """Words (letter/digit runs or single symbols), lowercased, cut into pieces of
  at most 3 characters ("##" marks a continuation). Ids are handed out on first
  sight, so any text encodes."""

  pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
  lowercase = True

  def __init__(self):
    self._pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    self._ids = {p: i for i, p in enumerate(self._pieces)}

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def _id(self, piece: str) -> int:
    if piece not in self._ids:
      self._ids[piece] = len(self._pieces)
      self._pieces.append(piece)
    return self._ids[piece]

  def encode_with_offsets(self, text):
    ids, offsets = [], []
    for m in re.finditer(r"\w+|[^\w\s]", text):
      word = m.group().lower()
      for k in range(0, len(word), 3):
        ids.append(self._id(("##" if k else "") + word[k:k + 3]))
        offsets.append((m.start() + k, m.start() + min(k + 3, len(word))))
    return ids, offsets

  def encode(self, text):
    return self.encode_with_offsets(text)[0]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return " ".join(self._pieces[i] for i in ids).replace(" ##", "")

  def id_to_piece(self, i):
    return self._pieces[i]

  def word_start_table(self):
    return np.asarray([not p.startswith("##") for p in self._pieces])

  def save(self, directory):
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
      f.write("\n".join(self._pieces))

  def fingerprint(self):
    return hashlib.sha256("\n".join(self._pieces).encode()).hexdigest()


def piece_names(tok, row):
  return [tok.id_to_piece(int(i)) for i in row]


def write_file(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def gold_logits(task_data, big=10.0):
  """Outputs that put all mass on the targets (an oracle model)."""
  a, spec = task_data.arrays, task_data.spec
  t = task_data.max_seq_len
  if spec.kind == "classification":
    return {"logits": np.eye(spec.num_labels)[a["label"]] * big}
  if spec.kind == "regression":
    return {"predictions": a["label"].copy()}
  if spec.kind == "token_classification":
    return {"logits": np.eye(spec.num_labels)[a["token_labels"]] * big}
  return {"start_logits": np.eye(t)[a["start_positions"]] * big,
          "end_logits": np.eye(t)[a["end_positions"]] * big}
