"""Masked-LM masking: which pieces an example predicts and what the model sees there.

BERT's rule: `mask_prob` of an example's maskable pieces (at most
`max_predictions_per_seq`) are predicted; of those, `mask_token_prob` show [MASK],
`random_token_prob` a random piece, and the rest stay unchanged. With `whole_word`,
the pieces of a word are chosen together. Special pieces are never predicted.
"""

from __future__ import annotations

import numpy as np


class Masker:
  """Draws an example's masked-LM predictions from a numpy Generator."""

  def __init__(self, cfg, *, vocab_size: int, special_ids, mask_id: int,
               word_start: np.ndarray | None = None,
               random_ids: np.ndarray | None = None):
    """Args:

      cfg: a PretrainDataConfig (max_predictions_per_seq, mask_prob, whole_word,
        mask_token_prob, random_token_prob).
      vocab_size, special_ids, mask_id: the tokenizer's vocabulary size, the ids
        that are never predicted, and [MASK].
      word_start: bool[vocab_size], True where a piece begins a word (required
        for cfg.whole_word).
      random_ids: ids that may replace a masked piece; default: every id that is
        not special.
    """
    self.cfg = cfg
    self.mask_id = mask_id
    # Specials inside the text (e.g. [UNK]) are never masked or predicted.
    self.maskable = np.ones(vocab_size, bool)
    self.maskable[np.asarray(special_ids)] = False
    if random_ids is None:
      random_ids = np.flatnonzero(self.maskable)
    self.random_ids = np.asarray(random_ids, np.int32)
    if self.random_ids.size == 0 or np.any(~self.maskable[self.random_ids]):
      raise ValueError("random_ids must be non-empty and hold no special ids")
    if word_start is None:
      if cfg.whole_word:
        raise ValueError("whole_word masking needs the tokenizer's word_start table")
    else:
      word_start = np.asarray(word_start, bool)
      if word_start.shape != (vocab_size,):
        raise ValueError(f"word_start has shape {word_start.shape}, "
                         f"expected ({vocab_size},)")
    self.word_start = word_start

  def mask(self, ids: np.ndarray, content: np.ndarray,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Masks `ids` (int32[T], changed in place) among the positions where `content`.

    Returns int32 masked_positions and masked_ids, float32 masked_weights, each of
    length max_predictions_per_seq, zero-padded (weight 0) after the predictions.
    """
    cfg = self.cfg
    candidates = np.flatnonzero(content & self.maskable[ids])
    positions = self._choose(rng, ids, candidates)
    masked_ids = ids[positions]
    draw = rng.random(len(positions))
    replacement = self.random_ids[rng.integers(len(self.random_ids), size=len(positions))]
    mask_token = draw < cfg.mask_token_prob
    random_token = ~mask_token & (draw < cfg.mask_token_prob + cfg.random_token_prob)
    ids[positions[mask_token]] = self.mask_id
    ids[positions[random_token]] = replacement[random_token]

    p, m = cfg.max_predictions_per_seq, len(positions)
    out = {"masked_positions": np.zeros(p, np.int32), "masked_ids": np.zeros(p, np.int32),
           "masked_weights": np.zeros(p, np.float32)}
    out["masked_positions"][:m] = positions
    out["masked_ids"][:m] = masked_ids
    out["masked_weights"][:m] = 1.0
    return out

  def _choose(self, rng: np.random.Generator, ids: np.ndarray,
              candidates: np.ndarray) -> np.ndarray:
    """Sorted positions to predict, drawn from `candidates` (sorted)."""
    cfg = self.cfg
    n = len(candidates)
    if n == 0:
      return candidates
    # Stochastic rounding keeps the expected share at exactly mask_prob.
    budget = min(cfg.max_predictions_per_seq, n,
                 max(1, int(n * cfg.mask_prob + rng.random())))
    if not cfg.whole_word:
      return np.sort(rng.choice(candidates, budget, replace=False))

    # A word is a word-start piece and the non-start pieces after it; a word never
    # continues across a segment boundary or a piece that cannot be masked.
    starts = self.word_start[ids[candidates]]
    starts[0] = True
    starts[1:] |= np.diff(candidates) != 1
    bounds = np.append(np.flatnonzero(starts), n).tolist()
    chosen = []
    total = 0
    for w in rng.permutation(len(bounds) - 1).tolist():
      if total >= budget:
        break
      size = bounds[w + 1] - bounds[w]
      if total + size > budget:
        continue  # as in BERT: skip words that would overshoot the budget
      chosen.append(candidates[bounds[w]:bounds[w + 1]])
      total += size
    return np.sort(np.concatenate(chosen))
