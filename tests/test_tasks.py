"""Fine-tuning task data: encoding, local files, named tfds tasks, decoding and scoring.

Question answering is in test_qa_tasks.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import shared_data_or_skip
from jaxbert.data import encoding
from jaxbert.data import scoring
from jaxbert.data import tasks
from jaxbert.errors import UserError
from task_fakes import FakeTokenizer, gold_logits, piece_names, write_file


# ---------------------------------------------------------------------------
# Sentence (pair) encoding.


def test_pair_encoding_layout():
  tok = FakeTokenizer()
  arrays, truncated = encoding.encode_texts([("hello world", "foo"), ("hi", "")], tok, 12)
  assert truncated == 0
  assert piece_names(tok, arrays["input_ids"][0]) == [
      "[CLS]", "hel", "##lo", "wor", "##ld", "[SEP]", "foo", "[SEP]",
      "[PAD]", "[PAD]", "[PAD]", "[PAD]"]
  assert arrays["token_type_ids"][0].tolist() == [0] * 6 + [1] * 2 + [0] * 4
  assert arrays["attention_mask"][0].tolist() == [1] * 8 + [0] * 4
  # An empty second text still gets its [SEP].
  assert piece_names(tok, arrays["input_ids"][1][:4]) == ["[CLS]", "hi", "[SEP]", "[SEP]"]
  single, _ = encoding.encode_texts([("foo bar",)], tok, 6)
  assert piece_names(tok, single["input_ids"][0]) == [
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
  assert piece_names(tok, arrays["input_ids"][0]) == [
      "[CLS]", "a", "b", "c", "d", "[SEP]", "x", "y", "[SEP]"]
  assert piece_names(tok, arrays["input_ids"][1]) == [
      "[CLS]", "x", "y", "[SEP]", "a", "b", "c", "d", "[SEP]"]


# ---------------------------------------------------------------------------
# Local TSV / CSV files.


def test_local_tsv_labels_from_train_and_slicing(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  write_file(d / "train.tsv", "sentence\tlabel\nthe film is good\tpos\nit is bad\tneg\n"
             "a \"quoted\" one\tpos\nmeh\tneutral\n")
  write_file(d / "dev.tsv", "sentence\tlabel\nso good\tpos\nso bad\tneg\n")
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
  scores = scoring.evaluate(dev, gold_logits(dev))
  assert scores == {"accuracy": 1.0, "mcc": 1.0}
  assert dev.spec.main_metric == "accuracy"
  # An edited file is prepared again, not read from the stale array_record.
  write_file(d / "dev.tsv", "sentence\tlabel\nnew text\tneutral\n")
  dev = tasks.load_task(str(d), split="dev", **kw)
  assert dev.examples == [{"texts": ("new text",), "label": 1}]


def test_local_csv_pair_with_configured_labels_and_predictions(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  write_file(d / "train.csv", 'q,a,gold\n"one, two",three,yes\nfour,five,no\nsix,seven,no\n')
  tok = FakeTokenizer()
  data = tasks.load_task(str(d), split="train", tokenizer=tok, max_seq_len=16,
                         data_dir=str(tmp_path / "tfds"), text_column="q",
                         text_pair_column="a", label_column="gold", labels=["no", "yes"])
  assert data.spec.label_names == ("no", "yes")
  assert data.spec.text_fields == ("text", "text_pair")
  assert data.arrays["label"].tolist() == [1, 0, 0]
  assert piece_names(tok, data.arrays["input_ids"][0][:6]) == [
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
  write_file(d / "train.tsv", "text\ttext_pair\tlabel\na cat\ta dog\t1.5\nrain\tsun\t0.0\n"
             "one\ttwo\t4.25\n")
  write_file(d / "test.tsv", "text\ttext_pair\nx\ty\n")
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=8, data_dir=str(tmp_path / "tfds"),
            kind="regression")
  train = tasks.load_task(str(d), split="train", **kw)
  assert train.arrays["label"].dtype == np.float32
  assert train.arrays["label"].tolist() == [1.5, 0.0, 4.25]
  assert scoring.evaluate(train, gold_logits(train)) == {"spearman": 1.0, "pearson": 1.0}
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
  path = write_file(d / "train.tsv", "text\tlabel\nfine\ta\nbroken\ta\textra\n")
  with pytest.raises(UserError) as err:
    tasks.load_task(str(d), split="train", tokenizer=FakeTokenizer(), max_seq_len=8,
                    data_dir=str(tmp_path / "tfds"))
  assert f"{path}:3" in str(err.value)
  assert "3 tab-separated columns" in str(err.value)


def test_unknown_label_names_label_line_and_known_labels(tmp_path):
  d = tmp_path / "task"
  d.mkdir()
  write_file(d / "train.tsv", "text\tlabel\nok\tpos\n")
  path = write_file(d / "dev.tsv", "text\tlabel\nok\tpos\nhm\tmaybe\n")
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
  write_file(d / "dev.tsv", "text\tlabel\nok\tpos\n")
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
  write_file(d / "train.txt", CONLL)
  tok = FakeTokenizer()
  data = tasks.load_task(str(d), split="train", tokenizer=tok, max_seq_len=15,
                         data_dir=str(tmp_path / "tfds"))
  spec = data.spec
  assert spec.kind == "token_classification"
  assert spec.label_names == ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O")
  assert [ex["tokens"] for ex in data.examples][1] == ["Peter", "Blackburn"]
  row = data.arrays
  assert piece_names(tok, row["input_ids"][0][:8]) == [
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
  outputs = gold_logits(data)
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
  assert scoring.evaluate(roomy, gold_logits(roomy))["f1"] == 1.0


def test_conll_errors_name_file_and_line(tmp_path):
  d = tmp_path / "ner"
  d.mkdir()
  path = write_file(d / "train.txt", "EU NNP B-ORG\nrejects VBZ\n")
  kw = dict(tokenizer=FakeTokenizer(), max_seq_len=8, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(UserError, match=re.escape(f"{path}:2")):
    tasks.load_task(str(d), split="train", **kw)
  path = write_file(d / "train.txt", "EU NNP B-ORG\nrejects VBZ B-VERB\n")
  with pytest.raises(UserError, match=re.escape(f"{path}:2") + ".*'B-VERB'"):
    tasks.load_task(str(d), split="train", labels=["O", "B-ORG"], **kw)


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
  assert scoring.evaluate(mrpc, gold_logits(mrpc))["accuracy"] == 1.0
  assert stsb.spec.kind == "regression" and stsb.counts["examples"] == 6
  assert scoring.evaluate(stsb, gold_logits(stsb))["pearson"] == pytest.approx(1.0)
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
  assert scoring.evaluate(data, gold_logits(data)) == {"accuracy": 1.0}
