"""Early stopping on a validation metric: patience counted in evaluations."""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
  """Says stop once `patience` evaluations in a row have not improved on the best.

  An evaluation improves when its `metric` beats the best so far by more than
  `min_delta` (in the metric's direction). The state is host-side Python: every
  process sees the same metrics, so every process takes the same decision.
  """

  def __init__(self, metric: str, patience: int, min_delta: float = 0.0,
               higher_is_better: bool = True):
    if patience < 1:
      raise ValueError(f"patience must be >= 1, got {patience}")
    self.metric = metric
    self.patience = int(patience)
    self.min_delta = float(min_delta)
    self.higher_is_better = higher_is_better
    self.best: float | None = None
    self.best_step: int | None = None
    self.evals_without_improvement = 0

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Records the evaluation at `step`; True when training should stop now."""
    value = float(metrics[self.metric])
    sign = 1.0 if self.higher_is_better else -1.0
    if self.best is None or math.isnan(self.best) or (
        not math.isnan(value) and sign * (value - self.best) > self.min_delta):
      self.best, self.best_step = value, step
      self.evals_without_improvement = 0
    else:
      self.evals_without_improvement += 1
    return self.evals_without_improvement >= self.patience

  def to_dict(self) -> dict[str, Any]:
    return {"metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
            "best": self.best, "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement}
