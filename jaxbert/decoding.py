"""Batched generation with a KV cache: one jitted prefill, then a jitted decode loop.

Prompts of different lengths are left-padded to one length T, so every row's last prompt
token sits in the same column; positions count real tokens only (cumsum of the mask - 1)
and pad slots are marked invalid in the cache, so padding changes nothing a row sees.
The prefill runs the prompts through the model once, filling cache slots [0, T), and
chooses each row's first new token. The decode loop (`jax.lax.while_loop`) feeds one token
per row per iteration: no Python runs per token. It writes new tokens into a (B, N)
buffer, marks a row done when it produces an end-of-sequence token (later columns hold
`pad_id`) and exits when every row is done or N tokens are made.

`run(..., chunk=C, on_chunk=f)` runs the same loop C tokens per call and hands the tokens
so far to `f` between calls (streaming to a terminal); the random key of the token in
column i is `fold_in(seed key, i)`, so chunking changes no token.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import decoder as decoder_lib
from jaxbert.sampling import Sampling, next_token

Array = jax.Array


@flax.struct.dataclass
class DecodeState:
  cache: object      # decoder.DecoderCache
  tokens: Array      # (B, N) int32: generated tokens, pad_id after a row's end
  last: Array        # (B,) int32: the token each row feeds next
  position: Array    # (B,) int32: its position
  done: Array        # (B,) bool: the row has produced an end-of-sequence token
  length: Array      # (B,) int32: tokens generated per row (its end-of-sequence included)
  step: Array        # int32 scalar: columns of `tokens` filled so far
  key: Array


@dataclasses.dataclass
class Generation:
  tokens: list[list[int]]   # per prompt: the new tokens (an end-of-sequence token included)
  stopped: list[bool]       # per prompt: it ended with an end-of-sequence token
  prefill_s: float
  decode_s: float
  compile_s: float

  @property
  def num_new_tokens(self) -> int:
    return sum(len(t) for t in self.tokens)

  @property
  def tokens_per_s(self) -> float:
    return self.num_new_tokens / max(self.prefill_s + self.decode_s, 1e-9)


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
  """(ids, mask) (B, length): each prompt right-aligned, pad_id before it."""
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if p:
      ids[i, length - len(p):] = p
      mask[i, length - len(p):] = True
  return ids, mask


class Generator:
  """Jitted prefill and decode loop of one model, sampling rule and stop tokens."""

  def __init__(self, model, sampling: Sampling = Sampling(), eos_ids: Sequence[int] = (),
               pad_id: int = 0, cache_dtype=None):
    self.model = model
    self.config = model.config
    self.sampling = sampling
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.pad_id = int(pad_id)
    self.cache_dtype = cache_dtype or jnp.dtype(self.config.dtype)
    self._compiled: dict = {}

  # --- traced -----------------------------------------------------------------------------

  def _is_eos(self, tok: Array) -> Array:
    if not self.eos_ids:
      return jnp.zeros(tok.shape, bool)
    return jnp.isin(tok, jnp.asarray(self.eos_ids, jnp.int32))

  def _prefill(self, params, ids: Array, mask: Array, key: Array, max_new_tokens: int):
    batch, t = ids.shape
    cache = decoder_lib.init_cache(self.config, batch, t + max_new_tokens, self.cache_dtype)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    hidden, cache = self.model.apply({"params": params}, ids, positions=positions,
                                     token_mask=mask, cache=cache, return_hidden=True)
    # Only the last column's logits are needed (left padding puts every row's last prompt
    # token there): the (B, T, vocab) logits of the whole prompt are never formed.
    logits = self.model.apply({"params": params}, hidden[:, -1], method=self.model.head)
    first = next_token(logits, self.sampling, jax.random.fold_in(key, 0))
    tokens = jnp.full((batch, max_new_tokens), self.pad_id, jnp.int32).at[:, 0].set(first)
    return DecodeState(cache=cache, tokens=tokens, last=first,
                       position=jnp.sum(mask, axis=-1).astype(jnp.int32),
                       done=self._is_eos(first), length=jnp.ones((batch,), jnp.int32),
                       step=jnp.ones((), jnp.int32), key=key)

  def _decode(self, params, state: DecodeState, steps: int) -> DecodeState:
    max_new_tokens = state.tokens.shape[1]
    stop = jnp.minimum(state.step + steps, max_new_tokens)

    def cond(s: DecodeState):
      return (s.step < stop) & ~jnp.all(s.done)

    def body(s: DecodeState):
      logits, cache = self.model.apply(
          {"params": params}, s.last[:, None], positions=s.position[:, None],
          token_mask=jnp.ones_like(s.last[:, None], bool), cache=s.cache)
      tok = next_token(logits[:, -1], self.sampling, jax.random.fold_in(s.key, s.step))
      tok = jnp.where(s.done, self.pad_id, tok)
      return s.replace(
          cache=cache, tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
          last=tok, position=s.position + 1, length=s.length + (~s.done).astype(jnp.int32),
          done=s.done | self._is_eos(tok), step=s.step + 1)

    return jax.lax.while_loop(cond, body, state)

  # --- compiled ---------------------------------------------------------------------------

  def _functions(self, params, batch: int, t: int, max_new_tokens: int, steps: int):
    """The prefill and a decode loop of `steps` tokens, compiled ahead of time for these shapes."""
    key = (batch, t, max_new_tokens, steps)
    if key not in self._compiled:
      ids = jax.ShapeDtypeStruct((batch, t), jnp.int32)
      mask = jax.ShapeDtypeStruct((batch, t), bool)
      rng = jax.eval_shape(lambda: jax.random.key(0))
      prefill_fn = jax.jit(functools.partial(self._prefill, max_new_tokens=max_new_tokens))
      prefill = prefill_fn.lower(params, ids, mask, rng).compile()
      state = jax.eval_shape(prefill_fn, params, ids, mask, rng)
      decode = jax.jit(functools.partial(self._decode, steps=steps), donate_argnums=1)
      decode = decode.lower(params, state).compile()
      self._compiled[key] = (prefill, decode)
    return self._compiled[key]

  def run(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seed: int = 0,
          length: int | None = None, batch: int | None = None, chunk: int | None = None,
          on_chunk: Callable[[np.ndarray], None] | None = None) -> Generation:
    """Up to `max_new_tokens` new tokens for each prompt (one batch).

    length / batch: pad the prompts to this length and the batch to this many rows (so
    calls with different prompts share one compiled program); chunk: tokens per decode
    call, with on_chunk(tokens (B, n) so far) called after the prefill and each call.
    """
    length = length or max(len(p) for p in prompts)
    batch = batch or len(prompts)
    rows = list(prompts) + [prompts[0]] * (batch - len(prompts))
    ids, mask = left_pad(rows, length, self.pad_id)
    steps = chunk or max_new_tokens
    start = time.perf_counter()
    prefill, decode = self._functions(params, batch, length, max_new_tokens, steps)
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    state = prefill(params, ids, mask, jax.random.key(seed))
    jax.block_until_ready(state)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    while True:
      if on_chunk is not None:
        on_chunk(np.asarray(state.tokens[:, :int(state.step)]))
      if int(state.step) >= max_new_tokens or bool(jnp.all(state.done)):
        break
      state = decode(params, state)
    jax.block_until_ready(state)
    decode_s = time.perf_counter() - start

    tokens, lengths = np.asarray(state.tokens), np.asarray(state.length)
    done = np.asarray(state.done)
    n = len(prompts)
    return Generation([tokens[i, :lengths[i]].tolist() for i in range(n)],
                      [bool(done[i]) for i in range(n)], prefill_s, decode_s, compile_s)
