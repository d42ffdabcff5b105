"""Analytic FLOP counts for MFU, and the device's measured matmul peak.

We count executed matmul FLOPs (2 per multiply-add), forward x 3 for training
(backward = 2 x forward). The masked-LM decoder is counted at the P gathered
positions it actually runs on, not at every token: the honest denominator for a
sparse head. Elementwise work (softmax, GELU, LayerNorm) is left out, as usual.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxbert.model import BertConfig


def encoder_forward_flops(cfg: BertConfig, seq_len: int) -> float:
  """One sequence through embeddings-to-pooler."""
  t, h, i = seq_len, cfg.hidden_size, cfg.intermediate_size
  per_layer = (2 * t * h * 4 * h      # Q, K, V and output projections
               + 2 * t * h * i * 2    # the two feed-forward matmuls
               + 2 * t * t * h * 2)   # scores Q.K^T and probabilities x V
  return cfg.num_layers * per_layer + 2 * h * h  # + pooler


def pretraining_flops_per_sequence(cfg: BertConfig, seq_len: int, predictions: int) -> float:
  """Training FLOPs (forward + backward) of one sequence with MLM + NSP heads."""
  h = cfg.hidden_size
  mlm = 2 * predictions * h * h + 2 * predictions * h * cfg.vocab_size
  forward = encoder_forward_flops(cfg, seq_len) + mlm + 2 * h * 2
  return 3.0 * forward


def finetune_flops_per_sequence(cfg: BertConfig, seq_len: int, head_outputs: int) -> float:
  return 3.0 * (encoder_forward_flops(cfg, seq_len) + 2 * seq_len * cfg.hidden_size * head_outputs)


def peak_label(dtype) -> str:
  """How `measure_matmul_peak(dtype)` multiplies, for tables: the peak an MFU is against."""
  dtype = jnp.dtype(dtype)
  return "float32" if dtype == jnp.float32 else f"{dtype.name} x {dtype.name} -> float32"


def measure_matmul_peak(dtype=jnp.float32, n: int | None = None, repeats: int = 5,
                        chain: int = 4) -> float:
  """FLOP/s of n x n matmuls on the default device: the best of `repeats` timings.

  In a dtype narrower than float32 (bfloat16) the operands are in that dtype and the
  products accumulate in float32, as the model computes them (layers.mixed_einsum);
  a bfloat16-result product is a different (on XLA:CPU, several times slower) kernel.

  Each timing runs `chain` dependent products inside one jitted call, so dispatch
  and synchronisation are paid once per `chain` products (it matters on GPUs,
  where one product takes about a millisecond). The data is random and scaled to
  stay bounded: accelerators run measurably faster on all-zero or constant inputs.
  n defaults to 2048 on CPU and 8192 elsewhere (too small a product underfills a GPU).
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  a = (jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / n ** 0.5).astype(dtype)
  products = matmul_chain(dtype, chain)
  products(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    products(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return chain * 2 * n ** 3 / best


def matmul_chain(dtype, chain: int):
  """jit of x -> x @ m, `chain` times: products of `dtype` operands accumulating in float32."""

  def product(y, m):
    return jnp.dot(y, m, preferred_element_type=jnp.float32).astype(dtype)

  return jax.jit(lambda x, m: jax.lax.fori_loop(0, chain, lambda _, y: product(y, m), x))
