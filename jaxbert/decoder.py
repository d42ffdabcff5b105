"""GPT-style decoders in Flax linen: GPT-2 and Llama-style, exact to their transformers models.

GPT-2: learned positions, pre-LayerNorm blocks, tanh-GELU ("gelu_new") MLP, biases
everywhere, tied input/output embeddings. Llama-style: rotary positions (base rope_theta,
the rotate-half layout of transformers), RMSNorm, SwiGLU MLP, grouped-query attention,
no biases, tied or untied output.

Parameter tree (the selector language of jaxbert.params works on it unchanged):
    decoder/embeddings/tokens/embedding, decoder/embeddings/positions/embedding (gpt2)
    decoder/layer_N/{attn_norm,mlp_norm}/{scale[,bias]}
    decoder/layer_N/attn/{query,key,value,out}/{kernel[,bias]}
    decoder/layer_N/mlp/{up,down}/... (gpt2) or mlp/{gate,up,down}/kernel (llama)
    decoder/final_norm/..., lm_head/kernel (untied only)
Parameters are float32; `dtype` "bfloat16" runs the matrix products with bfloat16
operands and float32 accumulation (layers.mixed_einsum), norms and softmax in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert import decoder_cache
from jaxbert.decoder_cache import DecoderCache, init_cache  # noqa: F401  (the public API)
from jaxbert.dropout import Dropout
from jaxbert.layers import RowDense, is_narrow, mixed_einsum

Array = jax.Array
ARCHS = ("gpt2", "llama")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Decoder hyperparameters; the defaults are GPT-2 (124M)."""

  arch: str = "gpt2"
  vocab_size: int = 50257
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 1024
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = True
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  dtype: str = "float32"  # computation dtype: "float32" or "bfloat16"
  remat: bool = False     # recompute each layer's activations in the backward pass

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ValueError(f"arch {self.arch!r} must be one of {ARCHS}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if self.arch == "gpt2" and self.num_kv_heads != self.num_heads:
      raise ValueError("gpt2 has no grouped-query attention: num_kv_heads must equal num_heads")
    if self.arch == "gpt2" and not self.tie_word_embeddings:
      raise ValueError("gpt2 ties its input and output embeddings: tie_word_embeddings must be True")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype {self.dtype!r} must be 'float32' or 'bfloat16'")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> "DecoderConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DecoderConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown DecoderConfig keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


_GPT2 = dict(arch="gpt2", vocab_size=50257, max_position_embeddings=1024, norm_eps=1e-5)
_LLAMA = dict(arch="llama", norm_eps=1e-5, tie_word_embeddings=False)
PRESETS = {
    # (layers, hidden, heads, kv heads, MLP) and the rest.
    "gpt-tiny": dict(_GPT2, num_layers=2, hidden_size=128, num_heads=2, num_kv_heads=2,
                     intermediate_size=512, vocab_size=8192, max_position_embeddings=256),
    "gpt-mini": dict(_GPT2, num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=4,
                     intermediate_size=1024, vocab_size=8192, max_position_embeddings=512),
    "gpt2": dict(_GPT2, num_layers=12, hidden_size=768, num_heads=12, num_kv_heads=12,
                 intermediate_size=3072, dropout_rate=0.1),
    "gpt2-medium": dict(_GPT2, num_layers=24, hidden_size=1024, num_heads=16, num_kv_heads=16,
                        intermediate_size=4096, dropout_rate=0.1),
    "llama-tiny": dict(_LLAMA, num_layers=2, hidden_size=128, num_heads=4, num_kv_heads=2,
                       intermediate_size=256, vocab_size=8192, max_position_embeddings=256),
    "smollm2-135m": dict(_LLAMA, num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3,
                         intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
}


def is_decoder_preset(name: str) -> bool:
  return name in PRESETS


def decoder_preset(name: str, **overrides) -> DecoderConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown decoder preset {name!r}; choose one of {list(PRESETS)}")
  return DecoderConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- layers


def _dense(cfg: DecoderConfig, features: int, name: str, std: float | None = None) -> RowDense:
  return RowDense(features, use_bias=cfg.arch == "gpt2", dtype=cfg.compute_dtype,
                  param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.normal(std or cfg.initializer_range))


def _einsum(cfg: DecoderConfig, spec: str, a: Array, b: Array) -> Array:
  if is_narrow(cfg.compute_dtype):
    return mixed_einsum(spec, a, b, cfg.compute_dtype)
  return jnp.einsum(spec, a, b)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, in float32 (as LlamaRMSNorm), output in the computation dtype."""

  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (scale * x).astype(self.dtype)


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
  if cfg.arch == "llama":
    return RMSNorm(cfg.norm_eps, cfg.compute_dtype, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                      name=name)


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding of x (B, T, heads, D) at positions (B, T), transformers' rotate-half layout."""
  d = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # (D/2,)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, D)
  x = x.astype(jnp.float32)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * jnp.cos(angles) + rotated * jnp.sin(angles)


class Attention(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic, cache=None, layer=0):
    cfg = self.cfg
    b, t, _ = x.shape
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _dense(cfg, h * d, "query")(x).reshape(b, t, h, d)
    k = _dense(cfg, kv * d, "key")(x).reshape(b, t, kv, d)
    v = _dense(cfg, kv * d, "value")(x).reshape(b, t, kv, d)
    if cfg.arch == "llama":
      q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    if cache is not None:
      cache = decoder_cache.write_layer(cache, layer, k, v)
      k, v = cache.k[layer], cache.v[layer]  # (B, S, KV, D): every slot, masked below
    # Grouped-query attention: query head kv * g + j reads key/value head kv.
    q = q.reshape(b, t, kv, h // kv, d)
    scores = _einsum(cfg, "btkgd,bskd->bkgts", q.astype(cfg.compute_dtype),
                     k.astype(cfg.compute_dtype)).astype(jnp.float32) / math.sqrt(d)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
    probs = Dropout(cfg.dropout_rate)(probs, deterministic=deterministic)
    ctx = _einsum(cfg, "bkgts,bskd->btkgd", probs, v.astype(cfg.compute_dtype))
    ctx = ctx.reshape(b, t, h * d)  # (B, T, KV, G, D) -> (B, T, hidden)
    std = cfg.initializer_range / math.sqrt(2 * cfg.num_layers)  # GPT-2's residual scaling
    return _dense(cfg, cfg.hidden_size, "out", std)(ctx), cache


class MLP(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    if cfg.arch == "llama":
      gate = _dense(cfg, cfg.intermediate_size, "gate")(x).astype(jnp.float32)
      up = _dense(cfg, cfg.intermediate_size, "up")(x).astype(jnp.float32)
      hidden = nn.silu(gate) * up
    else:
      hidden = nn.gelu(_dense(cfg, cfg.intermediate_size, "up")(x).astype(jnp.float32),
                       approximate=True)
    std = cfg.initializer_range / math.sqrt(2 * cfg.num_layers)
    return _dense(cfg, cfg.hidden_size, "down", std)(hidden.astype(cfg.compute_dtype))


class Block(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic, cache=None, layer=0):
    cfg = self.cfg
    a, cache = Attention(cfg, name="attn")(_norm(cfg, "attn_norm")(x), positions, mask,
                                           deterministic, cache, layer)
    x = x + Dropout(cfg.dropout_rate)(a.astype(jnp.float32), deterministic=deterministic)
    m = MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x))
    x = x + Dropout(cfg.dropout_rate)(m.astype(jnp.float32), deterministic=deterministic)
    return x, cache


class Embeddings(nn.Module):
  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    self.tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                           dtype=jnp.float32, param_dtype=jnp.float32)
    if cfg.arch == "gpt2":
      self.positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                embedding_init=nn.initializers.normal(0.01),
                                dtype=jnp.float32, param_dtype=jnp.float32)

  def __call__(self, input_ids, positions):
    x = self.tokens(input_ids)
    if self.cfg.arch == "gpt2":
      x = x + self.positions(positions)
    return x


class Decoder(nn.Module):
  """The backbone: embeddings, blocks, final norm -> hidden states (B, T, H), float32."""

  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    self.embeddings = Embeddings(cfg)
    block = nn.remat(Block, static_argnums=(4, 6)) if cfg.remat else Block
    self.layers = [block(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, "final_norm")
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, input_ids, positions, mask, deterministic, cache=None):
    x = self.dropout(self.embeddings(input_ids, positions), deterministic=deterministic)
    for i, block in enumerate(self.layers):
      x, cache = block(x, positions, mask, deterministic, cache, i)
    return self.final_norm(x).astype(jnp.float32), cache

  def attend(self, h):
    return _logits(self.cfg, h, self.embeddings.tokens.embedding, "nh,vh->nv")


def _logits(cfg: DecoderConfig, h: Array, table: Array, spec: str) -> Array:
  rows = h.reshape(-1, h.shape[-1])  # (..., H) -> (N, H), as in RowDense
  if is_narrow(cfg.compute_dtype):
    out = mixed_einsum(spec, rows, table, cfg.compute_dtype)
  else:
    out = jnp.einsum(spec, rows, table)
  return out.reshape(*h.shape[:-1], out.shape[-1]).astype(jnp.float32)


class DecoderLM(nn.Module):
  """Token ids -> next-token logits (float32), see docs of __call__."""

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.decoder = Decoder(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = LMHead(cfg)

  def __call__(self, input_ids, *, positions=None, segment_ids=None, token_mask=None,
               deterministic: bool = True, cache: DecoderCache | None = None,
               return_hidden: bool = False):
    """input_ids (B, T) -> logits (B, T, V), or (logits, new cache) when `cache` is given.

    Without a cache: causal attention, within a document when segment_ids (B, T) are
    given (0 = padding); positions default to 0..T-1. With a cache: this call's tokens
    go to slots [cache.index, cache.index + T) and attend to the valid slots before them;
    token_mask (B, T) marks real tokens (False for left padding), positions default to
    cache.index + 0..T-1. return_hidden: the final-normed hidden states (B, T, H) instead
    of logits (`head` turns them into logits, e.g. at chosen positions only).
    """
    b, t = input_ids.shape
    if cache is not None:
      if positions is None:
        positions = jnp.broadcast_to(cache.index + jnp.arange(t), (b, t))
      if token_mask is None:
        token_mask = jnp.ones((b, t), bool)
      cache = decoder_cache.mark_written(cache, token_mask)
      mask = decoder_cache.cache_mask(cache, t)
    else:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
      mask = decoder_cache.causal_mask(segment_ids, t)
    h, cache = self.decoder(input_ids, positions, mask, deterministic, cache)
    out = h if return_hidden else self.head(h)
    if cache is None:
      return out
    return out, cache.replace(index=cache.index + t)

  def head(self, h: Array) -> Array:
    """Hidden states (..., H) -> logits (..., V), float32."""
    if self.config.tie_word_embeddings:
      return self.decoder.attend(h)
    return self.lm_head(h)


class LMHead(nn.Module):
  """The untied output projection (no bias): lm_head/kernel (H, V)."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, h):
    kernel = self.param("kernel", nn.initializers.normal(self.cfg.initializer_range),
                        (self.cfg.hidden_size, self.cfg.vocab_size), jnp.float32)
    return _logits(self.cfg, h, kernel, "nh,hv->nv")


# ----------------------------------------------------------------------------- counting


def matmul_params(cfg: DecoderConfig) -> int:
  """Weights that take part in a matrix product per token (embedding lookups excluded,
  the output projection included)."""
  h, d = cfg.hidden_size, cfg.head_dim
  attn = h * (cfg.num_heads * d) * 2 + h * (cfg.num_kv_heads * d) * 2
  mlp = (3 if cfg.arch == "llama" else 2) * h * cfg.intermediate_size
  return cfg.num_layers * (attn + mlp) + h * cfg.vocab_size


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
  """Training FLOPs (forward + backward = 3 x forward) per token at sequence length seq_len.

  2 per multiply-add: the weights' products plus the two attention products, counted over
  all seq_len keys as they are executed (the causal mask saves no work here).
  """
  forward = 2 * matmul_params(cfg) + cfg.num_layers * 2 * 2 * seq_len * cfg.num_heads * cfg.head_dim
  return 3.0 * forward
