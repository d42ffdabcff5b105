"""Model structure: parameter counts, shapes, padding, dtype policy, heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import layers as L
from jaxbert import model as M

TINY = M.BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=64)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_base_encoder_has_bert_base_parameter_count():
  cfg = M.preset("base")
  shapes = jax.eval_shape(lambda: M.BertEncoderOnly(cfg).init(jax.random.key(0), M.dummy_batch(cfg)))
  # bert-base-uncased's transformers.BertModel (embeddings, 12 layers, pooler).
  assert _count(shapes) == 109_482_240


@pytest.mark.parametrize("name,layers,hidden", [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512),
                                                ("medium", 8, 512), ("large", 24, 1024)])
def test_presets(name, layers, hidden):
  cfg = M.preset(name)
  assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (layers, hidden, 4 * hidden)


def _batch(rng, b=3, t=12, pad_from=(12, 7, 4)):
  ids = rng.integers(5, TINY.vocab_size, (b, t)).astype(np.int32)
  mask = np.zeros((b, t), np.int32)
  for i, n in enumerate(pad_from):
    mask[i, :n] = 1
  ids = ids * mask
  types = np.zeros_like(ids)
  types[:, t // 2:] = 1
  return {"input_ids": ids, "token_type_ids": types * mask, "attention_mask": mask,
          "masked_positions": np.tile(np.array([[1, 2]], np.int32), (b, 1))}


@pytest.fixture(scope="module")
def pretraining_params():
  batch = _batch(np.random.default_rng(0))
  return M.BertForPreTraining(TINY).init(jax.random.key(0), batch)["params"]


def test_pretraining_output_shapes(pretraining_params):
  batch = _batch(np.random.default_rng(1))
  out = M.BertForPreTraining(TINY).apply({"params": pretraining_params}, batch)
  assert out["mlm_logits"].shape == (3, 2, TINY.vocab_size)
  assert out["nsp_logits"].shape == (3, 2)
  assert out["mlm_logits"].dtype == jnp.float32


def test_padding_never_changes_real_positions(pretraining_params):
  """Outputs at real tokens are the same whatever sits in (and however long is) the padding."""
  enc = M.BertEncoderOnly(TINY)
  params = {"bert": pretraining_params["bert"]}
  batch = _batch(np.random.default_rng(2))
  ref = enc.apply({"params": params}, batch)["sequence_output"]
  noisy = dict(batch)
  noisy["input_ids"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], 77).astype(np.int32)
  out = enc.apply({"params": params}, noisy)["sequence_output"]
  longer = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in batch.items() if k != "masked_positions"}
  out_long = enc.apply({"params": params}, longer)["sequence_output"][:, :12]
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out_long)[real], np.asarray(ref)[real], atol=1e-5)


def test_packed_segments_attend_only_within_their_document(pretraining_params):
  enc = M.BertEncoderOnly(TINY)
  params = {"bert": pretraining_params["bert"]}
  rng = np.random.default_rng(3)
  a, b = rng.integers(5, 128, 5).astype(np.int32), rng.integers(5, 128, 4).astype(np.int32)
  packed = {"input_ids": np.concatenate([a, b])[None],
            "attention_mask": np.array([[1] * 5 + [2] * 4], np.int32),
            "position_ids": np.array([list(range(5)) + list(range(4))], np.int32)}
  alone = {"input_ids": b[None], "attention_mask": np.ones((1, 4), np.int32)}
  out = enc.apply({"params": params}, packed)["sequence_output"][0, 5:]
  ref = enc.apply({"params": params}, alone)["sequence_output"][0]
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bfloat16_computes_in_bf16_with_float32_params():
  cfg = TINY.replace(dtype="bfloat16")
  batch = _batch(np.random.default_rng(4))
  params = M.BertForPreTraining(cfg).init(jax.random.key(0), batch)["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  hidden = M.BertModel(cfg).apply({"params": params["bert"]}, batch["input_ids"])[0]
  assert hidden.dtype == jnp.bfloat16
  f32 = M.BertModel(TINY).apply({"params": params["bert"]}, batch["input_ids"])[0]
  np.testing.assert_allclose(np.asarray(hidden, np.float32), f32, atol=0.1)


def test_row_dense_matches_dense_in_values_gradients_and_parameters():
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  dense, rows = nn.Dense(4, name="d"), L.RowDense(4, name="d")
  params = dense.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, rows.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  np.testing.assert_allclose(rows.apply(params, x), dense.apply(params, x), rtol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.grad(loss(rows), argnums=(0, 1))(params, x)),
                       jax.tree.leaves(jax.grad(loss(dense), argnums=(0, 1))(params, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gelu_is_the_exact_gelu():
  x = jnp.linspace(-8.0, 8.0, 1001)
  np.testing.assert_allclose(L.gelu(x), nn.gelu(x, approximate=False), atol=2e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(L.gelu))(x),
                             jax.vmap(jax.grad(lambda v: nn.gelu(v, approximate=False)))(x),
                             atol=2e-6)


def test_add_bias_gradients_equal_autodiff_of_a_plain_add():
  y = jax.random.normal(jax.random.key(0), (3, 5, 7))
  bias = jax.random.normal(jax.random.key(1), (7,))
  loss = lambda add: lambda y, b: jnp.sum(jnp.sin(add(y, b)))
  got = jax.grad(loss(L.add_bias), argnums=(0, 1))(y, bias)
  want = jax.grad(loss(lambda y, b: y + b), argnums=(0, 1))(y, bias)
  np.testing.assert_allclose(L.add_bias(y, bias), y + bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_dropout_is_active_only_in_training(pretraining_params):
  batch = _batch(np.random.default_rng(5))
  model = M.BertForPreTraining(TINY)
  a = model.apply({"params": pretraining_params}, batch)
  b = model.apply({"params": pretraining_params}, batch)
  c = model.apply({"params": pretraining_params}, batch, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(a["nsp_logits"], b["nsp_logits"])
  assert not np.allclose(a["nsp_logits"], c["nsp_logits"])


def test_attention_dropout_path_matches_fused_path_without_dropout():
  """The explicit-softmax path (used for attention dropout) computes the same attention."""
  batch = _batch(np.random.default_rng(6))
  cfg = TINY.replace(hidden_dropout=0.0, attention_dropout=0.0)
  params = M.BertForPreTraining(cfg).init(jax.random.key(0), batch)["params"]
  fused = M.BertForPreTraining(cfg).apply({"params": params}, batch, deterministic=False,
                                          rngs={"dropout": jax.random.key(0)})
  # attention_dropout=1e-9 takes the explicit path; dropping nothing in practice.
  explicit = M.BertForPreTraining(cfg.replace(attention_dropout=1e-9)).apply(
      {"params": params}, batch, deterministic=False, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_allclose(fused["mlm_logits"], explicit["mlm_logits"], atol=1e-4)


@pytest.mark.parametrize("cls,kw,key,shape", [
    (M.BertForSequenceClassification, {"num_labels": 3}, "logits", (3, 3)),
    (M.BertForTokenClassification, {"num_labels": 5}, "logits", (3, 12, 5)),
    (M.BertForQuestionAnswering, {}, "start_logits", (3, 12)),
])
def test_task_heads(cls, kw, key, shape):
  batch = _batch(np.random.default_rng(7))
  model = cls(TINY, **kw)
  params = model.init(jax.random.key(0), batch)["params"]
  assert set(params) == {"bert", "qa_outputs" if not kw else "classifier"}
  assert model.apply({"params": params}, batch)[key].shape == shape


def test_mean_pooled_classifier_averages_the_real_pieces_only(pretraining_params):
  batch = _batch(np.random.default_rng(8))
  model = M.BertForSequenceClassification(TINY, 3, pooling="mean")
  params = model.init(jax.random.key(0), batch)["params"]
  logits = model.apply({"params": params}, batch)["logits"]
  seq = M.BertEncoderOnly(TINY).apply({"params": {"bert": params["bert"]}},
                                      batch)["sequence_output"]
  mask = batch["attention_mask"].astype(bool)
  mean = np.stack([np.asarray(seq)[i][mask[i]].mean(0) for i in range(3)])
  k = params["classifier"]
  np.testing.assert_allclose(logits, mean @ k["kernel"] + k["bias"], atol=1e-5)
  longer = {n: np.pad(v, ((0, 0), (0, 5))) for n, v in batch.items() if n != "masked_positions"}
  np.testing.assert_allclose(model.apply({"params": params}, longer)["logits"], logits, atol=1e-5)


def test_config_validation():
  with pytest.raises(ValueError, match="divisible"):
    M.BertConfig(hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="unknown model preset"):
    M.preset("huge")
