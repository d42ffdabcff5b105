"""Layers the BERT model is built from, written for what XLA compiles well.

Each computes exactly what its plain jnp / flax counterpart does (tests/test_model.py
checks values and gradients); they differ in how XLA:CPU lowers them, measured on the
`small` pre-training step with tools/bench.py (README, Performance).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def gelu(x: Array) -> Array:
  """BERT's exact GELU, x * Phi(x), in its original erf form.

  nn.gelu(approximate=False) writes it with erfc, whose expansion XLA:CPU splits into
  three passes over the (B, T, intermediate) activations; erf is one. Same values to
  within 1e-6, and the formula of the original BERT code.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def is_narrow(dtype) -> bool:
  """Whether `dtype` is a computation dtype narrower than float32 (bfloat16)."""
  return dtype is not None and jnp.dtype(dtype) != jnp.float32


def mixed_einsum(spec: str, a: Array, b: Array, dtype) -> Array:
  """jnp.einsum(spec, a, b) with both operands rounded to `dtype` and float32 accumulation.

  The result is float32, and so is every product of the backward pass: the incoming
  gradient is rounded to `dtype` and multiplied with float32 accumulation too. Autodiff
  of a plain einsum with preferred_element_type=float32 would instead multiply the
  float32 gradient by the narrow operand (a float32 GEMM after an upcast). Each operand's
  gradient comes back in that operand's own dtype, so a float32 weight gets a float32
  gradient. CPUs with bfloat16 units (AMX, AVX-512 BF16) and accelerators run these
  products at their bfloat16 rate only when they accumulate in float32; XLA:CPU's
  bfloat16-result product is several times slower.

  `spec` is a two-operand einsum without ellipses in which every index of an operand
  also appears in the other operand or in the output (all matrix products do).
  """
  spec = spec.replace(" ", "")
  inputs, out = spec.split("->")
  sa, sb = inputs.split(",")
  for mine, other in ((sa, sb), (sb, sa)):
    if "." in spec or any(c not in other + out for c in mine):
      raise ValueError(f"mixed_einsum {spec!r}: every operand index must appear in the other "
                       "operand or the output (no ellipses, no summed-out axes)")
  return _mixed_einsum(spec, jnp.dtype(dtype), a.dtype, b.dtype, a, b)


def _einsum_f32(spec: str, x: Array, y: Array) -> Array:
  """jnp.einsum accumulating in float32, each operand's batch indices moved to its front.

  XLA:CPU runs a bfloat16 x bfloat16 = float32 product only in its YNNPACK fusion, and a
  batched product whose operand has the batch axes apart ("bqhd,bhqk->bkhd") fell to a
  generic kernel that fails at run time (UNIMPLEMENTED: DotThunk BF16 x BF16 = F32).
  """
  inputs, out = spec.split("->")
  sx, sy = inputs.split(",")
  batch = [c for c in out if c in sx and c in sy]

  def batch_first(sub, v):
    order = batch + [c for c in sub if c not in batch]
    return "".join(order), jnp.transpose(v, [sub.index(c) for c in order])

  (sx, x), (sy, y) = batch_first(sx, x), batch_first(sy, y)
  return jnp.einsum(f"{sx},{sy}->{out}", x, y, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mixed_einsum(spec, dtype, a_dtype, b_dtype, a, b):
  return _einsum_f32(spec, a.astype(dtype), b.astype(dtype))


def _mixed_einsum_fwd(spec, dtype, a_dtype, b_dtype, a, b):
  a, b = a.astype(dtype), b.astype(dtype)  # the residuals are the narrow copies
  return _einsum_f32(spec, a, b), (a, b)


def _mixed_einsum_bwd(spec, dtype, a_dtype, b_dtype, narrow, g):
  a, b = narrow
  inputs, out = spec.split("->")
  sa, sb = inputs.split(",")
  g = g.astype(dtype)
  da = _einsum_f32(f"{out},{sb}->{sa}", g, b)
  db = _einsum_f32(f"{sa},{out}->{sb}", a, g)
  return da.astype(a_dtype), db.astype(b_dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


class RowDense(nn.Dense):
  """nn.Dense applied to the rows of x (..., in) flattened to (N, in).

  Same parameters and outputs as nn.Dense. The flattening is for the backward pass:
  with (B, T, in) inputs the kernel gradient contracts two axes, and XLA:CPU copies a
  transposed (B*T, out) gradient for it in every layer; with one row axis the GEMM takes
  the transpose itself (the `small` step ran 1.09x faster without those copies).

  With a narrow `dtype` (bfloat16) the product is `mixed_einsum`: bfloat16 operands,
  float32 accumulation; the bias is added in float32 and the output stays float32, so
  what follows (GELU, dropout, the residual sum, LayerNorm) runs in float32. A float32
  `dtype` takes nn.Dense's own code, unchanged.
  """

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    lead = inputs.shape[:-1]
    rows = inputs.reshape(-1, inputs.shape[-1])  # (..., in) -> (N, in)
    if is_narrow(self.dtype):
      kernel = self.param("kernel", self.kernel_init, (rows.shape[-1], self.features),
                          self.param_dtype)
      y = mixed_einsum("nk,ko->no", rows, kernel, self.dtype)
      if self.use_bias:
        y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    else:
      y = super().__call__(rows)
    return y.reshape(*lead, y.shape[-1])  # (N, out) -> (..., out)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
  """y (..., N) + bias (N,), whose bias gradient is a matrix-vector product.

  Autodiff's gradient is a sum over the rows, and XLA:CPU's column reduction over
  (positions, 30522 vocabulary) logits ran 30x slower than `ones @ rows` (75 against
  2.3 ms for 640 positions).
  """
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, g):
  rows = g.reshape(-1, g.shape[-1])  # (..., N) -> (rows, N)
  # HIGHEST: accelerators would otherwise round the summands to bfloat16 or tf32.
  return g, jnp.dot(jnp.ones((rows.shape[0],), rows.dtype), rows,
                    precision=jax.lax.Precision.HIGHEST)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
