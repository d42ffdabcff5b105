"""Model outputs for a whole fine-tuning split -> predictions, the task's metrics, a file.

`evaluate` scores outputs (rows in the split's order, see `decode_predictions`) with
the task's metrics; `write_predictions` writes them as JSON lines for people to read.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxbert import metrics
from jaxbert.data import qa
from jaxbert.data.tasks import TaskData
from jaxbert.errors import UserError

_LABEL_METRICS = {"accuracy": metrics.accuracy, "f1": metrics.binary_f1,
                  "mcc": metrics.matthews_corrcoef, "pearson": metrics.pearson,
                  "spearman": metrics.spearman}


def _output(outputs: dict[str, np.ndarray], key: str, shape: tuple) -> np.ndarray:
  if key not in outputs:
    raise ValueError(f"outputs lack {key!r} (have {sorted(outputs)})")
  x = np.asarray(outputs[key])
  if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
    raise ValueError(f"outputs[{key!r}] has shape {x.shape}, expected {shape} "
                     "(None = any)")
  return x


def decode_predictions(task_data: TaskData,
                       outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Per example its prediction: a label id, a float, word tags or answer text.

  outputs: "logits" (N, C) for classification, "predictions" (N,) for
  regression, "logits" (N, T, C) for NER, "start_logits"/"end_logits"
  (features, T) for QA; rows for the whole split in order.
  """
  spec, n, t = task_data.spec, task_data.num_features, task_data.max_seq_len
  if spec.kind == "classification":
    logits = _output(outputs, "logits", (n, spec.num_labels)).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [{"prediction": int(np.argmax(p)), "probabilities": p.tolist()} for p in probs]
  if spec.kind == "regression":
    preds = _output(outputs, "predictions", (n,))
    return [{"prediction": float(p)} for p in preds]
  if spec.kind == "token_classification":
    logits = _output(outputs, "logits", (n, t, spec.num_labels))
    weights = task_data.arrays["token_label_weights"]
    out = []
    for i, ex in enumerate(task_data.examples):
      first = np.nonzero(weights[i])[0]  # first piece of each word that fits
      tags = [spec.label_names[k] for k in np.argmax(logits[i, first], -1)]
      out.append({"prediction": tags + ["O"] * (len(ex["tokens"]) - len(tags))})
    return out
  start = _output(outputs, "start_logits", (n, t))
  end = _output(outputs, "end_logits", (n, t))
  o = task_data.options
  return qa.decode_qa(task_data.examples, task_data.metadata, start, end,
                      n_best_size=int(o["n_best_size"]),
                      max_answer_len=int(o["max_answer_len"]), version_2=spec.version_2,
                      null_score_threshold=float(o["null_score_threshold"]))


def evaluate(task_data: TaskData, outputs: dict[str, np.ndarray]) -> dict[str, float]:
  """The task's metrics (fractions in [0, 1]) for outputs over the whole split."""
  spec = task_data.spec
  decoded = decode_predictions(task_data, outputs)
  if spec.kind in ("classification", "regression"):
    labels = task_data.arrays["label"]
    if labels.size and (np.any(labels < 0) if spec.kind == "classification"
                        else np.any(np.isnan(labels))):
      raise UserError(f"{spec.name} split {task_data.split!r} has unlabeled examples; "
                      "it can be predicted but not evaluated")
    preds = np.asarray([d["prediction"] for d in decoded], labels.dtype).reshape(-1)
    return {m: _LABEL_METRICS[m](preds, labels) for m in spec.metrics}
  if spec.kind == "token_classification":
    gold = [[spec.label_names[k] for k in ex["tags"]] for ex in task_data.examples]
    scores = metrics.entity_scores(gold, [d["prediction"] for d in decoded])
    return {m: scores[m] for m in ("f1", "precision", "recall")}
  predictions = {d["id"]: d["prediction"] for d in decoded}
  gold = {ex["id"]: [] if ex["is_impossible"] else ex["answers"]
          for ex in task_data.examples}
  return metrics.squad_scores(predictions, gold)


def write_predictions(task_data: TaskData, outputs: dict[str, np.ndarray],
                      path: str) -> None:
  """Writes one JSON line per example: its input, prediction and gold answer."""
  spec = task_data.spec
  decoded = decode_predictions(task_data, outputs)
  lines = []
  for i, (ex, d) in enumerate(zip(task_data.examples, decoded)):
    if spec.kind in ("classification", "regression"):
      rec = {"index": i, **dict(zip(spec.text_fields, ex["texts"]))}
      if spec.kind == "classification":
        rec["prediction"] = spec.label_names[d["prediction"]]
        rec["label"] = spec.label_names[ex["label"]] if ex["label"] >= 0 else None
        rec["probabilities"] = [round(p, 5) for p in d["probabilities"]]
      else:
        rec["prediction"] = d["prediction"]
        rec["label"] = None if np.isnan(ex["label"]) else ex["label"]
    elif spec.kind == "token_classification":
      rec = {"index": i, "tokens": ex["tokens"], "prediction": d["prediction"],
             "label": [spec.label_names[k] for k in ex["tags"]]}
    else:
      rec = {"id": ex["id"], "question": ex["question"], "prediction": d["prediction"],
             "answers": [] if ex["is_impossible"] else ex["answers"]}
    lines.append(json.dumps(rec, ensure_ascii=False))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  os.replace(tmp, path)
