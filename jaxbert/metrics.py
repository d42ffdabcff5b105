"""Evaluation metrics for the fine-tuning tasks (pure numpy/python).

Every score is a fraction in [0, 1] (SQuAD included: 0.885, not 88.5), so all
tasks report on one scale. Definitions follow the references the published
numbers use:
- GLUE: accuracy, F1 of the positive class 1, Matthews correlation, Pearson and
  Spearman correlation.
- NER: entity-level micro precision/recall/F1 over IOB2 tags with the lenient
  conlleval conventions (seqeval's default mode): an I- tag that follows O or a
  different type opens a new entity instead of being an error.
- SQuAD: exact match and token F1 after the official answer normalisation, max
  over the gold answers; v2.0 no-answer questions have the gold answer "" and
  score 1 only for an empty prediction.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.stats


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(predictions), np.asarray(labels)
  if p.shape != y.shape:
    raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
  return p, y


def accuracy(predictions, labels) -> float:
  """Fraction of predictions equal to the label (0.0 for no examples)."""
  p, y = _pair(predictions, labels)
  return float(np.mean(p == y)) if p.size else 0.0


def binary_f1(predictions, labels, positive: int = 1) -> float:
  """F1 of the `positive` class; 0.0 when it is neither predicted nor present."""
  p, y = _pair(predictions, labels)
  tp = int(np.sum((p == positive) & (y == positive)))
  fp = int(np.sum((p == positive) & (y != positive)))
  fn = int(np.sum((p != positive) & (y == positive)))
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation (multi-class form; the usual phi for two classes).

  0.0 when it is undefined (all predictions or all labels one class), as in
  the GLUE reference.
  """
  p, y = _pair(predictions, labels)
  classes, both = np.unique(np.concatenate([p, y]), return_inverse=True)
  pi, yi = both[:p.size], both[p.size:]
  k = len(classes)
  confusion = np.zeros((k, k), np.float64)  # [true, predicted]
  np.add.at(confusion, (yi, pi), 1.0)
  t, q = confusion.sum(1), confusion.sum(0)  # per-class true / predicted counts
  n, c = confusion.sum(), np.trace(confusion)
  denom = np.sqrt((n * n - q @ q) * (n * n - t @ t))
  return float((c * n - t @ q) / denom) if denom > 0 else 0.0


def _correlation(fn, predictions, labels) -> float:
  p, y = _pair(predictions, labels)
  p, y = p.astype(np.float64).ravel(), y.astype(np.float64).ravel()
  # Undefined for a constant side (an untrained regressor often is); 0.0 keeps
  # best-checkpoint comparisons working where scipy would give nan.
  if p.size < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
    return 0.0
  return float(fn(p, y)[0])


def pearson(predictions, labels) -> float:
  """Pearson correlation (0.0 when either side is constant)."""
  return _correlation(scipy.stats.pearsonr, predictions, labels)


def spearman(predictions, labels) -> float:
  """Spearman rank correlation (0.0 when either side is constant)."""
  return _correlation(scipy.stats.spearmanr, predictions, labels)


# ---------------------------------------------------------------------------
# Entity-level scores for IOB2 tags.


def _split_tag(tag: str) -> tuple[str, str]:
  if tag == "O":
    return "O", ""
  if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
    return tag[0], tag[2:]
  raise ValueError(f"tag {tag!r} is not IOB2 (expected O, B-TYPE or I-TYPE)")


def iob2_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """Entities as (type, first word, last word) in order of appearance.

  B-X always opens an entity; I-X continues the open entity of type X and
  otherwise opens a new one (lenient, as conlleval and seqeval's default).
  """
  entities = []
  open_type, open_start = None, 0
  for i, tag in enumerate(tags):
    prefix, kind = _split_tag(tag)
    continues = prefix == "I" and kind == open_type
    if open_type is not None and not continues:
      entities.append((open_type, open_start, i - 1))
      open_type = None
    if prefix == "B" or (prefix == "I" and not continues):
      open_type, open_start = kind, i
  if open_type is not None:
    entities.append((open_type, open_start, len(tags) - 1))
  return entities


def entity_scores(gold: Sequence[Sequence[str]],
                  predicted: Sequence[Sequence[str]]) -> dict[str, float]:
  """Micro precision, recall and F1 of exact entity matches over sentences."""
  if len(gold) != len(predicted):
    raise ValueError(f"{len(gold)} gold vs {len(predicted)} predicted sentences")
  num_gold = num_pred = num_correct = 0
  for s, (g, p) in enumerate(zip(gold, predicted)):
    if len(g) != len(p):
      raise ValueError(f"sentence {s}: {len(g)} gold vs {len(p)} predicted tags")
    g_ents, p_ents = set(iob2_entities(g)), set(iob2_entities(p))
    num_gold += len(g_ents)
    num_pred += len(p_ents)
    num_correct += len(g_ents & p_ents)
  precision = num_correct / num_pred if num_pred else 0.0
  recall = num_correct / num_gold if num_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------
# SQuAD.

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation and the articles a/an/the, squeeze whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _best(score_fn, prediction: str, gold_answers: Sequence[str]) -> float:
  # A question whose gold answers normalise to nothing is a no-answer question.
  golds = [a for a in gold_answers if normalize_answer(a)] or [""]
  return max(score_fn(prediction, g) for g in golds)


def _exact(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction: str, gold: str) -> float:
  p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not p or not g:  # no-answer on either side: right only if both are empty
    return float(p == g)
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if not same:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals a normalised gold answer."""
  return _best(_exact, prediction, gold_answers)


def squad_f1(prediction: str, gold_answers: Sequence[str]) -> float:
  """Best bag-of-tokens F1 between the prediction and a gold answer."""
  return _best(_token_f1, prediction, gold_answers)


def squad_scores(predictions: Mapping[str, str],
                 gold: Mapping[str, Iterable[str]]) -> dict[str, float]:
  """Mean exact match and F1 over the questions in `gold`.

  A question missing from `predictions` counts as the empty prediction. When
  some questions have no answer (SQuAD v2.0) the scores are also given for the
  answerable ("has_ans_*") and unanswerable ("no_ans_*") questions.
  """
  em, f1, has_answer = [], [], []
  for qid, answers in gold.items():
    answers = list(answers)
    pred = predictions.get(qid, "")
    em.append(squad_exact_match(pred, answers))
    f1.append(squad_f1(pred, answers))
    has_answer.append(any(normalize_answer(a) for a in answers))
  em_a, f1_a, has = np.asarray(em), np.asarray(f1), np.asarray(has_answer, bool)
  if not em_a.size:
    return {"exact_match": 0.0, "f1": 0.0}
  scores = {"exact_match": float(em_a.mean()), "f1": float(f1_a.mean())}
  if not has.all():
    for prefix, mask in (("has_ans", has), ("no_ans", ~has)):
      if mask.any():
        scores[f"{prefix}_exact_match"] = float(em_a[mask].mean())
        scores[f"{prefix}_f1"] = float(f1_a[mask].mean())
  return scores
