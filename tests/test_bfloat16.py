"""The bfloat16 path: bfloat16 operands, float32 accumulation, float32 everything else."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import flops
from jaxbert import layers as L
from jaxbert import model as M
from jaxbert.pretrain import mlm_nsp_loss

TINY = M.BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
BF16 = jnp.bfloat16


def _rounded(key, shape):
  """float32 values that bfloat16 holds exactly, so rounding them to it changes nothing."""
  return jax.random.normal(key, shape).astype(BF16).astype(jnp.float32)


@pytest.mark.parametrize("spec,sa,sb", [
    ("nk,ko->no", (6, 8), (8, 5)),                        # a dense layer
    ("nh,vh->nv", (6, 8), (11, 8)),                       # the tied decoder
    ("bqhd,bkhd->bhqk", (2, 5, 3, 4), (2, 7, 3, 4)),      # attention scores
    ("bhqk,bkhd->bqhd", (2, 3, 5, 7), (2, 7, 3, 4)),      # probabilities x values
])
def test_mixed_einsum_values_and_gradients(spec, sa, sb):
  a, b, = _rounded(jax.random.key(0), sa), jax.random.normal(jax.random.key(1), sb)
  cot = _rounded(jax.random.key(2), jnp.einsum(spec, a, b).shape)
  hi = lambda s, x, y: jnp.einsum(s, x, y, precision=jax.lax.Precision.HIGHEST)
  b16 = b.astype(BF16).astype(jnp.float32)  # what the product sees of the float32 operand
  out, vjp = jax.vjp(lambda x, y: L.mixed_einsum(spec, x, y, BF16), a.astype(BF16), b)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, hi(spec, a, b16), rtol=1e-5, atol=1e-5)
  da, db = vjp(cot)
  # Each gradient in its operand's dtype: the bfloat16 activation's in bfloat16, the
  # float32 weight's in float32 (not rounded to bfloat16 on the way).
  assert (da.dtype, db.dtype) == (BF16, jnp.float32)
  inputs, out_sub = spec.split("->")
  s1, s2 = inputs.split(",")
  np.testing.assert_allclose(np.asarray(da, np.float32),
                             hi(f"{out_sub},{s2}->{s1}", cot, b16), rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(db, hi(f"{s1},{out_sub}->{s2}", a, cot), rtol=1e-5, atol=1e-5)


def test_mixed_einsum_rejects_specs_its_gradient_rule_cannot_transpose():
  with pytest.raises(ValueError, match="every operand index"):
    L.mixed_einsum("nk,ko->n", jnp.ones((2, 3)), jnp.ones((3, 4)), BF16)


def _batch(b=3, t=12):
  rng = np.random.default_rng(0)
  mask = np.ones((b, t), np.int32)
  mask[1, 7:] = mask[2, 4:] = 0
  return {"input_ids": rng.integers(5, 128, (b, t)).astype(np.int32) * mask,
          "token_type_ids": np.zeros((b, t), np.int32), "attention_mask": mask,
          "masked_positions": np.tile(np.array([[1, 2]], np.int32), (b, 1)),
          "masked_ids": rng.integers(5, 128, (b, 2)).astype(np.int32),
          "masked_weights": np.ones((b, 2), np.float32),
          "next_sentence_label": np.array([0, 1, 0], np.int32)}


def _dot_types(hlo_text):
  """(lhs, rhs, result) element types of every dot_general between matrices or larger."""
  types = []
  for m in re.finditer(r"stablehlo\.dot_general.*?: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> "
                       r"tensor<([^>]*)>", hlo_text):
    shapes = [s.split("x") for s in m.groups()]
    if min(len(shapes[0]), len(shapes[1])) >= 3:  # two dims + the type; skips mat-vec
      types.append(tuple(s[-1] for s in shapes))
  return types


@pytest.mark.parametrize("deterministic", [True, False])
def test_bfloat16_training_step_multiplies_bfloat16_in_float32(deterministic):
  """Every matrix product of the bfloat16 gradient, forward and backward, is bf16 x bf16 -> f32."""
  cfg = TINY.replace(dtype="bfloat16")
  batch = _batch()
  model = M.BertForPreTraining(cfg)
  params = model.init(jax.random.key(0), batch)["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

  def loss(p):
    out = model.apply({"params": p}, batch, deterministic=deterministic,
                      rngs={"dropout": jax.random.key(1)})
    assert out["mlm_logits"].dtype == out["nsp_logits"].dtype == jnp.float32
    return mlm_nsp_loss(out, batch)[0]

  grad = jax.jit(jax.grad(loss))
  types = _dot_types(grad.lower(params).as_text())
  # 6 dense layers and 2 attention products per layer, pooler, NSP, MLM dense, decoder:
  # each multiplied once forward and twice backward.
  assert len(types) >= 3 * (8 * cfg.num_layers + 4)
  assert set(types) == {("bf16", "bf16", "f32")}
  grads = grad(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  f32_grads = jax.jit(jax.grad(lambda p: mlm_nsp_loss(M.BertForPreTraining(TINY).apply(
      {"params": p}, batch, deterministic=deterministic, rngs={"dropout": jax.random.key(1)}),
      batch)[0]))(params)
  for g16, g32 in zip(jax.tree.leaves(grads), jax.tree.leaves(f32_grads)):
    np.testing.assert_allclose(g16, g32, atol=0.02 * float(jnp.abs(g32).max()) + 1e-6)


def test_float32_step_has_no_bfloat16():
  batch = _batch()
  model = M.BertForPreTraining(TINY)
  params = model.init(jax.random.key(0), batch)["params"]
  hlo = jax.jit(jax.grad(lambda p: mlm_nsp_loss(model.apply({"params": p}, batch), batch)[0]))
  text = hlo.lower(params).as_text()
  assert "bf16" not in text and set(_dot_types(text)) == {("f32", "f32", "f32")}


def test_bfloat16_pretraining_outputs_match_float32():
  batch = _batch()
  params = M.BertForPreTraining(TINY).init(jax.random.key(0), batch)["params"]
  out16 = M.BertForPreTraining(TINY.replace(dtype="bfloat16")).apply({"params": params}, batch)
  out32 = M.BertForPreTraining(TINY).apply({"params": params}, batch)
  for k in ("mlm_logits", "nsp_logits"):
    assert out16[k].dtype == jnp.float32
    np.testing.assert_allclose(out16[k], out32[k], atol=0.05)


def test_matmul_peak_multiplies_as_the_model_does():
  assert flops.peak_label(jnp.float32) == "float32"
  assert flops.peak_label(BF16) == "bfloat16 x bfloat16 -> float32"
  text = flops.matmul_chain(BF16, 2).lower(jnp.ones((64, 64), BF16), jnp.ones((64, 64), BF16))
  assert set(_dot_types(text.as_text())) == {("bf16", "bf16", "f32")}
  assert flops.measure_matmul_peak(BF16, n=64, repeats=1) > 0
