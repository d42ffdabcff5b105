"""The fused dropout: its cipher against jax's threefry, mask statistics, keys; the MLM loss."""

import jax
import jax.numpy as jnp
from jax.extend import random as jex_random
import numpy as np
import optax
import pytest

from jaxbert import dropout as D
from jaxbert.heads.mlm_nsp import cross_entropy_and_hits


def test_threefry_matches_published_vector_and_jax():
  # Random123's known-answer vector for Threefry-2x32-20 with zero key and counter.
  y0, y1 = jax.jit(D.threefry2x32)(*(np.zeros((), np.uint32),) * 4)
  assert (int(y0), int(y1)) == (0x6B200159, 0x99BA4EFE)
  rng = np.random.default_rng(0)
  key = rng.integers(0, 2 ** 32, 2, dtype=np.uint32)
  x = rng.integers(0, 2 ** 32, (2, 1000), dtype=np.uint32)
  ours = jax.jit(D.threefry2x32)(key[0], key[1], x[0], x[1])
  ref = jex_random.threefry_2x32(jnp.asarray(key), jnp.asarray(x.reshape(-1)))
  np.testing.assert_array_equal(np.concatenate([np.asarray(o) for o in ours]), np.asarray(ref))


def test_dropout_rate_and_expectation():
  x = jnp.ones((64, 128, 256), jnp.float32)
  y = np.asarray(jax.jit(lambda k: D.dropout(k, 0.1, x))(jax.random.key(3)))
  kept = y != 0
  # 2.1M Bernoulli(0.9) draws: the kept fraction's standard deviation is 2e-4.
  assert abs(kept.mean() - 0.9) < 1e-3
  np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 2e-3
  # No structure along any axis: every row and column keeps about 90 %.
  assert np.abs(kept.mean(axis=(0, 1)) - 0.9).max() < 0.02
  assert np.abs(kept.mean(axis=(0, 2)) - 0.9).max() < 0.02


def test_dropout_masks_follow_the_key_only():
  x = jnp.ones((8, 16, 32))
  f = jax.jit(lambda k: D.dropout(k, 0.5, x) != 0)
  a, a2, b = f(jax.random.key(1)), f(jax.random.key(1)), f(jax.random.key(2))
  np.testing.assert_array_equal(a, a2)
  assert 0.3 < float(jnp.mean(a != b)) < 0.7  # independent masks disagree half the time
  # Any PRNG implementation can feed the key.
  c = f(jax.random.key(1, impl="rbg"))
  assert c.shape == a.shape and 0.4 < float(c.mean()) < 0.6


def test_dropout_edge_rates():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(D.dropout(jax.random.key(0), 0.0, x), x)
  np.testing.assert_array_equal(D.dropout(jax.random.key(0), 1.0, x), jnp.zeros_like(x))
  mod = D.Dropout(0.5)
  np.testing.assert_array_equal(mod.apply({}, x, deterministic=True), x)


def test_dropout_under_vmap_gives_each_key_its_own_mask():
  x = jnp.ones((4, 64))
  keys = jax.random.split(jax.random.key(0), 3)
  masks = jax.vmap(lambda k: D.dropout(k, 0.5, x) != 0)(keys)
  for i, k in enumerate(keys):
    np.testing.assert_array_equal(masks[i], D.dropout(k, 0.5, x) != 0)
  assert not np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cross_entropy_and_hits_match_optax_and_argmax(scale):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 20, 1000)) * scale, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 1000, (6, 20)), jnp.int32)
  labels = labels.at[0, :5].set(logits[0, :5].argmax(-1))  # some hits
  ce, hit = cross_entropy_and_hits(logits, labels)
  np.testing.assert_allclose(ce, optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(hit, logits.argmax(-1) == labels)
  grad = jax.grad(lambda l: cross_entropy_and_hits(l, labels)[0].sum())(logits)
  ref = jax.grad(lambda l: optax.softmax_cross_entropy_with_integer_labels(l, labels).sum())(logits)
  np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-6)
