"""Fine-tuning task data: encoding, local files, decoding and scoring."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import shared_data_or_skip
from jaxbert.data import encoding
from jaxbert.data import qa
from jaxbert.data import scoring
from jaxbert.data import tasks
from jaxbert.errors import UserError


class FakeTokenizer:
  """Words (letter/digit runs or single symbols), lowercased, cut into pieces of
  at most 3 characters ("##" marks a continuation). Ids are handed out on first
  sight, so any text encodes."""

  pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
  lowercase = True

  def __init__(self):
    self._pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    self._ids = {p: i for i, p in enumerate(self._pieces)}

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def _id(self, piece: str) -> int:
    if piece not in self._ids:
      self._ids[piece] = len(self._pieces)
      self._pieces.append(piece)
    return self._ids[piece]

  def encode_with_offsets(self, text):
    ids, offsets = [], []
    for m in re.finditer(r"\w+|[^\w\s]", text):
      word = m.group().lower()
      for k in range(0, len(word), 3):
        ids.append(self._id(("##" if k else "") + word[k:k + 3]))
        offsets.append((m.start() + k, m.start() + min(k + 3, len(word))))
    return ids, offsets

  def encode(self, text):
    return self.encode_with_offsets(text)[0]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return " ".join(self._pieces[i] for i in ids).replace(" ##", "")

  def id_to_piece(self, i):
    return self._pieces[i]

  def word_start_table(self):
    return np.asarray([not p.startswith("##") for p in self._pieces])

  def save(self, directory):
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
      f.write("\n".join(self._pieces))

  def fingerprint(self):
    return hashlib.sha256("\n".join(self._pieces).encode()).hexdigest()


def _pieces(tok, row):
  return [tok.id_to_piece(int(i)) for i in row]


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def _gold_logits(task_data, big=10.0):
  """Outputs that put all mass on the targets (an oracle model)."""
  a, spec = task_data.arrays, task_data.spec
  t = task_data.max_seq_len
  if spec.kind == "classification":
    return {"logits": np.eye(spec.num_labels)[a["label"]] * big}
  if spec.kind == "regression":
    return {"predictions": a["label"].copy()}
  if spec.kind == "token_classification":
    return {"logits": np.eye(spec.num_labels)[a["token_labels"]] * big}
  return {"start_logits": np.eye(t)[a["start_positions"]] * big,
          "end_logits": np.eye(t)[a["end_positions"]] * big}


# ---------------------------------------------------------------------------
# Sentence (pair) encoding.


def test_pair_encoding_layout():
  tok = FakeTokenizer()
  arrays, truncated = encoding.encode_texts([("hello world", "foo"), ("hi", "")], tok, 12)
  assert truncated == 0
  assert _pieces(tok, arrays["input_ids"][0]) == [
      "[CLS]", "hel", "##lo", "wor", "##ld", "[SEP]", "foo", "[SEP]",
      "[PAD]", "[PAD]", "[PAD]", "[PAD]"]
  assert arrays["token_type_ids"][0].tolist() == [0] * 6 + [1] * 2 + [0] * 4
  assert arrays["attention_mask"][0].tolist() == [1] * 8 + [0] * 4
  # An empty second text still gets its [SEP].
  assert _pieces(tok, arrays["input_ids"][1][:4]) == ["[CLS]", "hi", "[SEP]", "[SEP]"]
  single, _ = encoding.encode_texts([("foo bar",)], tok, 6)
  assert _pieces(tok, single["input_ids"][0]) == [
      "[CLS]", "foo", "bar", "[SEP]", "[PAD]", "[PAD]"]
  assert single["token_type_ids"].sum() == 0
  assert all(v.dtype == np.int32 for v in arrays.values())


def test_longest_first_truncation_matches_bert_popping():
  def pop_loop(la, lb, budget):
    while la + lb > budget:
      if la > lb:
        la -= 1
      else:
        lb -= 1
    return la, lb

  for budget in range(1, 9):
    for la in range(10):
      for lb in range(10):
        assert encoding.truncated_lengths(la, lb, budget) == pop_loop(la, lb, budget)
  tok = FakeTokenizer()
  a = "a b c d e f g h"
  arrays, truncated = encoding.encode_texts([(a, "x y"), ("x y", a), ("p", "q")], tok, 9)
  assert truncated == 2
  # budget 6: the 8-word side is cut to 4, the 2-word side stays.
  assert _pieces(tok, arrays["input_ids"][0]) == [
      "[CLS]", "a", "b", "c", "d", "[SEP]", "x", "y", "[SEP]"]
  assert _pieces(tok, arrays["input_ids"][1]) == [
      "[CLS]", "x", "y", "[SEP]", "a", "b", "c", "d", "[SEP]"]


# ---------------------------------------------------------------------------
# Local TSV / CSV files.


def test_local_tsv_labels_from_train_and_slicing(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  _write(d / "train.tsv", "sentence\tlabel\nthe film is good\tpos\nit is bad\tneg\n"
         "a \"quoted\" one\tpos\nmeh\tneutral\n")
  _write(d / "dev.tsv", "sentence\tlabel\nso good\tpos\nso bad\tneg\n")
  tok = FakeTokenizer()
  kw = dict(tokenizer=tok, max_seq_len=16, data_dir=str(tmp_path / "tfds"),
            text_column="sentence")
  train = tasks.load_task(str(d), split="train", **kw)
  assert train.spec.kind == "classification"
  assert train.spec.label_names == ("neg", "neutral", "pos")  # sorted, from train
  assert train.arrays["label"].tolist() == [2, 0, 2, 1]
  assert train.examples[2]["texts"] == ('a "quoted" one',)  # TSV: quotes are text
  dev = tasks.load_task(str(d), split="dev", **kw)
  assert dev.spec.label_names == train.spec.label_names
  assert dev.arrays["label"].tolist() == [2, 0]
  half = tasks.load_task(str(d), split="train[:50%]", **kw)
  assert [ex["texts"][0] for ex in half.examples] == ["the film is good", "it is bad"]
  scores = scoring.evaluate(dev, _gold_logits(dev))
  assert scores == {"accuracy": 1.0, "mcc": 1.0}
  assert dev.spec.main_metric == "accuracy"
  # An edited file is prepared again, not read from the stale array_record.
  _write(d / "dev.tsv", "sentence\tlabel\nnew text\tneutral\n")
  dev = tasks.load_task(str(d), split="dev", **kw)
  assert dev.examples == [{"texts": ("new text",), "label": 1}]


def test_local_csv_pair_with_configured_labels_and_predictions(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  _write(d / "train.csv", 'q,a,gold\n"one, two",three,yes\nfour,five,no\nsix,seven,no\n')
  tok = FakeTokenizer()
  data = tasks.load_task(str(d), split="train", tokenizer=tok, max_seq_len=16,
                         data_dir=str(tmp_path / "tfds"), text_column="q",
                         text_pair_column="a", label_column="gold", labels=["no", "yes"])
  assert data.spec.label_names == ("no", "yes")
  assert data.spec.text_fields == ("text", "text_pair")
  assert data.arrays["label"].tolist() == [1, 0, 0]
  assert _pieces(tok, data.arrays["input_ids"][0][:6]) == [
      "[CLS]", "one", ",", "two", "[SEP]", "thr"]
  logits = np.asarray([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])  # last one wrong
  scores = scoring.evaluate(data, {"logits": logits})
  assert scores["accuracy"] == pytest.approx(2 / 3)
  assert scores["f1"] == pytest.approx(2 / 3)
  path = tmp_path / "out" / "predictions.jsonl"
  scoring.write_predictions(data, {"logits": logits}, str(path))
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["prediction"] for r in rows] == ["yes", "no", "yes"]
  assert rows[0]["text"] == "one, two" and rows[0]["text_pair"] == "three"
  assert rows[2]["label"] == "no"


def test_local_regression_and_unlabeled_test_file(tmp_path):
  d = tmp_path / "sts"
  d.mkdir()
  _write(d / "train.tsv", "text\ttext_pair\tlabel\na cat\ta dog\t1.5\nrain\tsun\t0.0\n"
         "one\ttwo\t4.25\n")
  _write(d / "test.tsv", "text\ttext_pair\nx\ty\n")
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=8, data_dir=str(tmp_path / "tfds"),
            kind="regression")
  train = tasks.load_task(str(d), split="train", **kw)
  assert train.arrays["label"].dtype == np.float32
  assert train.arrays["label"].tolist() == [1.5, 0.0, 4.25]
  assert scoring.evaluate(train, _gold_logits(train)) == {"spearman": 1.0, "pearson": 1.0}
  test = tasks.load_task(str(d), split="test", **kw)
  assert np.isnan(test.arrays["label"]).all()
  with pytest.raises(UserError, match="unlabeled"):
    scoring.evaluate(test, {"predictions": np.zeros(1)})
  scoring.write_predictions(test, {"predictions": np.ones(1)}, str(tmp_path / "p.jsonl"))
  row = json.loads((tmp_path / "p.jsonl").read_text())
  assert row["prediction"] == 1.0 and row["label"] is None


def test_tsv_wrong_column_count_names_file_and_line(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  path = _write(d / "train.tsv", "text\tlabel\nfine\ta\nbroken\ta\textra\n")
  with pytest.raises(UserError) as err:
    tasks.load_task(str(d), split="train", tokenizer=FakeTokenizer(), max_seq_len=8,
                    data_dir=str(tmp_path / "tfds"))
  assert f"{path}:3" in str(err.value)
  assert "3 tab-separated columns" in str(err.value)


def test_unknown_label_names_label_line_and_known_labels(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  _write(d / "train.tsv", "text\tlabel\nok\tpos\n")
  path = _write(d / "dev.tsv", "text\tlabel\nok\tpos\nhm\tmaybe\n")
  with pytest.raises(UserError) as err:
    tasks.load_task(str(d), split="dev", tokenizer=FakeTokenizer(), max_seq_len=8,
                    data_dir=str(tmp_path / "tfds"), labels=["neg", "pos"])
  msg = str(err.value)
  assert f"{path}:3" in msg and "'maybe'" in msg and "['neg', 'pos']" in msg


def test_missing_files_and_bad_options(tmp_path):
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=8, data_dir=str(tmp_path / "tfds"))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match=re.escape(missing)):
    tasks.load_task(missing, split="train", **kw)
  d = tmp_path / "task"
  d.mkdir()
  _write(d / "dev.tsv", "text\tlabel\nok\tpos\n")
  with pytest.raises(UserError, match="no file for split 'train'.*dev.tsv"):
    tasks.load_task(str(d), split="train", **kw)
  with pytest.raises(UserError, match="no train file to collect the label set"):
    tasks.load_task(str(d), split="dev", **kw)
  with pytest.raises(UserError, match="no column 'sentence'"):
    tasks.load_task(str(d), split="dev", text_column="sentence", labels=["pos"], **kw)
  with pytest.raises(UserError, match="apply to QA tasks only"):
    tasks.load_task(str(d), split="dev", labels=["pos"], doc_stride=4, **kw)
  with pytest.raises(UserError, match="do not apply to tsv"):
    tasks.load_task(str(d), split="dev", labels=["pos"], tag_column=2, **kw)
  with pytest.raises(UserError, match="unknown task"):
    tasks.tfds_task_spec("glue/nonesuch")


# ---------------------------------------------------------------------------
# NER (CoNLL files).

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

Extraordinarily RB B-ADVP O
Schwarzenegger NNP B-NP B-PER
visited VBD B-VP O
Westminster NNP B-NP B-LOC
"""


def test_conll_first_piece_labels_and_round_trip(tmp_path):
  d = tmp_path / "ner"
  d.mkdir()
  _write(d / "train.txt", CONLL)
  tok = FakeTokenizer()
  data = tasks.load_task(str(d), split="train", tokenizer=tok, max_seq_len=15,
                         data_dir=str(tmp_path / "tfds"))
  spec = data.spec
  assert spec.kind == "token_classification"
  assert spec.label_names == ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O")
  assert [ex["tokens"] for ex in data.examples][1] == ["Peter", "Blackburn"]
  row = data.arrays
  assert _pieces(tok, row["input_ids"][0][:8]) == [
      "[CLS]", "eu", "rej", "##ect", "##s", "ger", "##man", "cal"]
  # Tags on first pieces only: EU, rejects, German, call.
  assert row["token_label_weights"][0][:10].tolist() == [0, 1, 1, 0, 0, 1, 0, 1, 0, 0]
  first = np.nonzero(row["token_label_weights"][0])[0]
  assert [spec.label_names[k] for k in row["token_labels"][0][first]] == \
      ["B-ORG", "O", "B-MISC", "O"]
  assert row["token_label_weights"].dtype == np.float32
  # The last sentence has 5 + 5 + 3 + 4 pieces: Westminster does not fit.
  assert data.counts["truncated"] == 1
  assert data.counts["truncated_words"] == 1
  outputs = _gold_logits(data)
  decoded = scoring.decode_predictions(data, outputs)
  assert decoded[2]["prediction"] == ["O", "B-PER", "O", "O"]  # Westminster cut -> O
  scores = scoring.evaluate(data, outputs)
  assert scores["precision"] == 1.0
  assert scores["recall"] == pytest.approx(4 / 5)
  scoring.write_predictions(data, outputs, str(tmp_path / "ner.jsonl"))
  last = json.loads((tmp_path / "ner.jsonl").read_text().splitlines()[-1])
  assert last["tokens"][-1] == "Westminster"
  assert last["prediction"][-1] == "O" and last["label"][-1] == "B-LOC"
  roomy = tasks.load_task(str(d), split="train", tokenizer=tok, max_seq_len=32,
                          data_dir=str(tmp_path / "tfds"))
  assert roomy.counts["truncated"] == 0
  assert scoring.evaluate(roomy, _gold_logits(roomy))["f1"] == 1.0


def test_conll_errors_name_file_and_line(tmp_path):
  d = tmp_path / "ner"
  d.mkdir()
  path = _write(d / "train.txt", "EU NNP B-ORG\nrejects VBZ\n")
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=8, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(UserError, match=re.escape(f"{path}:2")):
    tasks.load_task(str(d), split="train", **kw)
  path = _write(d / "train.txt", "EU NNP B-ORG\nrejects VBZ B-VERB\n")
  with pytest.raises(UserError, match=re.escape(f"{path}:2") + ".*'B-VERB'"):
    tasks.load_task(str(d), split="train", labels=["O", "B-ORG"], **kw)


# ---------------------------------------------------------------------------
# Question answering (SQuAD JSON).

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
  return _write(d / "dev.json", json.dumps(doc))


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
  outputs = _gold_logits(data)
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
  outputs = _gold_logits(data)
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
  _write(d / "dev.json", json.dumps(doc))
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=16, data_dir=str(tmp_path / "tfds"))
  data = tasks.load_task(str(d), split="dev", **kw)
  # "cd" lies inside the pieces "abc" + "##def": the span covers both.
  assert scoring.decode_predictions(data, _gold_logits(data))[0]["prediction"] == "abcdef"
  path = _write(d / "dev.json", '{"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}')
  with pytest.raises(UserError, match=re.escape(path) + r".*paragraphs\[0\].*'context'"):
    tasks.load_task(str(d), split="dev", **kw)
  path = _write(d / "dev.json", '{"data": [\n}')
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


# ---------------------------------------------------------------------------
# Named tfds tasks.


def test_tfds_named_tasks_with_mock_data():
  tok = FakeTokenizer()
  with tfds.testing.mock_data(num_examples=6):
    mrpc = tasks.load_task("glue/mrpc", split="validation", tokenizer=tok, max_seq_len=24,
                           data_dir="/nonexistent")
    stsb = tasks.load_task("glue/stsb", split="train", tokenizer=tok,
                           max_seq_len=24, data_dir="/nonexistent")
  assert mrpc.spec.label_names == ("not_equivalent", "equivalent")
  assert mrpc.spec.main_metric == "f1"
  assert mrpc.arrays["input_ids"].shape == (6, 24)
  assert mrpc.arrays["token_type_ids"].max() == 1  # a pair
  assert scoring.evaluate(mrpc, _gold_logits(mrpc))["accuracy"] == 1.0
  assert stsb.spec.kind == "regression" and stsb.counts["examples"] == 6
  assert scoring.evaluate(stsb, _gold_logits(stsb))["pearson"] == pytest.approx(1.0)
  with pytest.raises(UserError, match="do not apply to the tfds task"):
    tasks.load_task("glue/sst2", split="train", tokenizer=tok, max_seq_len=8,
                    text_column="x")


def test_tfds_task_specs():
  spec = tasks.tfds_task_spec("glue/mnli")
  assert spec.eval_split == "validation_matched"
  assert spec.label_names == ("entailment", "neutral", "contradiction")
  spec = tasks.tfds_task_spec("conll2003")
  assert spec.kind == "token_classification" and spec.num_labels == 9
  assert spec.label_names[:3] == ("O", "B-PER", "I-PER")
  assert tasks.tfds_task_spec("glue/cola").main_metric == "mcc"
  assert tasks.tfds_task_spec("squad/v2.0").version_2


def test_shared_sst2_validation_slice():
  data_dir = shared_data_or_skip("tfds")
  data = tasks.load_task("glue/sst2", split="validation[:20]", tokenizer=FakeTokenizer(),
                         max_seq_len=64, data_dir=data_dir)
  assert data.counts["examples"] == 20
  raw = tfds.data_source("glue/sst2", split="validation", data_dir=data_dir)
  assert [ex["texts"][0] for ex in data.examples] == \
      [raw[i]["sentence"].decode("utf-8") for i in range(20)]
  assert set(data.arrays["label"].tolist()) == {0, 1}
  assert scoring.evaluate(data, _gold_logits(data)) == {"accuracy": 1.0}


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
