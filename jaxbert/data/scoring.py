"""Model outputs for a whole fine-tuning split -> predictions, the task's metrics, a file.

`evaluate` scores outputs (rows in the split's order, see `decode_predictions`) with
the task's metrics; `write_predictions` writes them as JSON lines for people to read.
What each does for a kind of task is that kind's head (jaxbert/heads/).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxbert import heads
from jaxbert.data.tasks import TaskData


def decode_predictions(task_data: TaskData,
                       outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Per example its prediction: a label id, a float, word tags or answer text.

  outputs: "logits" (N, C) for classification, "predictions" (N,) for
  regression, "logits" (N, T, C) for NER, "start_logits"/"end_logits"
  (features, T) for QA; rows for the whole split in order.
  """
  return heads.get(task_data.spec.kind).decode(task_data, outputs)


def evaluate(task_data: TaskData, outputs: dict[str, np.ndarray]) -> dict[str, float]:
  """The task's metrics (fractions in [0, 1]) for outputs over the whole split."""
  head = heads.get(task_data.spec.kind)
  return head.score(task_data, head.decode(task_data, outputs))


def write_predictions(task_data: TaskData, outputs: dict[str, np.ndarray],
                      path: str) -> None:
  """Writes one JSON line per example: its input, prediction and gold answer."""
  spec = task_data.spec
  head = heads.get(spec.kind)
  decoded = head.decode(task_data, outputs)
  lines = [json.dumps(head.record(i, ex, d, spec), ensure_ascii=False)
           for i, (ex, d) in enumerate(zip(task_data.examples, decoded))]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  os.replace(tmp, path)
