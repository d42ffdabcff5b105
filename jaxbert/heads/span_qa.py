"""Extractive question answering: start and end logits over the pieces of each window
(feature) of a context; answers decoded over all windows of a question (SQuAD's
n-best search, jaxbert/data/qa.py) and scored by exact match and F1."""

from __future__ import annotations

import numpy as np
import optax

from jaxbert import metrics
from jaxbert.data import qa
from jaxbert.heads import Head, output, register, text
from jaxbert.model import BertForQuestionAnswering


class SpanQA(Head):
  kind = "qa"
  title = "QA"
  options = {"doc_stride": 128, "max_query_len": 64, "max_answer_len": 30, "n_best_size": 20,
             "null_score_threshold": 0.0, "article_split": None}
  label_keys = ("start_positions", "end_positions")

  def model(self, cfg, spec, pooling="cls"):
    return BertForQuestionAnswering(cfg)

  def num_outputs(self, spec) -> int:
    return 2

  def loss(self, outputs, batch):
    start = optax.softmax_cross_entropy_with_integer_labels(outputs["start_logits"],
                                                            batch["start_positions"])
    end = optax.softmax_cross_entropy_with_integer_labels(outputs["end_logits"],
                                                          batch["end_positions"])
    return (start.mean() + end.mean()) / 2, {}

  def normalize(self, raw, spec, where):
    answers = raw["answers"]
    impossible = bool(np.asarray(raw.get("is_impossible", False)).item())
    return {"id": text(raw["id"]), "title": text(raw.get("title", b"")),
            "question": text(raw["question"]), "context": text(raw["context"]),
            "answers": [text(t) for t in answers["text"]],
            "answer_starts": [int(s) for s in np.asarray(answers["answer_start"]).reshape(-1)],
            "is_impossible": impossible}

  def encode(self, examples, spec, tokenizer, max_seq_len, settings):
    return qa.prepare_qa(examples, tokenizer, max_seq_len, doc_stride=int(settings["doc_stride"]),
                         max_query_len=int(settings["max_query_len"]))

  def decode(self, task_data, outputs):
    n, t = task_data.num_features, task_data.max_seq_len
    start = output(outputs, "start_logits", (n, t))
    end = output(outputs, "end_logits", (n, t))
    o = task_data.options
    return qa.decode_qa(task_data.examples, task_data.metadata, start, end,
                        n_best_size=int(o["n_best_size"]),
                        max_answer_len=int(o["max_answer_len"]),
                        version_2=task_data.spec.version_2,
                        null_score_threshold=float(o["null_score_threshold"]))

  def score(self, task_data, decoded):
    predictions = {d["id"]: d["prediction"] for d in decoded}
    gold = {ex["id"]: [] if ex["is_impossible"] else ex["answers"]
            for ex in task_data.examples}
    return metrics.squad_scores(predictions, gold)

  def record(self, index, example, decoded, spec):
    return {"id": example["id"], "question": example["question"],
            "prediction": decoded["prediction"],
            "answers": [] if example["is_impossible"] else example["answers"]}


  input_formats = ("squad", "jsonl")

  def read_rows(self, path, fmt, task, pretokenized):
    from jaxbert.data import prediction_inputs as inputs  # pylint: disable=g-import-not-at-top
    return inputs.question_rows(path, fmt)

  def split_row(self, example):
    return example

  def blank_example(self, row):
    return row

  def predict_record(self, index, row, decoded, spec, columns):
    rec = {"id": row["id"], "question": row["question"], "answer": decoded["prediction"],
           "start": decoded["start"], "end": decoded["end"], "score": decoded["score"]}
    if spec.version_2:
      rec["null_score"] = decoded["null_score"]
    return rec


register(SpanQA())
