"""Tests for jaxbert.data.pretraining on a synthetic corpus built here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jaxbert.data.docstore import DocumentStore
from jaxbert.data.pretraining import (PretrainDataConfig, PretrainingExamples,
                                      StreamSource, batch_examples,
                                      split_heldout)
from jaxbert.errors import UserError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000


def _make_store(num_docs: int, seed: int) -> DocumentStore:
  """Documents of 1..30 sentences of 1..40 pieces, a few very long sentences
  (to force truncation) and the odd [UNK] inside the text."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(num_docs):
    doc = []
    for _ in range(int(rng.integers(1, 31))):
      length = int(rng.integers(150, 300)) if rng.random() < 0.01 else int(
          rng.integers(1, 41))
      sent = rng.integers(5, VOCAB, length)
      sent[rng.random(length) < 0.01] = UNK
      doc.append(sent.tolist())
    docs.append(doc)
  return DocumentStore.from_documents(docs)


def _word_start(seed: int = 1) -> np.ndarray:
  table = np.random.default_rng(seed).random(VOCAB) < 0.6
  table[list(SPECIALS)] = True
  return table


@pytest.fixture(scope="module")
def store() -> DocumentStore:
  return _make_store(1300, seed=0)


def _examples(store, **overrides) -> PretrainingExamples:
  cfg = PretrainDataConfig(**{"seed": 7, **overrides})
  return PretrainingExamples(store, cfg, vocab_size=VOCAB, pad_id=PAD, unk_id=UNK,
                             cls_id=CLS, sep_id=SEP, mask_id=MASK,
                             word_start=_word_start())


def _original_ids(store, ex, prov) -> np.ndarray:
  """[CLS] A [SEP] B [SEP] + padding, rebuilt from the provenance spans."""
  a = store.tokens[prov.a_span[0]:prov.a_span[1]]
  b = store.tokens[prov.b_span[0]:prov.b_span[1]]
  ids = np.concatenate([[CLS], a, [SEP], b, [SEP]])
  return np.pad(ids, (0, ex.cfg.max_seq_len - len(ids)), constant_values=PAD)


@pytest.fixture(scope="module")
def epoch0(store):
  examples = _examples(store)
  n = examples.num_examples(0)
  return examples, [examples.example(0, i) for i in range(n)]


def test_mask_and_nsp_statistics(store, epoch0):
  _, batch = epoch0
  assert store.num_tokens >= 100_000
  maskable = sum(int(np.isin(e["input_ids"][e["attention_mask"] == 1], SPECIALS,
                             invert=True).sum()) for e in batch)
  masked = mask_tok = kept = 0
  for e in batch:
    m = e["masked_weights"] == 1
    pos = e["masked_positions"][m]
    masked += int(m.sum())
    mask_tok += int((e["input_ids"][pos] == MASK).sum())
    kept += int((e["input_ids"][pos] == e["masked_ids"][m]).sum())
  # Text pieces replaced by [MASK] are maskable too; random replacements are
  # never special, so the count above already holds them.
  maskable += mask_tok
  share = masked / maskable
  other = masked - mask_tok - kept
  nsp = np.mean([int(e["next_sentence_label"]) for e in batch])
  print(f"\n{len(batch)} examples, {maskable} maskable pieces, {masked} masked: "
        f"share {share:.4f}; [MASK] {mask_tok / masked:.4f}, random "
        f"{other / masked:.4f}, unchanged {kept / masked:.4f}; NotNext {nsp:.4f}")
  # Masked share: within a *relative* 1% of 15% (stochastic rounding is unbiased).
  assert abs(share / 0.15 - 1.0) < 0.01
  # 80/10/10 and NSP 50/50: each within 1% absolute. A random replacement that
  # happens to equal the original counts as unchanged (p = 1/995, negligible).
  assert abs(mask_tok / masked - 0.8) < 0.01
  assert abs(other / masked - 0.1) < 0.01
  assert abs(kept / masked - 0.1) < 0.01
  assert abs(nsp - 0.5) < 0.01


def test_nsp_balanced_despite_forced_not_next():
  # Single-sentence chunks are always NotNext; the balance must absorb them even
  # when they are common (short documents of long sentences).
  rng = np.random.default_rng(3)
  docs = [[rng.integers(5, VOCAB, int(rng.integers(30, 100))).tolist()
           for _ in range(int(rng.integers(1, 6)))] for _ in range(3000)]
  store = DocumentStore.from_documents(docs)
  forced = _examples(store, random_next_prob=0.0)._plan(0).label.mean()
  balanced = _examples(store)._plan(0).label.mean()
  print(f"\nshort documents: forced NotNext share {forced:.4f}, "
        f"balanced NotNext share {balanced:.4f}")
  assert forced > 0.25  # without the balance, NotNext would be >= 0.25 + 0.75 / 2
  assert abs(balanced - 0.5) < 0.01


def test_specials_never_masked_and_masked_ids_are_originals(store, epoch0):
  examples, batch = epoch0
  for i, e in enumerate(batch[:600]):
    original = _original_ids(store, examples, examples.provenance(0, i))
    m = e["masked_weights"] == 1
    pos = e["masked_positions"][m]
    assert np.all(np.diff(pos) > 0)  # sorted, distinct
    np.testing.assert_array_equal(e["masked_ids"][m], original[pos])
    assert not np.isin(original[pos], SPECIALS).any()
    assert np.all(e["attention_mask"][pos] == 1)
    assert np.all(e["masked_positions"][~m] == 0)
    restored = e["input_ids"].copy()
    restored[pos] = e["masked_ids"][m]
    np.testing.assert_array_equal(restored, original)  # nothing else changed
    # Replacements are never special pieces other than [MASK] itself.
    assert not np.isin(e["input_ids"][pos], (PAD, UNK, CLS, SEP)).any()
    n = int(e["attention_mask"].sum())
    assert np.all(e["input_ids"][n:] == PAD)
    sep_a = int(np.flatnonzero(original == SEP)[0])
    assert np.all(e["token_type_ids"][:sep_a + 1] == 0)
    assert np.all(e["token_type_ids"][sep_a + 1:n] == 1)
    assert np.all(e["token_type_ids"][n:] == 0)


def test_is_next_stays_inside_its_document(store, epoch0):
  examples, _ = epoch0
  doc_token_start = store.sent_start[store.doc_start]

  def doc_of(offset):
    return int(np.searchsorted(doc_token_start, offset, side="right") - 1)

  counts = [0, 0]
  for i in range(examples.num_examples(0)):
    p = examples.provenance(0, i)
    a_doc, b_doc = doc_of(p.a_span[0]), doc_of(p.b_span[0])
    assert doc_of(p.a_span[1] - 1) == a_doc == p.a_doc
    assert doc_of(p.b_span[1] - 1) == b_doc == p.b_doc
    counts[p.next_sentence_label] += 1
    if p.next_sentence_label == 0:
      assert a_doc == b_doc and p.a_span[1] <= p.b_span[0]
    else:
      assert a_doc != b_doc  # many documents: NotNext always comes from another
  assert min(counts) > 0


def _words(ids, candidates_mask, word_start):
  """Groups of positions: a word-start piece and the non-start pieces after it."""
  words, current = [], []
  for t in range(len(ids)):
    if not candidates_mask[t]:
      if current:
        words.append(current)
      current = []
      continue
    if word_start[ids[t]] and current:
      words.append(current)
      current = []
    current.append(t)
  if current:
    words.append(current)
  return words


def test_whole_word_masks_all_pieces_or_none(store):
  examples = _examples(store, whole_word=True)
  word_start = _word_start()
  multi = 0
  for i in range(400):
    e = examples.example(0, i)
    original = _original_ids(store, examples, examples.provenance(0, i))
    maskable = (e["attention_mask"] == 1) & ~np.isin(original, SPECIALS)
    masked = set(e["masked_positions"][e["masked_weights"] == 1].tolist())
    assert len(masked) <= examples.cfg.max_predictions_per_seq
    for word in _words(original, maskable, word_start):
      hit = sum(t in masked for t in word)
      assert hit in (0, len(word)), (i, word, sorted(masked))
      multi += hit > 1
  assert multi > 100  # multi-piece words do get masked


def test_deterministic_fixed_shapes_and_epoch_dependent(store):
  a = _examples(store)
  b = _examples(store)  # a fresh object recomputes the plan
  for index in (0, 5, 123):
    x, y = a.example(2, index), b.example(2, index)
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  x = a.example(0, 5)
  shapes = {"input_ids": (128,), "token_type_ids": (128,), "attention_mask": (128,),
            "masked_positions": (20,), "masked_ids": (20,), "masked_weights": (20,),
            "next_sentence_label": ()}
  for k, shape in shapes.items():
    assert x[k].shape == shape
    assert x[k].dtype == (np.float32 if k == "masked_weights" else np.int32)
  # Another epoch pairs and masks afresh; a pair drawn in both epochs gets a new mask.
  assert not np.array_equal(a.example(0, 5)["input_ids"], a.example(1, 5)["input_ids"])
  in_epoch1 = {tuple(s): j for j, s in enumerate(a._plan(1).spans.tolist())}
  repeated = [(i, in_epoch1[tuple(s)]) for i, s in enumerate(a._plan(0).spans.tolist())
              if tuple(s) in in_epoch1]
  assert len(repeated) >= 10
  assert all(a.example(0, i)["masked_positions"].tolist() !=
             a.example(1, j)["masked_positions"].tolist() for i, j in repeated[:10])
  other_seed = _examples(store, seed=8)
  assert not np.array_equal(x["input_ids"], other_seed.example(0, 5)["input_ids"])


def test_truncation_and_short_sequences(store, epoch0):
  examples, batch = epoch0
  lengths = np.array([int(e["attention_mask"].sum()) for e in batch])
  assert lengths.max() <= 128 and lengths.min() >= 5
  # Sentences of 150+ pieces exist, so some pairs must have been cut to fit.
  assert (lengths == 128).sum() > 0

  def mean_length(p):
    ex = _examples(store, short_seq_prob=p)
    spans = ex._plan(0).spans
    return np.mean(spans[:, 1] - spans[:, 0] + spans[:, 3] - spans[:, 2])

  full, default, short = mean_length(0.0), mean_length(0.1), mean_length(1.0)
  print(f"\nmean pair length: short_seq_prob 0 -> {full:.1f}, "
        f"0.1 -> {default:.1f}, 1 -> {short:.1f}")
  assert short < 0.7 * full
  assert short < default < full


def test_stream_positions_and_grain_source(store):
  examples = _examples(_make_store(60, seed=4), max_seq_len=32,
                       max_predictions_per_seq=5)
  n0, n1 = examples.num_examples(0), examples.num_examples(1)
  assert examples.locate(0) == (0, 0)
  assert examples.locate(n0 - 1) == (0, n0 - 1)
  assert examples.locate(n0) == (1, 0)
  assert examples.locate(n0 + n1 + 2) == (2, 2)
  source = StreamSource(examples, length=3 * n0, start=n0 - 2)
  np.testing.assert_array_equal(source[2]["input_ids"],
                                examples.example(1, 0)["input_ids"])
  with pytest.raises(IndexError):
    source[3 * n0]
  # Worker processes receive a pickled copy that rebuilds its own plans.
  clone = pickle.loads(pickle.dumps(source))
  assert not clone.examples._plans
  for k, v in source[n0 + 5].items():
    np.testing.assert_array_equal(clone[n0 + 5][k], v)
  import grain  # pylint: disable=g-import-not-at-top
  batch = next(iter(grain.MapDataset.source(source).batch(4)))
  expected = batch_examples([source[i] for i in range(4)])
  for k, v in expected.items():
    np.testing.assert_array_equal(batch[k], v)
  assert batch["input_ids"].shape == (4, 32)


def test_split_heldout(store):
  small = _make_store(50, seed=5)
  train, held = split_heldout(small, 0.2, seed=1)
  train2, held2 = split_heldout(small, 0.2, seed=1)
  np.testing.assert_array_equal(held.tokens, held2.tokens)
  assert (train.num_docs, held.num_docs) == (40, 10)

  def docs(s):
    return {tuple(s.tokens[s.sent_start[s.doc_start[d]]:
                           s.sent_start[s.doc_start[d + 1]]].tolist())
            for d in range(s.num_docs)}

  assert docs(train) | docs(held) == docs(small)
  assert not docs(train) & docs(held)
  assert train.num_tokens + held.num_tokens == small.num_tokens
  _, held3 = split_heldout(small, 0.2, seed=2)
  assert docs(held3) != docs(held)
  with pytest.raises(UserError):
    split_heldout(small, 1.0, seed=0)


def test_config_and_vocabulary_errors(store):
  with pytest.raises(UserError, match="max_seq_len"):
    PretrainDataConfig(max_seq_len=4)
  with pytest.raises(UserError, match="random_token_prob"):
    PretrainDataConfig(mask_token_prob=0.9, random_token_prob=0.2)
  with pytest.raises(UserError, match="another tokenizer"):
    PretrainingExamples(store, PretrainDataConfig(), vocab_size=500, pad_id=PAD,
                        unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)
