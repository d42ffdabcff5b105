"""GGUF files (llama.cpp's format) as a Hugging Face Llama checkpoint: config, tensors, tokenizer.

Read with the `gguf` package (pure Python + numpy: GGUFReader maps the file, and
gguf.quants.dequantize expands quantized blocks to float32); no torch, no pickle.
The result is what a Hugging Face folder would hold (a config.json dict with model_type
"llama", tensors under transformers' names in its (out, in) layout), so the import goes on
exactly as for a folder.

llama.cpp's converter stores the query and key projections with the two halves of each
head's rotary dimensions interleaved (its rotary kernel rotates adjacent pairs, while
transformers rotates the first half against the second); `_unpermute` undoes that, as
transformers does when it loads a GGUF.
"""

from __future__ import annotations

import os

import numpy as np

from jaxbert.errors import UserError

# GGUF tensor name (inside block N: "blk.N." + name) -> transformers Llama name.
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_TOP = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def _reader(path: str):
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("reading a GGUF file needs the `gguf` package: pip install gguf") from None
  if not os.path.isfile(path):
    raise UserError(f"GGUF file {path} does not exist")
  try:
    return gguf, gguf.GGUFReader(path)
  except (ValueError, OSError, KeyError) as e:
    raise UserError(f"{path} is not a readable GGUF file ({e})") from None


def metadata(reader) -> dict:
  """Every key/value of the file's header, as Python values (strings, numbers, lists)."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    value = field.contents()
    out[key] = value
  return out


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's rotary row order of a (heads * head_dim, in) projection -> transformers'."""
  rows = w.shape[0]
  half = rows // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(meta: dict, path: str) -> dict:
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise UserError(f"{path}: general.architecture is {arch!r}; jaxbert imports Llama-style "
                    "GGUF files ('llama') only")

  def get(key, default=None, required=True):
    value = meta.get(f"llama.{key}", default)
    if value is None and required:
      raise UserError(f"{path}: the GGUF header lacks llama.{key}")
    return value

  heads = int(get("attention.head_count"))
  hidden = int(get("embedding_length"))
  rope_dims = get("rope.dimension_count", hidden // heads)
  if int(rope_dims) != hidden // heads:
    raise UserError(f"{path}: llama.rope.dimension_count={rope_dims} rotates part of each head; "
                    "jaxbert's rotary embedding rotates whole heads")
  if meta.get("llama.rope.scaling.type", "none") not in ("none", None):
    raise UserError(f"{path}: rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
  return {
      "model_type": "llama", "architectures": ["LlamaForCausalLM"],
      "hidden_size": hidden, "num_hidden_layers": int(get("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(get("attention.head_count_kv", heads)),
      "intermediate_size": int(get("feed_forward_length")),
      "max_position_embeddings": int(get("context_length")),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      "rope_theta": float(get("rope.freq_base", 10000.0)),
      "vocab_size": int(get("vocab_size", len(meta.get("tokenizer.ggml.tokens") or []))),
  }


def read_gguf(path: str):
  """-> (config.json dict, {transformers name: float32 array}, BPETokenizer, description)."""
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  gguf, reader = _reader(path)
  meta = metadata(reader)
  config = _hf_config(meta, path)
  tensors, kinds = {}, {}
  heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
  for t in reader.tensors:
    name = t.name
    if name.startswith("blk."):
      _, n, rest = name.split(".", 2)
      if rest not in _LLAMA_BLOCK:
        raise UserError(f"{path}: tensor {name} is not part of a Llama block jaxbert knows")
      hf = f"model.layers.{n}.{_LLAMA_BLOCK[rest]}"
    elif name in _LLAMA_TOP:
      hf = _LLAMA_TOP[name]
    elif name.startswith("rope_freqs"):
      raise UserError(f"{path}: the file has {name} (scaled rotary frequencies); not supported")
    else:
      raise UserError(f"{path}: tensor {name} is not part of a Llama model jaxbert knows")
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape([int(d) for d in reversed(t.shape)])  # ggml lists dims innermost first
    if rest_is(name, "attn_q.weight"):
      w = _unpermute(w, heads)
    elif rest_is(name, "attn_k.weight"):
      w = _unpermute(w, kv_heads)
    tensors[hf] = w
    kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
  config["tie_word_embeddings"] = "lm_head.weight" not in tensors
  tokenizer = bpe_tokenizer.from_gguf_metadata(
      {k: v for k, v in meta.items() if k.startswith("tokenizer.")}, path)
  desc = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
  return config, tensors, tokenizer, f"GGUF {meta.get('general.name', '')} ({desc} tensors)"


def rest_is(name: str, suffix: str) -> bool:
  return name.startswith("blk.") and name.endswith("." + suffix)
