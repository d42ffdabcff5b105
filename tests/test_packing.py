"""Sequence packing: row plans, packed rows, and equality with unpacked examples."""

import jax
import numpy as np
import pytest

from jaxbert import model as M
from jaxbert.data import packing
from jaxbert.data.docstore import DocumentStore
from jaxbert.data.pretraining import PretrainDataConfig, PretrainingExamples
from jaxbert.heads.mlm_nsp import mlm_nsp_loss

VOCAB = 128
TINY = M.BertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=64,
                    hidden_dropout=0.0, attention_dropout=0.0)


def _examples(max_seq_len=48, seed=0, num_docs=40):
  """Short documents (1-4 sentences of 2-9 pieces), as in a dictionary-like corpus."""
  rng = np.random.default_rng(seed)
  docs = [[rng.integers(5, VOCAB, rng.integers(2, 10)).tolist()
           for _ in range(rng.integers(1, 5))] for _ in range(num_docs)]
  cfg = PretrainDataConfig(max_seq_len=max_seq_len, max_predictions_per_seq=6, seed=seed)
  return PretrainingExamples(DocumentStore.from_documents(docs), cfg, vocab_size=VOCAB,
                             pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)


def test_pack_lengths_first_fit_decreasing():
  rows = packing.pack_lengths(np.array([6, 4, 5, 5, 2, 8]), max_len=10, max_segments=4)
  assert [r.tolist() for r in rows] == [[5, 4], [0, 1], [2, 3]]


@pytest.mark.parametrize("max_segments", [1, 2, 3, 8])
def test_pack_lengths_places_every_item_once_within_limits(max_segments):
  lengths = np.random.default_rng(1).integers(1, 65, 500)
  rows = packing.pack_lengths(lengths, max_len=64, max_segments=max_segments)
  placed = np.concatenate(rows)
  assert sorted(placed.tolist()) == list(range(500))
  assert all(lengths[r].sum() <= 64 and len(r) <= max_segments for r in rows)
  if max_segments == 1:
    assert len(rows) == 500
  else:  # Far fewer rows than items, and close to the bound sum / max_len.
    assert len(rows) < 0.8 * 500
    assert len(rows) <= 1.1 * np.ceil(lengths.sum() / 64) + max_segments
  np.testing.assert_array_equal(
      np.concatenate(packing.pack_lengths(lengths, 64, max_segments)), placed)


def test_pack_lengths_rejects_items_longer_than_a_row():
  with pytest.raises(ValueError, match="lengths"):
    packing.pack_lengths(np.array([3, 11]), max_len=10, max_segments=2)


def test_packed_rows_hold_every_example_with_its_masks():
  examples = _examples()
  packed = packing.PackedExamples(examples, max_segments=3)
  stats = packing.packing_stats(packed, epoch=0)
  assert stats["packed_efficiency"] > stats["unpacked_efficiency"] + 0.2
  seen = 0
  for r, members in enumerate(packed.rows(0)):
    row = packed.example(0, r)
    assert row["input_ids"].shape == (48,) and row["masked_ids"].shape == (packed.max_predictions,)
    at, pred = 0, 0
    for k, i in enumerate(members.tolist()):
      ex = examples.example(0, i)
      n, m = int(ex["attention_mask"].sum()), int(ex["masked_weights"].sum())
      np.testing.assert_array_equal(row["input_ids"][at:at + n], ex["input_ids"][:n])
      np.testing.assert_array_equal(row["token_type_ids"][at:at + n], ex["token_type_ids"][:n])
      assert (row["segment_ids"][at:at + n] == k + 1).all()
      assert (row["attention_mask"][at:at + n] == 1).all()
      np.testing.assert_array_equal(row["position_ids"][at:at + n], np.arange(n))
      np.testing.assert_array_equal(row["masked_positions"][pred:pred + m],
                                    ex["masked_positions"][:m] + at)
      np.testing.assert_array_equal(row["masked_ids"][pred:pred + m], ex["masked_ids"][:m])
      assert row["nsp_positions"][k] == at and row["nsp_labels"][k] == ex["next_sentence_label"]
      at, pred = at + n, pred + m
      seen += 1
    assert (row["attention_mask"][at:] == 0).all() and (row["input_ids"][at:] == 0).all()
    assert (row["segment_ids"][at:] == 0).all()
    assert row["masked_weights"].sum() == pred and row["nsp_weights"].sum() == len(members)
    assert row["next_sentence_label"] == row["nsp_labels"][0]
  assert seen == examples.num_examples(0)


def test_packed_stream_is_a_pure_function_of_position():
  a = packing.PackedExamples(_examples(), max_segments=3)
  b = packing.PackedExamples(_examples(), max_segments=3)
  n0 = a.num_examples(0)
  assert a.locate(n0 + 2) == (1, 2)
  for pos in (0, 5, n0 + 2):
    ra, rb = a.example(*a.locate(pos)), b.example(*b.locate(pos))
    for k in ra:
      np.testing.assert_array_equal(ra[k], rb[k])


def test_pack_row_refuses_overflow():
  ex = _examples().example(0, 0)
  n = int(ex["attention_mask"].sum())
  with pytest.raises(ValueError, match="tokens"):
    packing.pack_row([ex, ex], max_len=2 * n - 1, max_predictions=20, max_segments=2, pad_id=0)


def test_max_predictions_below_the_bound_is_refused():
  with pytest.raises(ValueError, match="max_predictions"):
    packing.PackedExamples(_examples(), max_segments=3, max_predictions=4)


def test_a_packed_row_computes_each_example_as_if_alone():
  """Encoder outputs, MLM and NSP logits and the loss of a packed row equal the unpacked ones."""
  examples = _examples()
  packed = packing.PackedExamples(examples, max_segments=3)
  r = next(i for i, m in enumerate(packed.rows(0)) if len(m) == 3)
  row = {k: v[None] for k, v in packed.example(0, r).items()}
  alone = [examples.example(0, int(i)) for i in packed.rows(0)[r]]
  model = M.BertForPreTraining(TINY)
  params = model.init(jax.random.key(0), row)["params"]
  out = model.apply({"params": params}, row)
  enc = M.BertEncoderOnly(TINY)
  seq = enc.apply({"params": params}, row)["sequence_output"][0]
  at, pred, mlm_sum, nsp = 0, 0, 0.0, []
  for k, ex in enumerate(alone):
    batch = {key: v[None] for key, v in ex.items()}
    n, m = int(ex["attention_mask"].sum()), int(ex["masked_weights"].sum())
    ref = model.apply({"params": params}, batch)
    np.testing.assert_allclose(out["mlm_logits"][0, pred:pred + m], ref["mlm_logits"][0, :m],
                               atol=2e-5)
    ref_seq = enc.apply({"params": params}, batch)["sequence_output"][0]
    np.testing.assert_allclose(seq[at:at + n], ref_seq[:n], atol=2e-5)
    # The pooler reads each example's own [CLS] (nsp_positions).
    np.testing.assert_allclose(out["nsp_logits"][0, k], ref["nsp_logits"][0], atol=2e-5)
    _, metrics = mlm_nsp_loss(ref, batch)
    mlm_sum += m * float(metrics["mlm_loss"])
    nsp.append(float(metrics["nsp_loss"]))
    at, pred = at + n, pred + m
  # The row's loss: MLM averaged over all its predictions, NSP over its examples.
  _, metrics = mlm_nsp_loss(out, row)
  np.testing.assert_allclose(metrics["mlm_loss"], mlm_sum / pred, rtol=1e-5)
  np.testing.assert_allclose(metrics["nsp_loss"], np.mean(nsp), rtol=1e-5)
