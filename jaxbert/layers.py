"""Layers the BERT model is built from, written for what XLA compiles well.

Each computes exactly what its plain jnp / flax counterpart does (tests/test_model.py
checks values and gradients); they differ in how XLA:CPU lowers them, measured on the
`small` pre-training step with tools/bench.py (README, Performance).
"""

from __future__ import annotations

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


class RowDense(nn.Dense):
  """nn.Dense applied to the rows of x (..., in) flattened to (N, in).

  Same parameters and outputs as nn.Dense. The flattening is for the backward pass:
  with (B, T, in) inputs the kernel gradient contracts two axes, and XLA:CPU copies a
  transposed (B*T, out) gradient for it in every layer; with one row axis the GEMM takes
  the transpose itself (the `small` step ran 1.09x faster without those copies).
  """

  def __call__(self, inputs: Array) -> Array:
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))  # (..., in) -> (N, in)
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
