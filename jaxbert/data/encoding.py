"""Fine-tuning inputs as fixed-shape arrays: text (pairs) and word sequences.

`encode_texts` makes `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` rows, cut
longest-first as in the original BERT; `encode_words` makes NER rows with each
word's tag on its first piece.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fill(rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]], t: int,
         pad_id: int) -> dict[str, np.ndarray]:
  """Rows of ids and token types -> padded int32 (N, t) arrays with the attention mask."""
  n = len(rows)
  out = {"input_ids": np.full((n, t), pad_id, np.int32),
         "token_type_ids": np.zeros((n, t), np.int32),
         "attention_mask": np.zeros((n, t), np.int32)}
  for i, (row, typ) in enumerate(zip(rows, types)):
    out["input_ids"][i, :len(row)] = row
    out["token_type_ids"][i, :len(row)] = typ
    out["attention_mask"][i, :len(row)] = 1
  return out


def truncated_lengths(la: int, lb: int, budget: int) -> tuple[int, int]:
  """Lengths after BERT's longest-first cut: pop from the longer side (the
  second on ties) until the pair fits in `budget` pieces."""
  if la + lb <= budget:
    return la, lb
  short = min(la, lb)
  if budget - short >= short:  # cutting the longer side alone is enough
    return (budget - short, lb) if la > lb else (la, budget - short)
  return (budget + 1) // 2, budget // 2  # both reach equal length, then alternate


def encode_texts(texts: Sequence[tuple[str, ...]], tokenizer, max_seq_len: int):
  """Single or pair encoding -> ({input_ids, token_type_ids, attention_mask}, truncated).

  `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` with token type 1 on `b [SEP]`; a
  text (pair) that does not fit is cut longest-first, as in the original BERT.
  """
  pair = bool(texts) and len(texts[0]) == 2
  a_ids = tokenizer.encode_batch([x[0] for x in texts])
  b_ids = tokenizer.encode_batch([x[1] for x in texts]) if pair else [[]] * len(texts)
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  # A decoder's rows (heads/last_token.TaskTokenizer) have no [CLS] and no closing [SEP]:
  # the text's own last piece ends the row, where the classifier reads it.
  start = [] if cls is None else [cls]
  end = [] if getattr(tokenizer, "decoder_rows", False) else [sep]
  budget = max_seq_len - len(start) - len(end) - (1 if pair else 0)
  rows, types, truncated = [], [], 0
  for a, b in zip(a_ids, b_ids):
    la, lb = truncated_lengths(len(a), len(b), budget)
    truncated += (la, lb) != (len(a), len(b))
    a, b = list(a[:la]), list(b[:lb])
    row = start + a + ([sep] + b + end if pair else end)
    rows.append(row)
    first = len(start) + la + (1 if pair or end else 0)  # a and its separator
    types.append([0] * first + [1] * (len(row) - first))
  return fill(rows, types, max_seq_len, tokenizer.pad_id), truncated


def encode_words(examples, tokenizer, max_seq_len):
  """NER rows: tag on each word's first piece.

  Counts: truncated = sentences that lost pieces, truncated_words = words
  whose first piece did not fit (decoded as "O").
  """
  words = [w for ex in examples for w in ex["tokens"]]
  pieces = tokenizer.encode_batch(words)
  t = max_seq_len
  rows, types = [], []
  labels = np.zeros((len(examples), t), np.int32)
  weights = np.zeros((len(examples), t), np.float32)
  truncated = truncated_words = 0
  k = 0
  for i, ex in enumerate(examples):
    row, cut = [tokenizer.cls_id], False
    for w, tag in enumerate(ex["tags"]):
      p = list(pieces[k + w]) or [tokenizer.unk_id]  # a word always gets a position
      room = t - 1 - len(row)  # keep one slot for [SEP]
      if room < 1:
        cut = True
        truncated_words += len(ex["tags"]) - w
        break
      labels[i, len(row)] = tag
      weights[i, len(row)] = 1.0
      cut |= len(p) > room
      row += p[:room]
    truncated += cut
    k += len(ex["tags"])
    row.append(tokenizer.sep_id)
    rows.append(row)
    types.append([0] * len(row))
  arrays = fill(rows, types, t, tokenizer.pad_id)
  arrays.update(token_labels=labels, token_label_weights=weights)
  return arrays, {"truncated": truncated, "truncated_words": truncated_words}
