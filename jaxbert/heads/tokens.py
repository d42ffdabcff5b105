"""Token classification (NER): a tag per word, read at each word's first piece and
scored per entity (seqeval's rules, jaxbert/metrics.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from jaxbert import metrics
from jaxbert.data import encoding
from jaxbert.errors import UserError
from jaxbert.heads import Head, output, register, text
from jaxbert.model import BertForTokenClassification


class TokenClassification(Head):
  kind = "token_classification"
  title = "token classification"
  hf_architecture = "BertForTokenClassification"
  label_keys = ("token_labels", "token_label_weights")

  def model(self, cfg, spec, pooling="cls"):
    return BertForTokenClassification(cfg, spec.num_labels)

  def loss(self, outputs, batch):
    w = batch["token_label_weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], batch["token_labels"])
    denom = jnp.maximum(w.sum(), 1.0)
    acc = ((outputs["logits"].argmax(-1) == batch["token_labels"]) * w).sum() / denom
    return (ce * w).sum() / denom, {"token_accuracy": acc}

  def normalize(self, raw, spec, where):
    tokens = [text(t) for t in raw[spec.text_fields[0]]]
    tags = [int(t) for t in np.asarray(raw[spec.label_field]).reshape(-1)]
    if len(tokens) != len(tags):
      raise UserError(f"{where}: {len(tokens)} words but {len(tags)} tags")
    return {"tokens": tokens, "tags": tags} if tokens else None

  def encode(self, examples, spec, tokenizer, max_seq_len, settings):
    arrays, counts = encoding.encode_words(examples, tokenizer, max_seq_len)
    return arrays, {}, counts

  def decode(self, task_data, outputs):
    spec = task_data.spec
    logits = output(outputs, "logits",
                    (task_data.num_features, task_data.max_seq_len, spec.num_labels))
    weights = task_data.arrays["token_label_weights"]
    out = []
    for i, ex in enumerate(task_data.examples):
      first = np.nonzero(weights[i])[0]  # first piece of each word that fits
      tags = [spec.label_names[k] for k in np.argmax(logits[i, first], -1)]
      out.append({"prediction": tags + ["O"] * (len(ex["tokens"]) - len(tags))})
    return out

  def score(self, task_data, decoded):
    spec = task_data.spec
    gold = [[spec.label_names[k] for k in ex["tags"]] for ex in task_data.examples]
    scores = metrics.entity_scores(gold, [d["prediction"] for d in decoded])
    return {m: scores[m] for m in ("f1", "precision", "recall")}

  def record(self, index, example, decoded, spec):
    return {"index": index, "tokens": example["tokens"], "prediction": decoded["prediction"],
            "label": [spec.label_names[k] for k in example["tags"]]}


  input_formats = ("text", "conll")

  def read_rows(self, path, fmt, task, pretokenized):
    from jaxbert.data import prediction_inputs as inputs  # pylint: disable=g-import-not-at-top
    return inputs.sentence_rows(path, fmt, task, pretokenized)

  def split_row(self, example):
    from jaxbert.data import prediction_inputs as inputs  # pylint: disable=g-import-not-at-top
    return inputs.joined(example["tokens"])

  def blank_example(self, row):
    return {"tokens": row["tokens"], "tags": [0] * len(row["tokens"])}

  def predict_record(self, index, row, decoded, spec, columns):
    spans = row["spans"]
    entities = [{"type": kind, "text": row["text"][spans[a][0]:spans[b][1]],
                 "start": spans[a][0], "end": spans[b][1]}
                for kind, a, b in metrics.iob2_entities(decoded["prediction"])]
    return {"index": index, "text": row["text"], "tokens": row["tokens"],
            "tags": decoded["prediction"], "entities": entities}


register(TokenClassification())
