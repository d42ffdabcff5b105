"""Extractive question answering (SQuAD): windows over long contexts and decoding.

A context longer than fits beside the question is cut into overlapping windows
(`doc_stride` context pieces apart, as in the original BERT), each one feature
row `[CLS] question [SEP] context window [SEP]`. Training points start/end at
the answer's pieces when the window holds the whole answer and at [CLS]
(position 0) otherwise. Decoding takes the n-best starts and ends of every
window, keeps spans inside the context whose start piece has its most central
window here, and answers with the original context substring of the best
span over all windows of the question.

SQuAD v1.1 on ../shared has only its validation split, stored in tfds's shuffled
order: `validation[:80%]` and `validation[80%:]` share contexts of 1,329
paragraphs and all 48 articles. `article_split_indices` splits by article
instead (see `load_task(..., article_split=(lo, hi))`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxbert.errors import UserError


def article_split_indices(titles: Sequence[str], bounds: Sequence[float]) -> np.ndarray:
  """Indices (ascending) of the examples whose article lies in [lo, hi).

  Articles are ordered by their first question in `titles`; an article covers
  the fraction [before / N, (before + its questions) / N) of the N questions
  and belongs to the range holding its start. So (0.0, 0.8) and (0.8, 1.0)
  split the articles into two disjoint sets of about 80% and 20% of the
  questions, and no context is in both.
  """
  if len(bounds) != 2 or not 0.0 <= bounds[0] < bounds[1] <= 1.0:
    raise UserError(f"article_split={tuple(bounds)}: give (lo, hi) with "
                    "0 <= lo < hi <= 1, e.g. (0.0, 0.8) to train, (0.8, 1.0) to evaluate")
  lo, hi = float(bounds[0]), float(bounds[1])
  counts: dict[str, int] = {}  # dicts keep first-appearance order
  for t in titles:
    counts[t] = counts.get(t, 0) + 1
  n = max(len(titles), 1)
  keep, before = set(), 0
  for title, c in counts.items():
    start = before / n
    if lo <= start < hi:
      keep.add(title)
    before += c
  return np.asarray([i for i, t in enumerate(titles) if t in keep], np.int64)


def _windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
  """(start, length) of the context windows; the last one reaches the end."""
  out, start = [], 0
  while True:
    length = min(size, n - start)
    out.append((start, length))
    if start + length >= n:
      return out
    start += min(length, stride)


def answer_token_span(offsets: np.ndarray, start_char: int,
                      end_char: int) -> tuple[int, int] | None:
  """First and last piece overlapping characters [start_char, end_char)."""
  overlap = (offsets[:, 1] > start_char) & (offsets[:, 0] < end_char)
  hits = np.nonzero(overlap)[0]
  return (int(hits[0]), int(hits[-1])) if hits.size else None


def prepare_qa(examples: Sequence[dict[str, Any]], tokenizer, max_seq_len: int, *,
               doc_stride: int = 128, max_query_len: int = 64):
  """Feature rows for `examples` -> (arrays, metadata, counts).

  arrays: input_ids, token_type_ids, attention_mask (F, T) int32 and
    start_positions, end_positions (F,) int32, F >= len(examples) windows.
  metadata: example_index, window_start (first context piece of the window),
    context_start (row position of that piece), context_length (F,) int64, and
    context_offsets: per example the (pieces, 2) character spans of its context.
  """
  t = max_seq_len
  if doc_stride < 1 or max_query_len < 1:
    raise UserError(f"doc_stride={doc_stride} and max_query_len={max_query_len} must be "
                    ">= 1")
  rows, types, starts, ends = [], [], [], []
  meta = {k: [] for k in ("example_index", "window_start", "context_start",
                          "context_length")}
  context_offsets = []
  counts = {"questions_truncated": 0, "multi_window_examples": 0,
            "answer_not_in_context": 0}
  for e, ex in enumerate(examples):
    query = tokenizer.encode(ex["question"])
    counts["questions_truncated"] += len(query) > max_query_len
    query = query[:max_query_len]
    ids, offs = tokenizer.encode_with_offsets(ex["context"])
    offs = np.asarray(offs, np.int64).reshape(-1, 2)  # (pieces, 2)
    context_offsets.append(offs)
    span = None
    if not ex["is_impossible"] and ex["answer_starts"]:
      a_start = ex["answer_starts"][0]
      span = answer_token_span(offs, a_start, a_start + len(ex["answers"][0]))
      counts["answer_not_in_context"] += span is None
    head = [tokenizer.cls_id] + query + [tokenizer.sep_id]
    if t - len(head) - 1 < 1:
      raise UserError(f"max_seq_len={t} leaves no room for the context after a question "
                      f"of {len(query)} pieces; raise max_seq_len or lower max_query_len")
    windows = _windows(len(ids), t - len(head) - 1, doc_stride)
    counts["multi_window_examples"] += len(windows) > 1
    for ws, wl in windows:
      rows.append(head + ids[ws:ws + wl] + [tokenizer.sep_id])
      types.append([0] * len(head) + [1] * (wl + 1))
      cs = len(head)
      if span is not None and ws <= span[0] and span[1] < ws + wl:
        starts.append(cs + span[0] - ws)
        ends.append(cs + span[1] - ws)
      else:
        starts.append(0)
        ends.append(0)
      for key, value in zip(meta, (e, ws, cs, wl)):
        meta[key].append(value)
  n = len(rows)
  input_ids = np.full((n, t), tokenizer.pad_id, np.int32)
  token_type_ids = np.zeros((n, t), np.int32)
  attention_mask = np.zeros((n, t), np.int32)
  for i, (row, typ) in enumerate(zip(rows, types)):
    input_ids[i, :len(row)] = row
    token_type_ids[i, :len(row)] = typ
    attention_mask[i, :len(row)] = 1
  arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "start_positions": np.asarray(starts, np.int32).reshape(n),
            "end_positions": np.asarray(ends, np.int32).reshape(n)}
  metadata = {k: np.asarray(v, np.int64).reshape(n) for k, v in meta.items()}
  metadata["context_offsets"] = context_offsets
  counts["features"] = n
  return arrays, metadata, counts


def _max_context(windows: np.ndarray, n: int) -> np.ndarray:
  """(W, n) bool: piece j has its most central window in window w.

  A piece's centrality in a window is min(pieces left, pieces right) plus 0.01
  per window piece (the original BERT rule); ties go to the earlier window.
  """
  j = np.arange(n)[None, :]
  ws, wl = windows[:, :1], windows[:, 1:]
  inside = (j >= ws) & (j < ws + wl)
  score = np.where(inside, np.minimum(j - ws, ws + wl - 1 - j) + 0.01 * wl, -np.inf)
  best = np.argmax(score, axis=0)  # (n,) first maximum
  return best[None, :] == np.arange(len(windows))[:, None]


def decode_qa(examples: Sequence[dict[str, Any]], metadata: dict[str, Any],
              start_logits: np.ndarray, end_logits: np.ndarray, *,
              n_best_size: int = 20, max_answer_len: int = 30, version_2: bool = False,
              null_score_threshold: float = 0.0) -> list[dict[str, Any]]:
  """Per example {"id", "prediction", "start", "end", "score", "null_score"}.

  v2.0: the answer is "" when the [CLS] null score (the smallest over the
  windows) beats the best span's score by more than `null_score_threshold`.
  """
  start_logits = np.asarray(start_logits, np.float32)
  end_logits = np.asarray(end_logits, np.float32)
  ex_index = metadata["example_index"]
  if start_logits.shape != end_logits.shape or start_logits.shape[0] != len(ex_index):
    raise ValueError(f"start/end logits {start_logits.shape}/{end_logits.shape} do not "
                     f"match the {len(ex_index)} features")
  bounds = np.searchsorted(ex_index, np.arange(len(examples) + 1))
  results = []
  for e, ex in enumerate(examples):
    feats = np.arange(bounds[e], bounds[e + 1])
    offs = metadata["context_offsets"][e]
    windows = np.stack([metadata["window_start"][feats],
                        metadata["context_length"][feats]], axis=1)  # (W, 2)
    is_max = _max_context(windows, len(offs))
    best, best_score, null_score = None, -np.inf, np.inf
    for w, f in enumerate(feats):
      null_score = min(null_score, float(start_logits[f, 0] + end_logits[f, 0]))
      ws, cs, cl = int(windows[w, 0]), int(metadata["context_start"][f]), int(windows[w, 1])
      if cl == 0:
        continue
      s = start_logits[f, cs:cs + cl]
      en = end_logits[f, cs:cs + cl]
      s_ok = is_max[w, ws:ws + cl]
      top_s = np.argsort(-s, kind="stable")[:n_best_size]
      top_s = top_s[s_ok[top_s]]
      top_e = np.argsort(-en, kind="stable")[:n_best_size]
      length = top_e[None, :] - top_s[:, None] + 1  # (starts, ends)
      score = np.where((length >= 1) & (length <= max_answer_len),
                       s[top_s][:, None] + en[top_e][None, :], -np.inf)
      if score.size and np.max(score) > best_score:
        i, j = np.unravel_index(np.argmax(score), score.shape)
        best, best_score = (ws + int(top_s[i]), ws + int(top_e[j])), float(score[i, j])
    text, start = "", None
    if best is not None:
      raw = ex["context"][offs[best[0], 0]:offs[best[1], 1]]
      text = raw.strip()
      start = int(offs[best[0], 0]) + len(raw) - len(raw.lstrip())
    if version_2 and best is not None and null_score - best_score > null_score_threshold:
      text, start = "", None
    # start / end: the answer's character span in the context (None without an answer).
    results.append({"id": ex["id"], "prediction": text, "start": start,
                    "end": None if start is None else start + len(text),
                    "score": best_score if best is not None else None,
                    "null_score": null_score})
  return results
