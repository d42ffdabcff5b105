"""Metrics against hand-computed values and, where installed, reference libraries."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from jaxbert import metrics


def test_accuracy_and_binary_f1():
  preds, labels = [1, 0, 1, 1], [1, 1, 1, 0]
  assert metrics.accuracy(preds, labels) == 0.5
  # tp=2, fp=1, fn=1 -> 2*2 / (2*2 + 1 + 1)
  assert metrics.binary_f1(preds, labels) == pytest.approx(4 / 6)
  assert metrics.binary_f1([0, 0], [0, 0]) == 0.0  # no positives anywhere
  with pytest.raises(ValueError):
    metrics.accuracy([1, 0], [1])


def test_matthews_corrcoef_hand_values():
  # tp=2, fp=1, tn=2, fn=1: (2*2 - 1*1) / sqrt(3*3*3*3)
  assert metrics.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == \
      pytest.approx(1 / 3)
  # tp=2, tn=0, fp=1, fn=1: (0 - 1) / sqrt(3*3*1*1)
  assert metrics.matthews_corrcoef([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(-1 / 3)
  # Three classes: c=3, n=4, true counts (1,2,1), predicted (1,1,2):
  # (3*4 - 5) / sqrt((16 - 6) * (16 - 6)) = 0.7
  assert metrics.matthews_corrcoef([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(0.7)
  assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # undefined -> 0
  assert metrics.matthews_corrcoef([0, 1, 1], [0, 1, 1]) == pytest.approx(1.0)


def test_correlations_hand_values():
  # dx=(-1,0,1), dy=(-4/3,-1/3,5/3): 3 / sqrt(2 * 42/9)
  assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / np.sqrt(2 * 42 / 9))
  # ranks (1,2,3,4) vs (1,3,2,4): 1 - 6*2 / (4*15)
  assert metrics.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # constant side -> 0, not nan
  assert metrics.spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_correlations_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=50)
  y = x + rng.normal(size=50)
  assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
  rank = lambda v: np.argsort(np.argsort(v))  # no ties in continuous data
  assert metrics.spearman(x, y) == pytest.approx(np.corrcoef(rank(x), rank(y))[0, 1])


def test_label_metrics_match_sklearn():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(1)
  for _ in range(20):
    y, p = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    assert metrics.binary_f1(p, y) == pytest.approx(sk.f1_score(y, p))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(sk.matthews_corrcoef(y, p))
    y3, p3 = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    assert metrics.matthews_corrcoef(p3, y3) == pytest.approx(sk.matthews_corrcoef(y3, p3))


def test_iob2_entities():
  tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"]
  assert metrics.iob2_entities(tags) == [("PER", 0, 1), ("LOC", 3, 5)]
  # Lenient: an I- after O or another type opens an entity.
  assert metrics.iob2_entities(["I-PER", "I-PER", "O", "I-LOC"]) == \
      [("PER", 0, 1), ("LOC", 3, 3)]
  assert metrics.iob2_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
  assert metrics.iob2_entities(["B-PER", "B-PER", "I-PER"]) == \
      [("PER", 0, 0), ("PER", 1, 2)]
  assert metrics.iob2_entities(["O", "O"]) == []
  with pytest.raises(ValueError):
    metrics.iob2_entities(["PER"])


def test_entity_scores_hand_values():
  gold = [["B-PER", "I-PER", "O", "B-LOC"]]
  pred = [["B-PER", "O", "O", "B-LOC"]]  # PER cut short: 1 of 2 right each way
  assert metrics.entity_scores(gold, pred) == pytest.approx(
      {"precision": 0.5, "recall": 0.5, "f1": 0.5})
  gold = [["B-ORG", "O"], ["B-PER", "O", "O"]]
  pred = [["B-ORG", "B-LOC"], ["O", "B-MISC", "O"]]  # 1 right of 3 predicted, 2 gold
  s = metrics.entity_scores(gold, pred)
  assert s["precision"] == pytest.approx(1 / 3)
  assert s["recall"] == pytest.approx(1 / 2)
  assert s["f1"] == pytest.approx(0.4)
  # Entities never run across sentence boundaries.
  s = metrics.entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
  assert s["f1"] == 1.0
  assert metrics.entity_scores([["O"]], [["O"]])["f1"] == 0.0


def _seqeval_metrics(monkeypatch):
  pytest.importorskip("seqeval")
  try:
    importlib.import_module("sklearn.exceptions")
  except ImportError:
    # seqeval takes only a warning class from scikit-learn; stand in for it.
    stub = types.ModuleType("sklearn.exceptions")
    stub.UndefinedMetricWarning = type("UndefinedMetricWarning", (UserWarning,), {})
    package = types.ModuleType("sklearn")
    package.exceptions = stub
    monkeypatch.setitem(sys.modules, "sklearn", package)
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", stub)
  return importlib.import_module("seqeval.metrics")


def test_entity_scores_match_seqeval(monkeypatch):
  seqeval = _seqeval_metrics(monkeypatch)
  rng = np.random.default_rng(2)
  vocab = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
  for _ in range(30):
    lengths = rng.integers(1, 12, 6)
    gold = [[vocab[k] for k in rng.integers(0, len(vocab), n)] for n in lengths]
    pred = [[vocab[k] for k in rng.integers(0, len(vocab), n)] for n in lengths]
    ours = metrics.entity_scores(gold, pred)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))


def test_squad_normalisation_and_scores():
  assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
  assert metrics.normalize_answer("an apple a day") == "apple day"
  assert metrics.normalize_answer("theatre") == "theatre"  # whole words only
  assert metrics.squad_exact_match("the Eiffel Tower", ["Paris", "Eiffel tower."]) == 1.0
  assert metrics.squad_exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
  # pred (eiffel tower in paris) vs gold (eiffel tower): P=2/4, R=2/2
  assert metrics.squad_f1("Eiffel Tower in Paris", ["the Eiffel Tower"]) == \
      pytest.approx(2 / 3)
  assert metrics.squad_f1("Eiffel Tower in Paris", ["Paris", "the Eiffel Tower"]) == \
      pytest.approx(2 / 3)  # max over the gold answers
  assert metrics.squad_f1("London", ["Paris"]) == 0.0


def test_squad_v2_no_answer():
  assert metrics.squad_exact_match("", []) == 1.0
  assert metrics.squad_f1("", []) == 1.0
  assert metrics.squad_exact_match("a guess", []) == 0.0
  assert metrics.squad_f1("a guess", []) == 0.0
  assert metrics.squad_f1("", ["an answer"]) == 0.0
  scores = metrics.squad_scores({"q1": "Paris", "q2": "", "q3": "x"},
                                {"q1": ["Paris"], "q2": [], "q3": []})
  assert scores["exact_match"] == pytest.approx(2 / 3)
  assert scores["has_ans_exact_match"] == 1.0
  assert scores["no_ans_exact_match"] == 0.5
  # v1.1 (every question answerable): no split scores; missing = empty answer.
  scores = metrics.squad_scores({"q1": "Paris"}, {"q1": ["Paris"], "q2": ["Rome"]})
  assert scores == {"exact_match": 0.5, "f1": 0.5}
