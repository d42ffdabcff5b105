"""Dropout whose random numbers XLA fuses into the masking itself.

`jax.random` on CPU lowers threefry's 20 rounds as a rolled loop: every dropout
site materialises its random words and runs five loop iterations over them in
memory, 6 % of a BERT-small training step on this machine. Here the same cipher,
Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011; jax's default generator), is written as plain jnp operations on
a counter made of iotas, so the whole mask is one elementwise fusion and no random
array is ever stored. The key is drawn from the flax "dropout" stream, so masks
still depend only on (seed, step, module path), whatever the PRNG implementation.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32, 20 rounds: key words (k0, k1), counter words (x0, x1) -> 2 words.

  All arguments are uint32 and broadcast together; equals
  `jax.extend.random.threefry_2x32` (tests/test_dropout.py checks it).
  """
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
      x1 = x1 ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def random_words(key_words, shape) -> jax.Array:
  """One uint32 per element of `shape`: the cipher of the element's row-major index."""
  size = math.prod(shape)
  if size >= 2 ** 32:
    raise ValueError(f"dropout over {size} elements needs a wider counter than 32 bits")
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(stride)
    stride *= shape[d]
  words, _ = threefry2x32(key_words[..., 0], key_words[..., 1], index, np.uint32(0))
  return words


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
  """Inverted dropout: each element kept with probability 1 - rate (to 2**-32), then scaled.

  The kept fraction is threshold / 2**32 exactly, and kept values are scaled by its
  inverse, so the expectation of the output equals x.
  """
  threshold = round((1.0 - rate) * 2 ** 32)
  if threshold >= 2 ** 32:
    return x
  if threshold <= 0:
    return jnp.zeros_like(x)
  key_words = jax.random.bits(key, (2,), jnp.uint32)
  keep = random_words(key_words, x.shape) < np.uint32(threshold)
  return jnp.where(keep, x * jnp.asarray(2 ** 32 / threshold, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
  """`dropout` with its key from the module's "dropout" rng stream."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return dropout(self.make_rng("dropout"), self.rate, x)
