"""The key/value cache of jaxbert.decoder.DecoderLM, and the attention masks it implies.

A cache holds every layer's keys and values for `max_len` slots. A call with T new tokens
writes them at slots [index, index + T) and advances `index`; prompts of different lengths
are left-padded, and `valid` remembers which slots hold real tokens so that pad slots are
never attended to.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class DecoderCache:
  k: Array        # (L, B, max_len, KV, head_dim)
  v: Array        # (L, B, max_len, KV, head_dim)
  valid: Array    # (B, max_len) bool: the slot holds a real (non-pad) token
  index: Array    # int32 scalar: the next slot to write

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config, batch: int, max_len: int, dtype=jnp.float32) -> DecoderCache:
  """An empty cache for `batch` rows of up to `max_len` tokens (prompt + generated)."""
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  return DecoderCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                      valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


def mark_written(cache: DecoderCache, token_mask: Array) -> DecoderCache:
  """`valid` with this call's slots [index, index + T) set from token_mask (B, T)."""
  valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool), (0, cache.index))
  return cache.replace(valid=valid)


def write_layer(cache: DecoderCache, layer: int, k: Array, v: Array) -> DecoderCache:
  """The cache with layer `layer`'s slots [index, index + T) set to k, v (B, T, KV, D)."""
  start = (layer, 0, cache.index, 0, 0)
  return cache.replace(
      k=jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
      v=jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start))


def cache_mask(cache: DecoderCache, t: int) -> Array:
  """(B, 1, T, max_len) bool: query i (slot index + i) sees the valid slots at or before it.

  Its own slot is always visible, so a pad query has a non-empty row (its output is unused).
  """
  q = cache.index + jnp.arange(t)[:, None]  # (T, 1) absolute slots of the queries
  s = jnp.arange(cache.max_len)[None, :]     # (1, S)
  mask = (s <= q)[None] & cache.valid[:, None, :] | (s == q)[None]
  return mask[:, None]


def causal_mask(segment_ids: Array | None, t: int) -> Array:
  """(B or 1, 1, T, T) bool: causal, and within a document when segment_ids (B, T) are given.

  A token always sees itself, so padding (segment 0) rows are never empty.
  """
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  if segment_ids is None:
    return causal
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return causal & same[:, None]
