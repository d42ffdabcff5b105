"""Choosing the next token from a decoder's logits: greedy, or sampled with temperature,
top-k and top-p, in the order transformers' `generate` applies them.

Everything here is traced inside the jitted decode loop; the settings are Python values
(static), so a run compiles the one rule it uses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxbert.errors import UserError


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 means greedy (argmax); top_k 0 and top_p 1 switch those filters off."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  def check(self, vocab_size: int) -> "Sampling":
    if not self.temperature >= 0.0:
      raise UserError(f"--temperature {self.temperature} is invalid: use 0 (greedy) or a "
                      "positive number")
    if self.top_k < 0 or self.top_k > vocab_size:
      raise UserError(f"--top-k {self.top_k} is invalid: use 0 (off) or 1..{vocab_size} "
                      "(the vocabulary size)")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"--top-p {self.top_p} is invalid: use a number in (0, 1] (1 is off)")
    return self


def filter_logits(logits: jax.Array, s: Sampling) -> jax.Array:
  """Temperature-scaled logits (B, V) with the tokens top-k/top-p exclude set to -inf."""
  logits = logits.astype(jnp.float32) / s.temperature
  if s.top_k:
    kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if s.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix of the sorted tokens whose mass reaches top_p: a token stays
    # if the mass before it is still below top_p (so the most likely token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < s.top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
        keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def next_token(logits: jax.Array, s: Sampling, key: jax.Array) -> jax.Array:
  """(B,) int32: the chosen token of each row of logits (B, V)."""
  if s.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, s), axis=-1).astype(jnp.int32)
