"""Sequence packing: several pre-training examples per row, each attending only to itself.

A row of length T holds up to `max_segments` whole examples back to back, each
still `[CLS] A [SEP] B [SEP]` with its own token types, its own masked positions
(shifted to where it sits in the row) and its own next-sentence label.
`segment_ids` hold the example's number in the row (1, 2, ...; 0 = padding), which
`jaxbert.model.attention_mask_from_segments` turns into a block-diagonal mask;
`attention_mask` stays 0/1 (real pieces), and `position_ids` restart at 0 for every
example, so each example is computed exactly as it would be alone in a row.

Rows are planned per epoch from the examples' lengths alone (first-fit
decreasing, then shuffled), so a packed row, like an example, is a pure function
of (seed, epoch, index) and a resumed run needs only its stream position.

Next-sentence prediction: `nsp_positions`, `nsp_labels` and `nsp_weights`
(B, max_segments) name every example's [CLS] position and label; the plain
`next_sentence_label` (B,) is the first example's, for a head that pools
position 0 only.
"""

from __future__ import annotations

import bisect
import collections
import math
import threading

import numpy as np

from jaxbert.data.pretraining import PretrainingExamples

_PACK_STREAM = 5  # a random stream of its own (pretraining.py uses 0-4)
_PLAN_CACHE_SIZE = 2


def pack_lengths(lengths: np.ndarray, max_len: int, max_segments: int) -> list[np.ndarray]:
  """Groups items into rows of at most `max_len` tokens and `max_segments` items.

  First-fit decreasing over rows: each row starts with the longest item left and
  is filled with the longest items that still fit. Items of equal length are
  taken in index order, so the result is a pure function of `lengths`.
  Returns the item indices of each row.
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.min() < 1 or lengths.max() > max_len):
    raise ValueError(f"item lengths must be in [1, {max_len}], got "
                     f"[{lengths.min()}, {lengths.max()}]")
  if max_segments < 1:
    raise ValueError(f"max_segments must be >= 1, got {max_segments}")
  # Per length, the items of that length (in index order) and how many are used.
  by_len = [np.flatnonzero(lengths == n) for n in range(max_len + 1)]
  used = [0] * (max_len + 1)
  avail = sorted(n for n in range(1, max_len + 1) if by_len[n].size)  # lengths with items left

  def take(n: int) -> int:
    item = int(by_len[n][used[n]])
    used[n] += 1
    if used[n] == by_len[n].size:
      avail.pop(bisect.bisect_left(avail, n))
    return item

  rows = []
  while avail:
    row = [take(avail[-1])]
    space = max_len - int(lengths[row[0]])
    while len(row) < max_segments and avail and avail[0] <= space:
      n = avail[bisect.bisect_right(avail, space) - 1]  # the longest that fits
      row.append(take(n))
      space -= n
    rows.append(np.asarray(row, np.int64))
  return rows


def packed_max_predictions(max_len: int, max_segments: int, mask_prob: float) -> int:
  """Masked positions a packed row can need, at most.

  An example with n pieces between its specials predicts at most
  floor(mask_prob * n) + 1 of them (stochastic rounding, at least one), so a row
  of k examples holding at most max_len - 3k such pieces needs at most
  mask_prob * (max_len - 3k) + k <= floor(mask_prob * max_len) + max_segments.
  """
  return math.floor(mask_prob * max_len) + max_segments


def pack_row(examples: list[dict[str, np.ndarray]], max_len: int, max_predictions: int,
             max_segments: int, pad_id: int) -> dict[str, np.ndarray]:
  """One packed row from unpacked examples (PretrainingExamples.example dicts)."""
  if not 1 <= len(examples) <= max_segments:
    raise ValueError(f"a row takes 1 to {max_segments} examples, got {len(examples)}")
  row = {
      "input_ids": np.full(max_len, pad_id, np.int32),
      "token_type_ids": np.zeros(max_len, np.int32),
      "attention_mask": np.zeros(max_len, np.int32),
      "segment_ids": np.zeros(max_len, np.int32),
      "position_ids": np.zeros(max_len, np.int32),
      "masked_positions": np.zeros(max_predictions, np.int32),
      "masked_ids": np.zeros(max_predictions, np.int32),
      "masked_weights": np.zeros(max_predictions, np.float32),
      "nsp_positions": np.zeros(max_segments, np.int32),
      "nsp_labels": np.zeros(max_segments, np.int32),
      "nsp_weights": np.zeros(max_segments, np.float32),
      "next_sentence_label": np.asarray(examples[0]["next_sentence_label"], np.int32),
  }
  at, pred = 0, 0
  for k, ex in enumerate(examples):
    n = int(ex["attention_mask"].sum())
    m = int(ex["masked_weights"].sum())
    if at + n > max_len or pred + m > max_predictions:
      raise ValueError(f"examples need {at + n} tokens / {pred + m} predictions; the row has "
                       f"{max_len} / {max_predictions}")
    row["input_ids"][at:at + n] = ex["input_ids"][:n]
    row["token_type_ids"][at:at + n] = ex["token_type_ids"][:n]
    row["attention_mask"][at:at + n] = 1
    row["segment_ids"][at:at + n] = k + 1
    row["position_ids"][at:at + n] = np.arange(n)
    row["masked_positions"][pred:pred + m] = ex["masked_positions"][:m] + at
    row["masked_ids"][pred:pred + m] = ex["masked_ids"][:m]
    row["masked_weights"][pred:pred + m] = 1.0
    row["nsp_positions"][k] = at
    row["nsp_labels"][k] = ex["next_sentence_label"]
    row["nsp_weights"][k] = 1.0
    at, pred = at + n, pred + m
  return row


class PackedExamples:
  """Packed rows by (epoch, index), with the random-access interface of PretrainingExamples.

  `example(epoch, index)` is a packed row; `num_examples` and `locate` count rows,
  so `jaxbert.pretrain.StepBatches` batches packed rows unchanged.
  """

  def __init__(self, examples: PretrainingExamples, max_segments: int = 4,
               max_predictions: int | None = None):
    self.examples = examples
    self.max_len = examples.cfg.max_seq_len
    self.max_segments = max_segments
    bound = packed_max_predictions(self.max_len, max_segments, examples.cfg.mask_prob)
    self.max_predictions = bound if max_predictions is None else max_predictions
    if self.max_predictions < bound:
      raise ValueError(f"max_predictions={self.max_predictions} can be too few for rows of "
                       f"{max_segments} examples; use >= {bound}")
    self._lock = threading.RLock()
    self._plans: collections.OrderedDict[int, list[np.ndarray]] = collections.OrderedDict()
    self._offsets = [0]

  def __getstate__(self):
    state = self.__dict__.copy()
    for key in ("_lock", "_plans", "_offsets"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.RLock()
    self._plans = collections.OrderedDict()
    self._offsets = [0]

  def lengths(self, epoch: int) -> np.ndarray:
    """Real tokens (specials included) of every example of `epoch`."""
    ex = self.examples
    out = np.empty(ex.num_examples(epoch), np.int64)
    for i in range(len(out)):
      prov = ex.provenance(epoch, i)
      out[i] = (prov.a_span[1] - prov.a_span[0]) + (prov.b_span[1] - prov.b_span[0]) + 3
    return out

  def rows(self, epoch: int) -> list[np.ndarray]:
    """The example indices of every row of `epoch`, in training order."""
    with self._lock:
      plan = self._plans.get(epoch)
      if plan is None:
        rows = pack_lengths(self.lengths(epoch), self.max_len, self.max_segments)
        rng = np.random.default_rng(np.random.SeedSequence(
            (self.examples.cfg.seed, epoch, _PACK_STREAM)))
        plan = [rows[i] for i in rng.permutation(len(rows))]
        self._plans[epoch] = plan
        while len(self._plans) > _PLAN_CACHE_SIZE:
          self._plans.popitem(last=False)
      else:
        self._plans.move_to_end(epoch)
      return plan

  def num_examples(self, epoch: int) -> int:
    return len(self.rows(epoch))

  def locate(self, position: int) -> tuple[int, int]:
    """(epoch, row) of `position` in the endless row stream."""
    if position < 0:
      raise IndexError(f"stream position {position} < 0")
    with self._lock:
      while self._offsets[-1] <= position:
        self._offsets.append(self._offsets[-1] + self.num_examples(len(self._offsets) - 1))
      epoch = bisect.bisect_right(self._offsets, position) - 1
      return epoch, position - self._offsets[epoch]

  def example(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    row = self.rows(epoch)[index]
    return pack_row([self.examples.example(epoch, int(i)) for i in row], self.max_len,
                    self.max_predictions, self.max_segments, self.examples.pad_id)


def packing_stats(packed: PackedExamples, epoch: int = 0) -> dict[str, float]:
  """Real-token shares of `epoch` unpacked (one example per row) and packed."""
  lengths = packed.lengths(epoch)
  rows = packed.rows(epoch)
  total = float(lengths.sum())
  return {"examples": int(len(lengths)), "rows": len(rows),
          "unpacked_efficiency": total / (len(lengths) * packed.max_len),
          "packed_efficiency": total / (len(rows) * packed.max_len)}
