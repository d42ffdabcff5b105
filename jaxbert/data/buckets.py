"""Fine-tuning batches cut to a few fixed lengths instead of data.max_seq_len.

Fine-tuning rows are encoded padded to T = data.max_seq_len (jaxbert.data.encoding);
most are much shorter. With `data.length_buckets = K`, K lengths (multiples of 8,
chosen once from the training split's row lengths to cover them with the least
padding, the longest covering its longest row) are the only shapes a step sees:
each step's batch is cut to one of them. So the step's work follows the real
lengths, and the jitted step and prediction compile at most K (+1) times.

Order within an epoch. The step's length must not depend on train.seed: trials
trained side by side (jaxbert/trials.py) differ in their seed and stack their
batches into one array. So the epoch's *shape* is fixed first, from the bucket
sizes and the epoch number alone: its rows sorted by bucket, cut into batch-sized
chunks, the chunks shuffled (the rows left over at the epoch's two ends, where a
batch straddles two epochs as in the unbucketed order, are the longest ones). Then
each bucket's slots are filled with that bucket's rows in an order drawn from
(train.seed, epoch). Every row is seen once per epoch, batches straddle epochs
exactly where the unbucketed order's do (so train.epochs means the same number of
steps), and everything is a pure function of (seed, epoch, step): a resumed run
sees the same batches.
"""

from __future__ import annotations

import numpy as np

MULTIPLE = 8  # bucket lengths are multiples of this (vector-friendly shapes)
_SHAPE_SALT = 0x5EB0C  # keys the seed-free chunk order apart from the row orders


def row_lengths(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """Real pieces per row (the attention mask's length; rows are left-aligned)."""
  return arrays["attention_mask"].astype(bool).sum(axis=1).astype(np.int64)


def choose_lengths(lengths: np.ndarray, max_seq_len: int, count: int) -> tuple[int, ...]:
  """At most `count` lengths (ascending multiples of MULTIPLE, the last >= every row,
  none above max_seq_len) that minimise the padded pieces of these rows."""
  top = int(min(max_seq_len, -(-max(int(np.max(lengths)), 1) // MULTIPLE) * MULTIPLE))
  cands = sorted({min(c, top) for c in range(MULTIPLE, top + MULTIPLE, MULTIPLE)})
  count = max(1, min(count, len(cands)))
  # rows[i]: rows needing more than cands[i-1] and at most cands[i] pieces.
  edges = np.searchsorted(cands, lengths, side="left")
  rows = np.bincount(edges, minlength=len(cands)).astype(np.int64)
  before = np.concatenate([[0], np.cumsum(rows)])
  # cost[k][j]: least padded pieces covering rows of candidates 0..j with k+1 lengths,
  # the longest being cands[j]. The bucket (i, j] costs cands[j] x its rows.
  m = len(cands)
  inf = np.iinfo(np.int64).max // 4
  cost = np.full((count, m), inf, np.int64)
  back = np.zeros((count, m), np.int64)
  cost[0] = [cands[j] * before[j + 1] for j in range(m)]
  for k in range(1, count):
    for j in range(m):
      for i in range(j):
        c = cost[k - 1][i] + cands[j] * (before[j + 1] - before[i + 1])
        if c < cost[k][j]:
          cost[k][j], back[k][j] = c, i
  k = int(np.argmin(cost[:, m - 1]))  # fewer lengths when more would not help
  chosen, j = [], m - 1
  while True:
    chosen.append(cands[j])
    if k == 0:
      break
    j, k = int(back[k][j]), k - 1
  return tuple(sorted(chosen))


def bucket_ids(lengths: np.ndarray, bucket_lengths: tuple[int, ...]) -> np.ndarray:
  """The index of the shortest bucket that holds each row; len(bucket_lengths) for
  rows longer than every bucket."""
  return np.searchsorted(np.asarray(bucket_lengths), lengths, side="left")


def cut(rows: dict[str, np.ndarray], length: int, full: int) -> dict[str, np.ndarray]:
  """Rows of width `full` cut to `length` pieces (per-piece arrays only; the cut-off
  part is padding)."""
  return {k: (v[:, :length] if v.ndim >= 2 and v.shape[1] == full else v)
          for k, v in rows.items()}


class Schedule:
  """Which rows every training step takes, and the length its batch is cut to."""

  def __init__(self, lengths: np.ndarray, bucket_lengths: tuple[int, ...], global_batch: int):
    self.n = len(lengths)
    self.batch = global_batch
    self.lengths = tuple(bucket_lengths)
    self.ids = bucket_ids(lengths, self.lengths)
    if self.ids.max(initial=0) >= len(self.lengths):
      raise ValueError("a training row is longer than the longest bucket")
    self._sorted = np.sort(self.ids)
    self._cache: dict[tuple[int, int], np.ndarray] = {}

  def _slots(self, epoch: int) -> np.ndarray:
    """The bucket of each of the epoch's positions: independent of the seed."""
    n, b = self.n, self.batch
    head = (-epoch * n) % b       # positions finishing a batch begun in the previous epoch
    tail = (n - head) % b         # positions starting a batch that ends in the next one
    middle = self._sorted[:n - head - tail].reshape(-1, b)
    order = np.random.default_rng([_SHAPE_SALT, epoch]).permutation(len(middle))
    ends = self._sorted[n - head - tail:]  # the longest rows sit where epochs meet
    return np.concatenate([ends[:head], middle[order].reshape(-1), ends[head:]])

  def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
    """The epoch's rows in training order: a permutation of range(n)."""
    key = (seed, epoch)
    if key not in self._cache:
      slots = self._slots(epoch)
      perm = np.random.default_rng([seed, epoch]).permutation(self.n)
      rows = perm[np.argsort(self.ids[perm], kind="stable")]  # by bucket, random within
      out = np.empty(self.n, np.int64)
      out[np.argsort(slots, kind="stable")] = rows
      if len(self._cache) > 4:
        self._cache.pop(next(iter(self._cache)))
      self._cache[key] = out
    return self._cache[key]

  def _positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(step * self.batch, (step + 1) * self.batch)
    return np.divmod(positions, self.n)

  def step_length(self, step: int) -> int:
    """The length every trial's batch at `step` is cut to (the seed plays no part)."""
    epochs, offsets = self._positions(step)
    top = max(int(self._slots(int(e))[offsets[epochs == e]].max()) for e in np.unique(epochs))
    return self.lengths[top]

  def step_rows(self, seed: int, step: int) -> np.ndarray:
    """The global batch's rows at `step` (every process's share, in order)."""
    epochs, offsets = self._positions(step)
    out = np.empty(self.batch, np.int64)
    for e in np.unique(epochs):
      out[epochs == e] = self.epoch_order(seed, int(e))[offsets[epochs == e]]
    return out


def eval_batches(ids: np.ndarray, batch: int) -> list[tuple[int, np.ndarray]]:
  """Evaluation batches: (bucket, row indices) with the rows of one bucket each, the
  last one of a bucket padded by repeating its last row (callers drop the repeats)."""
  out = []
  for b in np.unique(ids):
    members = np.flatnonzero(ids == b)
    for lo in range(0, len(members), batch):
      idx = members[lo:lo + batch]
      out.append((int(b), np.concatenate([idx, np.full(batch - len(idx), idx[-1])])))
  return out
