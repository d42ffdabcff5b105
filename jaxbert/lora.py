"""LoRA: low-rank adapters on chosen kernels of a pre-trained model (Hu et al., 2021).

`config.lora.rank=R` (0: off) puts, beside every 2-D `kernel` that `config.lora.targets`
selects (a selector over parameter names, jaxbert/params.py), two leaves

    .../kernel   (in, out)   the pre-trained weight W, frozen
    .../lora_a   (in, R)     uniform in +-1/sqrt(in), as PEFT initialises A
    .../lora_b   (R, out)    zeros: the adapted model starts as the pre-trained one

and the model computes with W + (alpha / R) * lora_a @ lora_b. This is a transform of
the model and its parameter tree, not of the train step:

- `wrap(model, config)` returns the model itself without LoRA (so a run without it
  compiles exactly as before), else a `LoraModel` whose `init` adds the adapters and
  whose `apply` merges them into the kernels before calling the model;
- the optimizer (jaxbert/optim.py) sees adapter leaves in the tree and freezes the
  pre-trained model around them with the same Optax partition that `optim.freeze`
  uses: every other leaf of the backbone and `lm_head` gets a zero update and no
  optimizer state, so the base weights stay bitwise as loaded; adapters and new task
  heads train (PEFT's `modules_to_save` for a classifier);
- checkpoints hold the training state as always, adapters included, so a run resumes
  exactly; what reads a run's weights for use (export-hf, predict, embed, generate:
  handover._restore_params, under read_checkpoint and decoder_weights.load) gets
  `merge`d kernels and no adapter leaves.

Adapter leaves sit under their kernel's layer, so `params.depth` gives them the layer's
depth (layer-wise rates apply) and weight decay applies to them as to kernels.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import params as params_lib
from jaxbert.errors import UserError

A, B = "lora_a", "lora_b"
# Every kernel inside a block: the attention (query, key, value, output) and MLP
# projections, in the encoder (bert/encoder/layer_N/...) and the decoder (decoder/layer_N/...).
DEFAULT_TARGETS = r".*/layer_\d+/.*/kernel"
# Shorthands that make sense for targets (the kernels within the parts they name).
TARGETS = ("none", "encoder", "decoder", "bottom", "top", "layers")
# Pre-trained parameters outside the backbone that LoRA freezes too.
PRETRAINED_OUTSIDE_BACKBONE = ("lm_head",)


def is_adapter(name: str) -> bool:
  return name.rsplit("/", 1)[-1] in (A, B)


def frozen_base(names, lay: params_lib.Layout | None = None) -> set[str]:
  """The pre-trained leaves LoRA freezes: nothing when `names` hold no adapter; else
  every leaf of the backbone and of `lm_head` that is not an adapter."""
  names = list(names)
  if not any(is_adapter(n) for n in names):
    return set()
  lay = lay or params_lib.layout(names)
  tops = tuple(t + "/" for t in (lay.backbone,) + PRETRAINED_OUTSIDE_BACKBONE if t)
  return {n for n in names if n.startswith(tops) and not is_adapter(n)}


def enabled(config) -> bool:
  lora = config.get("lora") if config is not None else None
  return bool(lora) and int(lora.get("rank", 0)) > 0


def scale(lora) -> float:
  return float(lora["alpha"]) / int(lora["rank"])


def targets(names_and_shapes: dict[str, tuple], text: str,
            key: str = "config.lora.targets") -> list[str]:
  """The 2-D kernels `text` selects (the other parameters it selects are ignored, so a
  shorthand such as top:2 means those layers' kernels); none is a UserError."""
  selector = params_lib.parse(text, key, TARGETS)
  if selector.empty:
    raise selector.error("LoRA needs at least one kernel to adapt")
  base = [n for n in names_and_shapes if not is_adapter(n)]
  chosen = selector.select(base)
  kernels = sorted(n for n in chosen
                   if n.endswith("/kernel") and len(names_and_shapes[n]) == 2)
  if not kernels:
    raise selector.error(f"selects {len(chosen)} parameters but no 2-D kernel (a "
                         "projection's '.../kernel') to adapt")
  return kernels


def _flat(tree) -> dict[tuple, Any]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(tree)


def _unflat(flat):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.unflatten_dict(flat)


def add_adapters(params, text: str, rank: int, key: jax.Array):
  """`params` with fresh adapters beside each kernel `text` selects (traceable)."""
  flat = _flat(params)
  shapes = {"/".join(k): tuple(v.shape) for k, v in flat.items()}
  if any(is_adapter(n) for n in shapes):
    raise ValueError("the parameters already hold LoRA adapters")
  for i, name in enumerate(targets(shapes, text)):
    path = tuple(name.split("/"))
    n_in, n_out = shapes[name]
    bound = 1.0 / math.sqrt(n_in)
    dtype = flat[path].dtype
    flat[path[:-1] + (A,)] = jax.random.uniform(jax.random.fold_in(key, i), (n_in, rank), dtype,
                                                -bound, bound)
    flat[path[:-1] + (B,)] = jnp.zeros((rank, n_out), dtype)
  return _unflat(flat)


def merge(params, factor: float):
  """`params` with every adapted kernel replaced by W + factor * A @ B and the adapter
  leaves dropped. jax arrays in, jax arrays out (traceable); numpy in, numpy out."""
  flat = _flat(params)
  out = {k: v for k, v in flat.items() if k[-1] not in (A, B)}
  for k, a in flat.items():
    if k[-1] != A:
      continue
    w, b = flat[k[:-1] + ("kernel",)], flat[k[:-1] + (B,)]
    if isinstance(w, np.ndarray):
      delta = (np.asarray(a, np.float32) @ np.asarray(b, np.float32)) * np.float32(factor)
      out[k[:-1] + ("kernel",)] = (w + delta.astype(w.dtype)).astype(w.dtype)
    else:
      out[k[:-1] + ("kernel",)] = w + (jnp.matmul(a, b) * factor).astype(w.dtype)
  return _unflat(out)


def merge_for_run(params, run_config: dict):
  """`params` of a run (config.json as a dict) merged when it trained with LoRA."""
  lora = run_config.get("lora") or {}
  if int(lora.get("rank", 0) or 0) <= 0:
    return params
  return merge(params, scale(lora))


def count(params) -> tuple[int, int]:
  """(adapter scalars, base scalars) of a tree (for messages)."""
  flat = {"/".join(k): v for k, v in _flat(params).items()}
  n = lambda v: int(np.prod(v.shape))
  adapters = sum(n(v) for k, v in flat.items() if is_adapter(k))
  return adapters, sum(n(v) for v in flat.values()) - adapters


class LoraModel:
  """A Flax model with adapters: `init` adds them to the parameters, `apply` computes
  with the merged kernels. Other attributes are the wrapped model's."""

  def __init__(self, model, rank: int, alpha: float, targets_text: str):
    self.model, self.rank, self.alpha, self.targets = model, int(rank), float(alpha), targets_text
    self.factor = self.alpha / self.rank

  def init(self, rngs, *args, **kwargs):
    variables = self.model.init(rngs, *args, **kwargs)
    key = rngs["params"] if isinstance(rngs, dict) else rngs
    # Another stream than the model's own initialisers draw from.
    key = jax.random.fold_in(key, 0x10AA)
    return {**variables, "params": add_adapters(variables["params"], self.targets, self.rank, key)}

  def apply(self, variables, *args, **kwargs):
    return self.model.apply({**variables, "params": merge(variables["params"], self.factor)},
                            *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.model, name)


def wrap(model, config):
  """`model` with adapters as `config.lora` asks; `model` itself when LoRA is off."""
  if not enabled(config):
    return model
  lora = config.lora
  if int(lora.rank) < 1:
    raise UserError(f"config.lora.rank={lora.rank} is invalid: must be an integer >= 1 (0: off)")
  return LoraModel(model, lora.rank, lora.alpha, lora.targets)

