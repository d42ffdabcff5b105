"""`jaxbert predict` on tiny fine-tuned runs: pair classification, NER and QA.

Each run fine-tunes the session's tiny pre-training run on a small local task; predicting
its validation file must give what the run's evaluation wrote to predictions.jsonl.
"""

import json
import os

import jax
import numpy as np
import pytest

from jaxbert import cli
from jaxbert.data import scoring
from jaxbert.errors import UserError
from jaxbert.metrics import iob2_entities
from jaxbert.predict import predict_file
from jaxbert.run import run
from test_finetune_e2e import tiny_finetune_config

WORDS = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "the", "of", "and"]
NAMES = ["Kalo", "Miru", "Sati", "Vone"]


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def _pair_task(folder, rng):
  """Do two sentences share a word? Columns named as a user's file might name them."""
  for split, n in (("train", 48), ("dev", 21)):
    rows = ["first\tsecond\tanswer"]
    for _ in range(n):
      a = list(rng.choice(WORDS, rng.integers(3, 7)))
      b = list(rng.choice(WORDS, rng.integers(3, 7)))
      rows.append(f"{' '.join(a)}\t{' '.join(b)}\t{'same' if set(a) & set(b) else 'other'}")
    _write(os.path.join(folder, f"{split}.tsv"), "\n".join(rows) + "\n")
  return folder


def _ner_sentence(rng):
  words, tags = [], []
  for _ in range(rng.integers(3, 8)):
    if rng.random() < 0.3:
      words += [str(rng.choice(NAMES)), str(rng.choice(NAMES))]
      tags += ["B-PER", "I-PER"] if rng.random() < 0.5 else ["B-LOC", "O"]
    else:
      words.append(str(rng.choice(WORDS)))
      tags.append("O")
  return words, tags


def _ner_task(folder, rng):
  for split, n in (("train", 40), ("dev", 13)):
    blocks = []
    for _ in range(n):
      words, tags = _ner_sentence(rng)
      blocks.append("\n".join(f"{w} {t}" for w, t in zip(words, tags)))
    _write(os.path.join(folder, f"{split}.conll"), "\n\n".join(blocks) + "\n")
  return folder


def _qa_task(folder, rng):
  for split, n in (("train", 40), ("dev", 9)):
    paragraphs = []
    for i in range(n):
      name = str(rng.choice(NAMES))
      before = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
      context = f"{before} {name} lives in {' '.join(rng.choice(WORDS, 3))}."
      paragraphs.append({"context": context, "qas": [{
          "id": f"{split}{i}", "question": "who lives there?",
          "answers": [{"text": name, "answer_start": len(before) + 1}]}]})
    doc = {"data": [{"title": "t", "paragraphs": paragraphs}]}
    _write(os.path.join(folder, f"{split}.json"), json.dumps(doc))
  return folder


@pytest.fixture(scope="module")
def runs(reference_run, tmp_path_factory):
  """One tiny fine-tuned run per task kind, made on first use."""
  pre_dir, _ = reference_run
  root = tmp_path_factory.mktemp("predict")
  rng = np.random.default_rng(0)
  made = {}

  def get(kind):
    if kind not in made:
      task = {"pair": _pair_task, "ner": _ner_task, "qa": _qa_task}[kind](str(root / kind), rng)
      c = tiny_finetune_config(pre_dir, task)
      if kind == "pair":
        c.data.options.update(text_column="first", text_pair_column="second",
                              label_column="answer")
      if kind == "qa":
        c.data.options.update(doc_stride=6)
      workdir = str(root / f"run_{kind}")
      run(c, workdir, devices=jax.devices()[:1])
      made[kind] = (workdir, task)
    return made[kind]

  return get


def _lines(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_pair_classification_equals_evaluation_and_reads_text_lines(runs, tmp_path, capsys):
  workdir, task = runs("pair")
  out = str(tmp_path / "preds.jsonl")
  code = cli.main(["predict", "--checkpoint", workdir, "--input", os.path.join(task, "dev.tsv"),
                   "--output", out, "--batch-size", "5"])
  assert code == 0 and "wrote 21 classification predictions" in capsys.readouterr().out
  got, want = _lines(out), _lines(os.path.join(workdir, "predictions.jsonl"))
  assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
  assert [[round(p, 5) for p in g["probabilities"].values()] for g in got] == \
      [w["probabilities"] for w in want]
  assert list(got[0]["probabilities"]) == ["other", "same"]  # the run's label names
  assert all(abs(sum(g["probabilities"].values()) - 1) < 1e-6 for g in got)
  # The same pairs as lines "first<TAB>second", without header or labels.
  rows = open(os.path.join(task, "dev.tsv")).read().splitlines()[1:]
  lines = _write(str(tmp_path / "pairs.txt"), "".join(r.rsplit("\t", 1)[0] + "\n" for r in rows))
  report = predict_file(workdir, lines, str(tmp_path / "p2.jsonl"), progress=False)
  assert [g["prediction"] for g in _lines(report.output)] == [w["prediction"] for w in want]
  # --split: the run's own dev split, and an unlabeled test file beside it.
  assert cli.main(["predict", "--checkpoint", workdir, "--split", "dev", "--output",
                   str(tmp_path / "dev.jsonl")]) == 0
  assert _lines(str(tmp_path / "dev.jsonl")) == got
  _write(os.path.join(task, "test.tsv"), "second\tfirst\n" + "".join(
      "\t".join(r.split("\t")[1::-1]) + "\n" for r in rows))
  test = _lines(predict_file(workdir, None, str(tmp_path / "t.jsonl"), split="test",
                             progress=False).output)
  assert [t["prediction"] for t in test] == [w["prediction"] for w in want]
  assert test[0]["first"] == got[0]["first"] and test[0]["second"] == got[0]["second"]
  # A checkpoint step folder works as well as the workdir.
  step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  predict_file(os.path.join(workdir, "checkpoints", str(step)), lines, str(tmp_path / "p3.jsonl"),
               progress=False)
  assert _lines(str(tmp_path / "p3.jsonl")) == _lines(report.output)


@pytest.mark.parametrize("name, text, fmt, match", [
    ("single.txt", "one text alone\n", None, r"pairs .*first<TAB>second"),
    ("cols.tsv", "text\tlabel\na\tb\n", None, r"no column 'first' in the header"),
    ("q.jsonl", '{"question": "q", "context": "c"}\n', None, r"a jsonl file does not fit"),
    ("x.txt", "a\tb\n", "parquet", r"--format 'parquet' is not one of"),
])
def test_inputs_that_do_not_fit_the_task(runs, tmp_path, capsys, name, text, fmt, match):
  workdir, _ = runs("pair")
  path = _write(str(tmp_path / name), text)
  with pytest.raises(UserError, match=match):
    predict_file(workdir, path, str(tmp_path / "o.jsonl"), input_fmt=fmt, progress=False)
  if fmt is None:  # (argparse itself refuses an unknown --format)
    assert cli.main(["predict", "--checkpoint", workdir, "--input", path, "--output",
                     str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("jaxbert: error: ")
  assert not os.path.exists(tmp_path / "o.jsonl")


def test_a_pretraining_run_is_refused(reference_run, tmp_path):
  pre_dir, _ = reference_run
  path = _write(str(tmp_path / "in.txt"), "hello\n")
  with pytest.raises(UserError, match="is a 'pretrain' run; this needs a fine-tuned"):
    predict_file(pre_dir, path, str(tmp_path / "o.jsonl"), progress=False)
  with pytest.raises(UserError, match="no such file"):
    predict_file(str(tmp_path / "nope"), path, str(tmp_path / "o.jsonl"), progress=False)


def test_ner_equals_evaluation_and_gives_entity_offsets(runs, tmp_path):
  workdir, task = runs("ner")
  report = predict_file(workdir, os.path.join(task, "dev.conll"), str(tmp_path / "ner.jsonl"),
                        progress=False)
  got, want = _lines(report.output), _lines(os.path.join(workdir, "predictions.jsonl"))
  assert [g["tags"] for g in got] == [w["prediction"] for w in want]
  assert [g["tokens"] for g in got] == [w["tokens"] for w in want]
  split = _lines(predict_file(workdir, None, str(tmp_path / "s.jsonl"), split="dev",
                              progress=False).output)
  assert split == got
  # A .txt file in CoNLL layout (as CoNLL-2003's valid.txt) is read as CoNLL.
  txt = _write(str(tmp_path / "valid.txt"), open(os.path.join(task, "dev.conll")).read())
  assert _lines(predict_file(workdir, txt, str(tmp_path / "v.jsonl"), progress=False).output) == got
  # The same sentences as raw text lines: the same words, so the same tags; entities
  # carry character offsets into the line.
  path = _write(str(tmp_path / "raw.txt"), "".join(" ".join(w["tokens"]) + "\n" for w in want))
  raw = _lines(predict_file(workdir, path, str(tmp_path / "raw.jsonl"), progress=False).output)
  assert [r["tags"] for r in raw] == [g["tags"] for g in got]
  for r in raw:
    assert [(e["type"], e["text"]) for e in r["entities"]] == \
        [(k, " ".join(r["tokens"][a:b + 1])) for k, a, b in iob2_entities(r["tags"])]
    assert all(r["text"][e["start"]:e["end"]] == e["text"] for e in r["entities"])
  # Words are split at punctuation unless the text is pretokenized.
  path = _write(str(tmp_path / "punct.txt"), "Kalo, the vo-ka.\n")
  for pretokenized, words in ((False, ["Kalo", ",", "the", "vo", "-", "ka", "."]),
                              (True, ["Kalo,", "the", "vo-ka."])):
    out = predict_file(workdir, path, str(tmp_path / "p.jsonl"), pretokenized=pretokenized,
                       progress=False)
    assert _lines(out.output)[0]["tokens"] == words


def test_qa_equals_evaluation_and_reads_json_lines(runs, tmp_path):
  workdir, task = runs("qa")
  report = predict_file(workdir, os.path.join(task, "dev.json"), str(tmp_path / "qa.jsonl"),
                        progress=False)
  got, want = _lines(report.output), _lines(os.path.join(workdir, "predictions.jsonl"))
  assert [(g["id"], g["answer"]) for g in got] == [(w["id"], w["prediction"]) for w in want]
  doc = json.load(open(os.path.join(task, "dev.json")))
  contexts = {q["id"]: p["context"] for p in doc["data"][0]["paragraphs"] for q in p["qas"]}
  for g in got:
    assert contexts[g["id"]][g["start"]:g["end"]] == g["answer"]
    assert isinstance(g["score"], float)
  path = _write(str(tmp_path / "q.jsonl"), "".join(
      json.dumps({"id": i, "question": "who lives there?", "context": c}) + "\n"
      for i, c in contexts.items()))
  again = _lines(predict_file(workdir, path, str(tmp_path / "q_out.jsonl"), progress=False).output)
  assert [(a["id"], a["answer"], a["start"]) for a in again] == \
      [(g["id"], g["answer"], g["start"]) for g in got]
  bad = _write(str(tmp_path / "bad.jsonl"), '{"question": "q"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:1: needs the text field\(s\) \['context'\]"):
    predict_file(workdir, bad, str(tmp_path / "o.jsonl"), progress=False)


def test_export_carries_label_names_and_transformers_pipeline_agrees(runs, tmp_path):
  """export-hf of the sentencepiece-tokenized run: config.json names the task's labels, and
  transformers' text-classification pipeline labels the dev pairs as jaxbert predict does."""
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  from jaxbert.hf import export_hf
  workdir, task = runs("pair")
  out = str(tmp_path / "export")
  export_hf(workdir, out)
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["id2label"] == {"0": "other", "1": "same"}
  assert config["label2id"] == {"other": 0, "same": 1}
  ours = _lines(predict_file(workdir, os.path.join(task, "dev.tsv"), str(tmp_path / "p.jsonl"),
                             progress=False).output)
  pipe = transformers.pipeline("text-classification", model=out, device="cpu")
  theirs = pipe([{"text": r["first"], "text_pair": r["second"]} for r in ours])
  assert [t["label"] for t in theirs] == [r["prediction"] for r in ours]
  np.testing.assert_allclose([t["score"] for t in theirs],
                             [r["probabilities"][r["prediction"]] for r in ours], atol=1e-4)


class _SumModel:
  """Stands in for a fine-tuned regression model: the output is the sum of the real ids."""

  def apply(self, variables, batch, deterministic):
    del variables, deterministic
    return {"logits": (batch["input_ids"] * batch["attention_mask"]).sum(-1, keepdims=True) * 1.0}


def test_regression_rows_batches_and_decoding(tmp_path):
  """Every row predicted once, in input order, whatever the batch size; no probabilities."""
  from jaxbert.data.tasks import TaskSpec
  from jaxbert.predict import _records, encode, model_outputs, read_inputs
  from jaxbert.run_task import RunTask
  from task_fakes import FakeTokenizer
  spec = TaskSpec(name="t", kind="regression", num_labels=1, label_names=(),
                  text_fields=("text",), label_field="label", main_metric="spearman",
                  higher_is_better=True, metrics=("spearman",))
  task = RunTask(spec=spec, options={}, file_options={}, max_seq_len=8, batch_size=4,
                 pooling="cls", name="t", local=True, config=None)
  texts = ["a b c", "", "d", "e f g h i j k l m", "b", "c a"]
  path = _write(str(tmp_path / "in.txt"), "\n".join(texts) + "\n")
  tok = FakeTokenizer()
  rows = read_inputs(path, "text", task)
  data = encode(task, tok, rows)
  assert data.counts["truncated"] == 1
  want = data.arrays["input_ids"].sum(-1)
  for batch_size in (1, 4, 5, 64):
    out = model_outputs(_SumModel(), {}, data, batch_size, progress=False)
    np.testing.assert_array_equal(out["predictions"], want)
  records = _records(data, rows, scoring.decode_predictions(data, out), ["sentence"])
  assert [r["sentence"] for r in records] == texts
  assert [r["prediction"] for r in records] == want.tolist()
  assert all("probabilities" not in r for r in records)
