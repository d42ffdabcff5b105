"""BERT in Flax linen, exactly as the original: post-LayerNorm blocks, erf GELU, tanh pooler.

Parameter names follow the Hugging Face layout (`bert/encoder/layer_3/attention/query/...`)
so that checkpoint conversion is a transpose, not a translation table. Parameters are
float32; `BertConfig.dtype` sets the computation dtype.

With dtype "bfloat16" every matrix product (dense layers, the two attention products, the
tied decoder) multiplies bfloat16 operands with float32 accumulation and a float32 result,
backward products included (layers.mixed_einsum); embedding sums, softmax, LayerNorm and
the losses are float32, and LayerNorm hands bfloat16 to the products that follow it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbert.dropout import Dropout
from jaxbert.layers import RowDense, add_bias, gelu, is_narrow, mixed_einsum

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Model hyperparameters; the defaults are bert-base-uncased."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # erf GELU, as in the original; "gelu_tanh" and "relu" also work.
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  dtype: str = "float32"  # computation dtype: "float32" or "bfloat16"
  remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype {self.dtype!r} must be 'float32' or 'bfloat16'")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> "BertConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown BertConfig keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


# Google's published BERT sizes (Turc et al. 2019 for the small ones): (layers, hidden, heads).
_PRESETS = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, **overrides) -> BertConfig:
  """A published BERT size by name ("tiny" ... "large"), intermediate size 4x hidden."""
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {list(_PRESETS)}")
  layers, hidden, heads = _PRESETS[name]
  return BertConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                    intermediate_size=4 * hidden, **overrides)


_ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


def _dense(cfg: BertConfig, features: int, name: str) -> nn.Dense:
  return RowDense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)


def _layer_norm(cfg: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                      param_dtype=jnp.float32, name=name)


def _einsum(cfg: BertConfig, spec: str, a: Array, b: Array) -> Array:
  """A product in the model's dtype: float32 as jnp.einsum, bfloat16 with float32 accumulation."""
  if is_narrow(cfg.compute_dtype):
    return mixed_einsum(spec, a, b, cfg.compute_dtype)
  return jnp.einsum(spec, a, b)


def attention_mask_from_segments(segments: Array) -> Array:
  """Boolean (B, 1, T, T) mask from per-token document ids (0 = padding).

  A plain 0/1 padding mask is the one-document case. With packed rows (several
  documents per row, numbered 1, 2, ...) a token sees only its own document.
  Padding queries see every real key, so no softmax row is empty (their outputs
  are never used).
  """
  q = segments[:, :, None]  # (B, T, 1)
  k = segments[:, None, :]  # (B, 1, T)
  mask = (k > 0) & ((q == k) | (q == 0))
  return mask[:, None, :, :]


class BertLayer(nn.Module):
  """One post-LayerNorm transformer block (names mirror Hugging Face's BertLayer)."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic):
    x = _Attention(self.cfg, name="attention")(x, mask, deterministic)
    h = _Intermediate(self.cfg, name="intermediate")(x)
    return _Output(self.cfg, name="output")(h, x, deterministic)


class _Intermediate(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x):
    return _ACTIVATIONS[self.cfg.hidden_act](_dense(self.cfg, self.cfg.intermediate_size, "dense")(x))


class _Attention(nn.Module):
  """attention/{query,key,value} and attention/output/{dense,LayerNorm}."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic):
    cfg = self.cfg
    b, t, _ = x.shape
    head_dim = cfg.hidden_size // cfg.num_heads
    # (B, T, hidden) -> (B, T, heads, head_dim)
    q, k, v = (_dense(cfg, cfg.hidden_size, n)(x).reshape(b, t, cfg.num_heads, head_dim)
               for n in ("query", "key", "value"))
    fused = deterministic or cfg.attention_dropout == 0.0
    if fused and not is_narrow(cfg.compute_dtype):
      ctx = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      # jax.nn.dot_product_attention has no dropout on the probabilities, which BERT has,
      # and in bfloat16 its second product has a bfloat16 result (slow on CPU).
      logits = _einsum(cfg, "bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1).astype(cfg.compute_dtype)
      probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
      ctx = _einsum(cfg, "bhqk,bkhd->bqhd", probs, v)
    ctx = ctx.reshape(b, t, cfg.hidden_size)  # (B, T, heads, head_dim) -> (B, T, hidden)
    return _Output(cfg, name="output")(ctx, x, deterministic)


class _Output(nn.Module):
  """dense -> dropout -> LayerNorm(residual + .): the post-LN sub-block ending."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, h, residual, deterministic):
    h = _dense(self.cfg, self.cfg.hidden_size, "dense")(h)
    h = Dropout(self.cfg.hidden_dropout)(h, deterministic=deterministic)
    return _layer_norm(self.cfg)(h + residual)


class BertEmbeddings(nn.Module):
  """Word + learned position + token-type embeddings, LayerNorm, dropout."""

  cfg: BertConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    # Lookups and their sum in float32 (a bfloat16 Embed would round the whole table
    # every step); the LayerNorm after them outputs the computation dtype.
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init,
                                     dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    self.word_embeddings = embed(cfg.vocab_size, "word_embeddings")
    self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings")
    self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings")
    self.LayerNorm = _layer_norm(cfg)
    self.dropout = Dropout(cfg.hidden_dropout)

  def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
    x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
         + self.token_type_embeddings(token_type_ids))
    return self.dropout(self.LayerNorm(x), deterministic)


class BertEncoder(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic):
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.cfg.remat else BertLayer
    for i in range(self.cfg.num_layers):
      x = layer_cls(self.cfg, name=f"layer_{i}")(x, mask, deterministic)
    return x


class BertPooler(nn.Module):
  """dense + tanh on the [CLS] output: position 0 (B, H), or `cls_positions` (B, S) -> (B, S, H)."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, x, cls_positions=None):
    cls = x[:, 0] if cls_positions is None else gather_positions(x, cls_positions)
    return jnp.tanh(_dense(self.cfg, self.cfg.hidden_size, "dense")(cls))


class BertModel(nn.Module):
  """The encoder: token ids -> (sequence output (B, T, H), pooled [CLS] output (B, H)).

  A packed row (jaxbert/data/packing.py) holds several examples: `cls_positions` (B, S)
  names their [CLS] pieces and the pooled output is (B, S, H).
  """

  cfg: BertConfig

  def setup(self):
    self.embeddings = BertEmbeddings(self.cfg)
    self.encoder = BertEncoder(self.cfg)
    self.pooler = BertPooler(self.cfg)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
               cls_positions=None, *, deterministic: bool = True):
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
    x = self.encoder(x, attention_mask_from_segments(attention_mask), deterministic)
    return x, self.pooler(x, cls_positions)

  def attend(self, x):
    """Logits against the word embeddings (the tied MLM decoder); x (..., H) -> (..., V).

    Rows flattened as in RowDense: the embedding gradient then needs no transposed copy of
    the (positions, vocabulary) logit gradient.
    """
    rows = x.reshape(-1, x.shape[-1])  # (..., H) -> (N, H)
    table = self.embeddings.word_embeddings
    if is_narrow(self.cfg.compute_dtype):
      logits = mixed_einsum("nh,vh->nv", rows, table.embedding, self.cfg.compute_dtype)
    else:
      logits = table.attend(rows)  # (N, V)
    return logits.reshape(*x.shape[:-1], logits.shape[-1])


def _encode(bert: BertModel, batch: dict[str, Array], deterministic: bool):
  # Packed rows name each token's example (segment_ids 1, 2, ...; 0 padding): a token
  # attends within its own example only. Unpacked rows: the 0/1 attention_mask.
  mask = batch.get("segment_ids", batch.get("attention_mask"))
  return bert(batch["input_ids"], batch.get("token_type_ids"), mask,
              batch.get("position_ids"), batch.get("nsp_positions"),
              deterministic=deterministic)


class MaskedLMHead(nn.Module):
  """dense -> GELU -> LayerNorm -> tied decoder + bias, only at the gathered positions."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, h, attend):
    h = _ACTIVATIONS[self.cfg.hidden_act](_dense(self.cfg, self.cfg.hidden_size, "dense")(h))
    h = _layer_norm(self.cfg)(h)
    bias = self.param("bias", nn.initializers.zeros, (self.cfg.vocab_size,), jnp.float32)
    return add_bias(attend(h).astype(jnp.float32), bias)


def gather_positions(x: Array, positions: Array) -> Array:
  """x (B, T, H), positions (B, P) -> (B, P, H)."""
  return jnp.take_along_axis(x, positions[..., None], axis=1)


class BertForPreTraining(nn.Module):
  """Encoder + masked-LM head (at `masked_positions` only) + next-sentence head.

  nsp_logits are (B, 2), or (B, S, 2) for packed rows (one per example, see BertModel).
  """

  cfg: BertConfig

  def setup(self):
    self.bert = BertModel(self.cfg)
    self.mlm = MaskedLMHead(self.cfg)
    self.nsp = _dense(self.cfg, 2, "nsp")

  def __call__(self, batch, *, deterministic: bool = True):
    seq, pooled = _encode(self.bert, batch, deterministic)
    # The vocabulary matmul runs on P << T gathered positions only.
    mlm_logits = self.mlm(gather_positions(seq, batch["masked_positions"]), self.bert.attend)
    return {"mlm_logits": mlm_logits, "nsp_logits": self.nsp(pooled).astype(jnp.float32)}


class BertForSequenceClassification(nn.Module):
  """Pooled output -> dropout -> num_labels logits (num_labels=1: regression).

  pooling "cls": the pooler's dense + tanh on [CLS] (BERT's); "mean": the average of
  the sequence output over the real (attention_mask) pieces, the pooler unused.
  """

  cfg: BertConfig
  num_labels: int
  pooling: str = "cls"

  @nn.compact
  def __call__(self, batch, *, deterministic: bool = True):
    seq, pooled = _encode(BertModel(self.cfg, name="bert"), batch, deterministic)
    if self.pooling == "mean":
      seq = seq.astype(jnp.float32)  # the sum over T pieces in float32
      real = batch["attention_mask"][..., None].astype(seq.dtype)  # (B, T, 1)
      pooled = (seq * real).sum(1) / jnp.maximum(real.sum(1), 1)
    pooled = Dropout(self.cfg.hidden_dropout)(pooled, deterministic=deterministic)
    return {"logits": _dense(self.cfg, self.num_labels, "classifier")(pooled).astype(jnp.float32)}


class BertForTokenClassification(nn.Module):
  """Every token -> dropout -> num_labels logits (NER)."""

  cfg: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, batch, *, deterministic: bool = True):
    seq, _ = _encode(BertModel(self.cfg, name="bert"), batch, deterministic)
    seq = Dropout(self.cfg.hidden_dropout)(seq, deterministic=deterministic)
    return {"logits": _dense(self.cfg, self.num_labels, "classifier")(seq).astype(jnp.float32)}


class BertForQuestionAnswering(nn.Module):
  """Every token -> (start, end) logits for extractive QA."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, batch, *, deterministic: bool = True):
    seq, _ = _encode(BertModel(self.cfg, name="bert"), batch, deterministic)
    logits = _dense(self.cfg, 2, "qa_outputs")(seq).astype(jnp.float32)  # (B, T, 2)
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


class BertEncoderOnly(nn.Module):
  """The bare encoder under the "bert" key (feature extraction, parity checks)."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, batch, *, deterministic: bool = True):
    seq, pooled = _encode(BertModel(self.cfg, name="bert"), batch, deterministic)
    return {"sequence_output": seq.astype(jnp.float32), "pooled_output": pooled.astype(jnp.float32)}


def dummy_batch(cfg: BertConfig, batch_size: int = 1, seq_len: int = 8, predictions: int = 2):
  """A batch of the right structure for `init`/`eval_shape`."""
  ids = jnp.zeros((batch_size, seq_len), jnp.int32)
  return {"input_ids": ids, "token_type_ids": ids, "attention_mask": jnp.ones_like(ids),
          "masked_positions": jnp.zeros((batch_size, predictions), jnp.int32)}
