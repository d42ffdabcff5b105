"""One epoch of BERT's next-sentence-prediction pairs, as integer spans ("the plan").

From (seed, epoch) alone: walk each document's sentences, gather a chunk up to a target
length (sometimes a shorter random one), split it into segments A and B, replace B by
text from another document half of the time (putting the unused sentences back), and
truncate each pair at random ends as BERT's truncate_seq_pair does. Masking and
the token ids are jaxbert/data/pretraining.py's business.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from jaxbert.data.pretraining import PretrainDataConfig

# Separate random streams so that e.g. the masks never share draws with the plan.
WALK_STREAM = 0
TRUNCATE_STREAM = 1
ORDER_STREAM = 2
MASK_STREAM = 3
HELDOUT_STREAM = 4

# How hard the NSP balance pulls the NotNext share back to `random_next_prob`:
# a deficit of 1 / _NSP_GAIN instances saturates the probability at 0 or 1.
_NSP_GAIN = 0.05

# The walk consumes a fixed number of uniforms per instance, drawn in blocks.
_DRAWS_PER_INSTANCE = 6
_DRAW_BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One epoch's instances in training order; integers only.

  spans: int64[n, 4] token offsets (a_lo, a_hi, b_lo, b_hi), already truncated.
  docs:  int32[n, 2] document of A and of B.
  label: int32[n]    0 = IsNext, 1 = NotNext.
  """

  spans: np.ndarray
  docs: np.ndarray
  label: np.ndarray

  def __len__(self) -> int:
    return len(self.label)


def stream_rng(*key: int) -> np.random.Generator:
  """The generator of one random stream, keyed by (seed, ..., stream, ...)."""
  return np.random.default_rng(np.random.SeedSequence(key))


def plan_epoch(sent_start: list[int], doc_start: list[int],
                docs: list[int], cfg: "PretrainDataConfig",
                epoch: int) -> EpochPlan:
  """Pairs every document's sentences into instances for one epoch.

  sent_start, doc_start: the store's arrays as Python lists (fast scalar access).
  docs: the ids of the documents that hold at least one token.
  """
  rng = stream_rng(cfg.seed, epoch, WALK_STREAM)
  max_tokens = cfg.max_seq_len - 3
  q = cfg.random_next_prob
  n_docs = len(docs)
  rows = []  # (a_lo, a_hi, b_lo, b_hi, a_doc, b_doc, not_next)
  n_random = 0
  draws, pos = [], 0
  for k, d in enumerate(docs):
    end = doc_start[d + 1]
    i = doc_start[d]
    while i < end:
      if pos == len(draws):
        draws, pos = rng.random(_DRAWS_PER_INSTANCE * _DRAW_BLOCK).tolist(), 0
      u_short, u_target, u_split, u_next, u_doc, u_start = (
          draws[pos:pos + _DRAWS_PER_INSTANCE])
      pos += _DRAWS_PER_INSTANCE

      target = max_tokens
      if u_short < cfg.short_seq_prob:
        target = 2 + int(u_target * (max_tokens - 1))  # uniform in [2, max_tokens]
      # Chunk = sentences i..j-1: the first prefix reaching `target`, or the rest.
      j = min(bisect.bisect_left(sent_start, sent_start[i] + target, i + 1, end + 1),
              end)
      a_end = i + 1
      if j - i >= 2:
        a_end = i + 1 + int(u_split * (j - i - 1))  # uniform in [i+1, j-1]

      # Single-sentence chunks can only be NotNext; the other chunks make up for
      # them so that the epoch's NotNext share stays at `random_next_prob`.
      p_next = min(1.0, max(0.0, q + _NSP_GAIN * (q * len(rows) - n_random)))
      if j - i == 1 or u_next < p_next:
        rd = d
        if n_docs > 1:
          other = int(u_doc * (n_docs - 1))
          rd = docs[other + (other >= k)]
        r_first, r_end = doc_start[rd], doc_start[rd + 1]
        rs = r_first + int(u_start * (r_end - r_first))
        target_b = target - (sent_start[a_end] - sent_start[i])
        re = min(bisect.bisect_left(sent_start, sent_start[rs] + target_b, rs + 1,
                                    r_end + 1), r_end)
        row = (sent_start[i], sent_start[a_end], sent_start[rs], sent_start[re],
               d, rd, 1)
        i = a_end  # the chunk's unused sentences go back to the walk
      else:
        row = (sent_start[i], sent_start[a_end], sent_start[a_end], sent_start[j],
               d, d, 0)
        i = j
      # Empty sentences could leave a segment without pieces; such pairs are dropped.
      if row[1] > row[0] and row[3] > row[2]:
        rows.append(row)
        n_random += row[6]

  table = np.asarray(rows, np.int64).reshape(-1, 7)  # (n, 7)
  spans = table[:, :4].copy()
  truncate_pairs(spans, max_tokens, stream_rng(cfg.seed, epoch, TRUNCATE_STREAM))
  order = stream_rng(cfg.seed, epoch, ORDER_STREAM).permutation(len(table))
  return EpochPlan(spans=spans[order],
                    docs=table[order, 4:6].astype(np.int32),
                    label=table[order, 6].astype(np.int32))


def truncate_pairs(spans: np.ndarray, max_tokens: int, rng: np.random.Generator) -> None:
  """Shortens pairs to `max_tokens` in place, as BERT's truncate_seq_pair does.

  BERT removes one piece at a time from the longer segment (B on ties), each from
  its front or back with probability 1/2. The counts per segment follow from the
  lengths alone, and the number taken from the front is Binomial(cut, 1/2).
  """
  la = spans[:, 1] - spans[:, 0]
  lb = spans[:, 3] - spans[:, 2]
  excess = np.maximum(la + lb - max_tokens, 0)
  first = np.minimum(excess, np.abs(la - lb))  # evens out the longer side
  rest = excess - first  # then alternates, starting with B
  cut_a = np.where(la > lb, first, 0) + rest // 2
  cut_b = np.where(la > lb, 0, first) + (rest + 1) // 2
  front_a = rng.binomial(cut_a, 0.5)
  front_b = rng.binomial(cut_b, 0.5)
  spans[:, 0] += front_a
  spans[:, 1] -= cut_a - front_a
  spans[:, 2] += front_b
  spans[:, 3] -= cut_b - front_b
