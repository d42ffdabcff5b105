"""Sentence (or sentence-pair) classification and regression: a head on the pooled
[CLS] output (or the mean over real pieces, head.pooling=mean)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from jaxbert import metrics
from jaxbert.data import encoding
from jaxbert.errors import UserError
from jaxbert.heads import Head, output, register, text
from jaxbert.model import BertForSequenceClassification

_LABEL_METRICS = {"accuracy": metrics.accuracy, "f1": metrics.binary_f1,
                  "mcc": metrics.matthews_corrcoef, "pearson": metrics.pearson,
                  "spearman": metrics.spearman}


class _Sentence(Head):
  label_keys = ("label",)
  label_dtype = np.int32

  def model(self, cfg, spec, pooling="cls"):
    return BertForSequenceClassification(cfg, self.num_outputs(spec), pooling)

  def normalize(self, raw, spec, where):
    label = np.asarray(raw[spec.label_field]).item() if spec.label_field in raw else None
    return {"texts": tuple(text(raw[f]) for f in spec.text_fields), "label": self.label(label)}

  def encode(self, examples, spec, tokenizer, max_seq_len, settings):
    arrays, truncated = encoding.encode_texts([ex["texts"] for ex in examples], tokenizer,
                                              max_seq_len)
    arrays["label"] = np.asarray([ex["label"] for ex in examples], self.label_dtype).reshape(-1)
    return arrays, {}, {"truncated": truncated}

  input_formats = ("tsv", "csv", "text")

  def read_rows(self, path, fmt, task, pretokenized):
    from jaxbert.data import prediction_inputs as inputs  # pylint: disable=g-import-not-at-top
    if fmt in ("tsv", "csv"):
      return inputs.table_rows(path, fmt, task)
    return inputs.text_line_rows(path, task)

  def split_row(self, example):
    return {"texts": example["texts"]}

  def blank_example(self, row):
    return {"texts": row["texts"], "label": self.label(None)}

  def score(self, task_data, decoded):
    spec, labels = task_data.spec, task_data.arrays["label"]
    if labels.size and self.unlabeled(labels):
      raise UserError(f"{spec.name} split {task_data.split!r} has unlabeled examples; "
                      "it can be predicted but not evaluated")
    preds = np.asarray([d["prediction"] for d in decoded], labels.dtype).reshape(-1)
    return {m: _LABEL_METRICS[m](preds, labels) for m in spec.metrics}


class Classification(_Sentence):
  kind = "classification"
  title = "classification"

  @staticmethod
  def label(value) -> int:
    return -1 if value is None else int(value)

  @staticmethod
  def unlabeled(labels) -> bool:
    return bool(np.any(labels < 0))

  def loss(self, outputs, batch):
    logits, label = outputs["logits"], batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
    return loss, {"accuracy": (logits.argmax(-1) == label).mean()}

  def decode(self, task_data, outputs):
    logits = output(outputs, "logits", (task_data.num_features, task_data.spec.num_labels))
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [{"prediction": int(np.argmax(p)), "probabilities": p.tolist()} for p in probs]

  def predict_record(self, index, row, decoded, spec, columns):
    return {"index": index, **dict(zip(columns, row["texts"])),
            "prediction": spec.label_names[decoded["prediction"]],
            "probabilities": dict(zip(spec.label_names, decoded["probabilities"]))}

  def record(self, index, example, decoded, spec) -> dict[str, Any]:
    names = spec.label_names
    return {"index": index, **dict(zip(spec.text_fields, example["texts"])),
            "prediction": names[decoded["prediction"]],
            "label": names[example["label"]] if example["label"] >= 0 else None,
            "probabilities": [round(p, 5) for p in decoded["probabilities"]]}


class Regression(_Sentence):
  kind = "regression"
  title = "regression"
  label_dtype = np.float32

  @staticmethod
  def label(value) -> float:
    return float("nan") if value is None else float(value)

  @staticmethod
  def unlabeled(labels) -> bool:
    return bool(np.any(np.isnan(labels)))

  def num_outputs(self, spec) -> int:
    return 1

  def loss(self, outputs, batch):
    loss = jnp.mean((outputs["logits"][:, 0] - batch["label"]) ** 2)
    return loss, {"mse": loss}

  def host_outputs(self, outputs):
    return {"predictions": outputs["logits"][:, 0]}

  def decode(self, task_data, outputs):
    preds = output(outputs, "predictions", (task_data.num_features,))
    return [{"prediction": float(p)} for p in preds]

  def record(self, index, example, decoded, spec):
    return {"index": index, **dict(zip(spec.text_fields, example["texts"])),
            "prediction": decoded["prediction"],
            "label": None if np.isnan(example["label"]) else example["label"]}

  def predict_record(self, index, row, decoded, spec, columns):
    return {"index": index, **dict(zip(columns, row["texts"])),
            "prediction": decoded["prediction"]}


register(Classification())
register(Regression())
