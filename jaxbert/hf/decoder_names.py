"""Hugging Face names and configs of the decoder family, one entry per config.json model_type.

`ARCHS[model_type]` knows a family's config.json <-> DecoderConfig and its tensor table.
A table row maps one Hugging Face tensor to one or more Flax parameter paths:
    "linear"  a torch Linear weight (out, in) <-> Flax kernel (in, out)
    "conv1d"  GPT-2's Conv1D weight, already (in, out)
    "qkv"     GPT-2's fused c_attn (in, 3 * out) <-> query, key, value kernels (or biases)
    "plain"   same layout (embeddings, norm scales, biases)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxbert.decoder import DecoderConfig
from jaxbert.errors import UserError


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str
  paths: tuple[tuple[str, ...], ...]
  kind: str = "plain"

  def to_flax(self, t: np.ndarray) -> list[np.ndarray]:
    if self.kind == "linear":
      return [t.T]
    if self.kind == "qkv":
      return list(np.split(t, 3, axis=-1))
    return [t]

  def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
    if self.kind == "linear":
      return arrays[0].T
    if self.kind == "qkv":
      return np.concatenate(arrays, axis=-1)
    return arrays[0]


def _p(*parts: str) -> tuple[str, ...]:
  return tuple("/".join(parts).split("/"))


# ----------------------------------------------------------------------------- GPT-2


def _gpt2_rows(cfg: DecoderConfig) -> list[Row]:
  rows = [Row("transformer.wte.weight", (_p("decoder/embeddings/tokens/embedding"),)),
          Row("transformer.wpe.weight", (_p("decoder/embeddings/positions/embedding"),))]
  for i in range(cfg.num_layers):
    hf, fx = f"transformer.h.{i}", f"decoder/layer_{i}"
    for norm, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
      rows += [Row(f"{hf}.{norm}.weight", (_p(fx, ours, "scale"),)),
               Row(f"{hf}.{norm}.bias", (_p(fx, ours, "bias"),))]
    for leaf in ("kernel", "bias"):
      hf_leaf = "weight" if leaf == "kernel" else "bias"
      kind = "conv1d" if leaf == "kernel" else "plain"
      rows.append(Row(f"{hf}.attn.c_attn.{hf_leaf}",
                      tuple(_p(fx, "attn", n, leaf) for n in ("query", "key", "value")), "qkv"))
      rows += [Row(f"{hf}.attn.c_proj.{hf_leaf}", (_p(fx, "attn/out", leaf),), kind),
               Row(f"{hf}.mlp.c_fc.{hf_leaf}", (_p(fx, "mlp/up", leaf),), kind),
               Row(f"{hf}.mlp.c_proj.{hf_leaf}", (_p(fx, "mlp/down", leaf),), kind)]
  rows += [Row("transformer.ln_f.weight", (_p("decoder/final_norm/scale"),)),
           Row("transformer.ln_f.bias", (_p("decoder/final_norm/bias"),))]
  return rows


def _gpt2_config(d: dict, where: str) -> DecoderConfig:
  act = d.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise UserError(f"{where}: activation_function={act!r} is not supported; jaxbert's GPT-2 "
                    "uses the tanh GELU (gelu_new)")
  for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                  ("scale_attn_weights", True), ("add_cross_attention", False),
                  ("tie_word_embeddings", True)):
    if d.get(key, ok) != ok:
      raise UserError(f"{where}: {key}={d[key]!r} is not supported (jaxbert's GPT-2 needs {ok})")
  h = int(d.get("n_embd", 768))
  return DecoderConfig(
      arch="gpt2", vocab_size=int(d.get("vocab_size", 50257)), hidden_size=h,
      num_layers=int(d.get("n_layer", 12)), num_heads=int(d.get("n_head", 12)),
      num_kv_heads=int(d.get("n_head", 12)), intermediate_size=int(d.get("n_inner") or 4 * h),
      max_position_embeddings=int(d.get("n_positions", 1024)),
      norm_eps=float(d.get("layer_norm_epsilon", 1e-5)), tie_word_embeddings=True,
      dropout_rate=float(d.get("resid_pdrop", 0.1)),
      initializer_range=float(d.get("initializer_range", 0.02)))


def _gpt2_to_hf(cfg: DecoderConfig) -> dict:
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
          "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
          "n_head": cfg.num_heads, "n_inner": cfg.intermediate_size,
          "n_positions": cfg.max_position_embeddings, "layer_norm_epsilon": cfg.norm_eps,
          "activation_function": "gelu_new", "resid_pdrop": cfg.dropout_rate,
          "embd_pdrop": cfg.dropout_rate, "attn_pdrop": cfg.dropout_rate,
          "initializer_range": cfg.initializer_range, "tie_word_embeddings": True}


# ----------------------------------------------------------------------------- Llama


def _llama_rows(cfg: DecoderConfig) -> list[Row]:
  rows = [Row("model.embed_tokens.weight", (_p("decoder/embeddings/tokens/embedding"),))]
  for i in range(cfg.num_layers):
    hf, fx = f"model.layers.{i}", f"decoder/layer_{i}"
    rows += [Row(f"{hf}.input_layernorm.weight", (_p(fx, "attn_norm/scale"),)),
             Row(f"{hf}.post_attention_layernorm.weight", (_p(fx, "mlp_norm/scale"),))]
    for theirs, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
      rows.append(Row(f"{hf}.self_attn.{theirs}_proj.weight", (_p(fx, "attn", ours, "kernel"),),
                      "linear"))
    for name in ("gate", "up", "down"):
      rows.append(Row(f"{hf}.mlp.{name}_proj.weight", (_p(fx, "mlp", name, "kernel"),), "linear"))
  rows.append(Row("model.norm.weight", (_p("decoder/final_norm/scale"),)))
  if not cfg.tie_word_embeddings:
    rows.append(Row("lm_head.weight", (_p("lm_head/kernel"),), "linear"))
  return rows


def rope_theta_from_hf(d: dict, where: str) -> float:
  rope = d.get("rope_parameters") or {}
  scaling = d.get("rope_scaling") or rope
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind != "default":
    raise UserError(f"{where}: rope type {kind!r} is not supported; jaxbert's Llama-style "
                    "decoder has plain rotary embeddings (rope_type 'default')")
  return float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))


def _llama_config(d: dict, where: str) -> DecoderConfig:
  for key in ("attention_bias", "mlp_bias"):
    if d.get(key):
      raise UserError(f"{where}: {key}=true is not supported; jaxbert's Llama-style decoder "
                      "has no biases")
  if d.get("hidden_act", "silu") != "silu":
    raise UserError(f"{where}: hidden_act={d['hidden_act']!r} is not supported (SwiGLU: silu)")
  h, heads = int(d.get("hidden_size", 4096)), int(d.get("num_attention_heads", 32))
  if int(d.get("head_dim") or h // heads) != h // heads:
    raise UserError(f"{where}: head_dim={d['head_dim']} differs from hidden_size / "
                    "num_attention_heads; not supported")
  return DecoderConfig(
      arch="llama", vocab_size=int(d.get("vocab_size", 32000)), hidden_size=h,
      num_layers=int(d.get("num_hidden_layers", 32)), num_heads=heads,
      num_kv_heads=int(d.get("num_key_value_heads") or heads),
      intermediate_size=int(d.get("intermediate_size", 11008)),
      max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
      norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta_from_hf(d, where),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      dropout_rate=float(d.get("attention_dropout", 0.0)),
      initializer_range=float(d.get("initializer_range", 0.02)))


def _llama_to_hf(cfg: DecoderConfig) -> dict:
  return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
          "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
          "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
          "rope_theta": cfg.rope_theta,
          "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
          "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": "silu",
          "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.dropout_rate,
          "initializer_range": cfg.initializer_range}


@dataclasses.dataclass(frozen=True)
class Arch:
  model_type: str
  config_from_hf: Callable[[dict, str], DecoderConfig]
  config_to_hf: Callable[[DecoderConfig], dict]
  rows: Callable[[DecoderConfig], list[Row]]
  # Tensors some checkpoints hold that jaxbert derives or ties (not parameters).
  tied: tuple[str, ...] = ()


ARCHS = {
    "gpt2": Arch("gpt2", _gpt2_config, _gpt2_to_hf, _gpt2_rows, tied=("lm_head.weight",)),
    "llama": Arch("llama", _llama_config, _llama_to_hf, _llama_rows, tied=("lm_head.weight",)),
}


def arch_of(cfg: DecoderConfig) -> Arch:
  return ARCHS[cfg.arch]


def to_flax(rows: list[Row], tensors: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  """Flax path -> float32 array (every row's tensor must be in `tensors`)."""
  flat = {}
  for row in rows:
    for path, a in zip(row.paths, row.to_flax(np.asarray(tensors[row.hf], np.float32))):
      flat[path] = np.ascontiguousarray(a)
  return flat


def to_hf(rows: list[Row], flat: dict[tuple[str, ...], np.ndarray]) -> dict[str, np.ndarray]:
  return {row.hf: np.ascontiguousarray(row.to_hf([np.asarray(flat[p], np.float32)
                                                  for p in row.paths]))
          for row in rows}
