"""Question-answering task data: SQuAD JSON, context windows, answer decoding and scores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import shared_data_or_skip
from jaxbert.data import qa
from jaxbert.data import scoring
from jaxbert.data import tasks
from jaxbert.errors import UserError
from task_fakes import FakeTokenizer, gold_logits, write_file

FILLER = " ".join(f"word{i}" for i in range(40))
CONTEXT = f"Intro text. {FILLER} The capital of France is Paris, a city. {FILLER} End."


def _squad_json(tmp_path, v2=False):
  start = CONTEXT.index("Paris")
  qas = [{"id": "q1", "question": "What is the capital of France?",
          "answers": [{"text": "Paris", "answer_start": start},
                      {"text": "Paris, a city", "answer_start": start}]},
         {"id": "q2", "question": "How does it start?",
          "answers": [{"text": "Intro text", "answer_start": 0}]}]
  if v2:
    qas.append({"id": "q3", "question": "Who?", "answers": [], "is_impossible": True})
  doc = {"version": "test", "data": [
      {"title": "France", "paragraphs": [{"context": CONTEXT, "qas": qas}]},
      {"title": "Short", "paragraphs": [{"context": "Blue sky over the sea.", "qas": [
          {"id": "q4", "question": "What color?",
           "answers": [{"text": "Blue", "answer_start": 0}]}]}]}]}
  d = tmp_path / "squad"
  d.mkdir(exist_ok=True)
  return write_file(d / "dev.json", json.dumps(doc))


def test_qa_windows_and_gold_decoding(tmp_path):
  _squad_json(tmp_path)
  tok = FakeTokenizer()
  data = tasks.load_task(str(tmp_path / "squad"), split="dev", tokenizer=tok,
                         max_seq_len=32, data_dir=str(tmp_path / "tfds"), doc_stride=8,
                         max_query_len=8)
  assert data.spec.kind == "qa" and not data.spec.version_2
  ex_index = data.metadata["example_index"]
  assert data.counts["examples"] == 3
  assert data.counts["multi_window_examples"] == 2  # both questions on the long context
  assert data.num_features == len(ex_index) > 3
  a = data.arrays
  for f in range(data.num_features):
    cs, cl = data.metadata["context_start"][f], data.metadata["context_length"][f]
    assert a["input_ids"][f][0] == tok.cls_id and a["input_ids"][f][cs - 1] == tok.sep_id
    assert a["input_ids"][f][cs + cl] == tok.sep_id
    assert a["token_type_ids"][f].tolist() == [0] * cs + [1] * (cl + 1) + \
        [0] * (32 - cs - cl - 1)
    if a["start_positions"][f]:
      span = a["input_ids"][f][a["start_positions"][f]:a["end_positions"][f] + 1]
      assert tok.decode(span) == {0: "paris", 1: "intro text", 2: "blue"}[ex_index[f]]
  # Windows advance by doc_stride and together cover the context.
  q1 = np.nonzero(ex_index == 0)[0]
  starts = data.metadata["window_start"][q1]
  assert np.all(np.diff(starts) == 8)
  assert starts[-1] + data.metadata["context_length"][q1[-1]] == \
      len(data.metadata["context_offsets"][0])
  # Only some windows of q1 hold the answer; the others point at [CLS].
  assert 0 < np.count_nonzero(a["start_positions"][q1]) < len(q1)
  outputs = gold_logits(data)
  decoded = scoring.decode_predictions(data, outputs)
  assert [d["prediction"] for d in decoded] == ["Paris", "Intro text", "Blue"]
  assert scoring.evaluate(data, outputs) == {"exact_match": 1.0, "f1": 1.0}
  scoring.write_predictions(data, outputs, str(tmp_path / "qa.jsonl"))
  first = json.loads((tmp_path / "qa.jsonl").read_text().splitlines()[0])
  assert first["id"] == "q1" and first["prediction"] == "Paris"
  assert first["answers"] == ["Paris", "Paris, a city"]


def test_qa_decoding_limits_and_v2_null_answers(tmp_path):
  _squad_json(tmp_path, v2=True)
  data = tasks.load_task(str(tmp_path / "squad"), split="dev", tokenizer=FakeTokenizer(),
                         max_seq_len=32, data_dir=str(tmp_path / "tfds"), doc_stride=8,
                         max_query_len=8)
  assert data.spec.version_2
  outputs = gold_logits(data)
  assert [d["prediction"] for d in scoring.decode_predictions(data, outputs)][2] == ""
  scores = scoring.evaluate(data, outputs)
  assert scores["exact_match"] == 1.0 and scores["no_ans_exact_match"] == 1.0
  # A null score barely above the best span answers "" unless the threshold allows.
  q1 = np.nonzero(data.metadata["example_index"] == 0)[0]
  for f in q1:
    outputs["start_logits"][f, 0] = outputs["end_logits"][f, 0] = 10.5
  assert scoring.decode_predictions(data, outputs)[0]["prediction"] == ""
  data.options["null_score_threshold"] = 2.0
  assert scoring.decode_predictions(data, outputs)[0]["prediction"] == "Paris"
  # Spans longer than max_answer_len are never chosen.
  data.options["max_answer_len"] = 1
  assert scoring.decode_predictions(data, outputs)[1]["prediction"] != "Intro text"


def test_qa_answer_inside_a_piece_and_bad_json(tmp_path):
  d = tmp_path / "squad"
  d.mkdir()
  doc = {"data": [{"title": "t", "paragraphs": [{"context": "abcdef ghi", "qas": [
      {"id": "x", "question": "q", "answers": [{"text": "cd", "answer_start": 2}]}]}]}]}
  write_file(d / "dev.json", json.dumps(doc))
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=16, data_dir=str(tmp_path / "tfds"))
  data = tasks.load_task(str(d), split="dev", **kw)
  # "cd" lies inside the pieces "abc" + "##def": the span covers both.
  assert scoring.decode_predictions(data, gold_logits(data))[0]["prediction"] == "abcdef"
  path = write_file(d / "dev.json", '{"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}')
  with pytest.raises(UserError, match=re.escape(path) + r".*paragraphs\[0\].*'context'"):
    tasks.load_task(str(d), split="dev", **kw)
  path = write_file(d / "dev.json", '{"data": [\n}')
  with pytest.raises(UserError, match=re.escape(path) + ":2: invalid JSON"):
    tasks.load_task(str(d), split="dev", **kw)


def test_article_split_is_disjoint_and_complete():
  titles = ["a", "b", "a", "c", "b", "d", "a", "c", "e", "e"]
  first = qa.article_split_indices(titles, (0.0, 0.6))
  rest = qa.article_split_indices(titles, (0.6, 1.0))
  assert sorted(first.tolist() + rest.tolist()) == list(range(len(titles)))
  assert not {titles[i] for i in first} & {titles[i] for i in rest}
  # Articles in first-appearance order a(3) b(2) c(2) d(1) e(2): a, b, c start
  # at 0, .3, .5 (< .6); d and e at .7 and .8.
  assert {titles[i] for i in first} == {"a", "b", "c"}
  with pytest.raises(UserError, match="article_split"):
    qa.article_split_indices(titles, (0.8, 0.2))


def test_article_split_option_through_load_task(tmp_path):
  _squad_json(tmp_path)
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=32, data_dir=str(tmp_path / "tfds"))
  head = tasks.load_task(str(tmp_path / "squad"), split="dev", article_split=(0.0, 0.5),
                         **kw)
  tail = tasks.load_task(str(tmp_path / "squad"), split="dev", article_split=(0.5, 1.0),
                         **kw)
  assert [ex["id"] for ex in head.examples] == ["q1", "q2"]
  assert [ex["id"] for ex in tail.examples] == ["q4"]
  assert head.counts["articles"] == tail.counts["articles"] == 1


def test_shared_squad_slicing_cuts_articles_but_article_split_does_not():
  source = tfds.data_source("squad/v1.1", split="validation",
                            data_dir=shared_data_or_skip("tfds"))
  titles = [r["title"] for r in source.__getitems__(list(range(len(source))))]
  cut = int(0.8 * len(titles))
  # tfds stores the questions shuffled: plain slicing shares articles.
  assert set(titles[:cut]) & set(titles[cut:])
  head = qa.article_split_indices(titles, (0.0, 0.8))
  tail = qa.article_split_indices(titles, (0.8, 1.0))
  assert not {titles[i] for i in head} & {titles[i] for i in tail}
  assert len(head) + len(tail) == len(titles)
  assert 0.75 < len(head) / len(titles) < 0.85
