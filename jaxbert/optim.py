"""Optax optimizers for BERT pre-training and fine-tuning.

Everything is decided when the optax transformation is built: the train step
only calls `tx.update(grads, opt_state, params)` and `optax.apply_updates`, with
no config branches inside it. The transformation is

  partition({"frozen": set_to_zero(),
             "trainable": [MultiSteps(k)] chain(clip_by_global_norm,
                                                 scale_by_adam,
                                                 add_decayed_weights(mask),
                                                 [scale_by_trust_ratio],   # LAMB
                                                 [scale by layer factor],  # layer_lr_decay
                                                 scale_by_learning_rate(schedule))})

so frozen leaves get exact zero updates, no weight decay, no Adam moments and no
accumulation buffer, and the global gradient norm is taken over the trainable
leaves only. The learning-rate schedule and the MultiSteps counters live in the
optimizer state as int32 scalars, so the state is a plain pytree that jits,
donates and shards like the parameters.

Config keys (the `optim` group; defaults in jaxbert/defaults.py `optim_config`,
checks in jaxbert/validate.py `check_optim`):
  name:            "adamw" (Adam with decoupled weight decay) or "lamb".
  lr:              peak learning rate, reached at the end of warm-up.
  b1, b2, eps:     Adam moment decay rates and denominator epsilon (BERT used
                   0.9, 0.999, 1e-6). Adam moments are bias-corrected.
  weight_decay:    decoupled weight decay, multiplied by the learning rate;
                   never applied to LayerNorm parameters or biases (0 disables).
  clip_norm:       clip the (accumulated) gradient to this global L2 norm;
                   0 or None disables clipping.
  warmup_steps:    linear warm-up length in optimizer updates; when > 0 it
                   overrides warmup_fraction.
  warmup_fraction: warm-up length as a fraction of total optimizer updates.
  decay:           after warm-up: "linear" or "cosine" decay reaching
                   end_lr_fraction * lr at the last update, or "constant".
  end_lr_fraction: final learning rate as a fraction of lr (linear/cosine).
  accum_steps:     micro-batches accumulated (averaged) per optimizer update;
                   updates are zero on the other micro-steps.
  freeze:          a selector over parameter names (jaxbert/params.py):
                   "none"; "encoder" (all of `bert`, only the heads train);
                   "embeddings"; "bottom:K" (embeddings and encoder layers
                   0..K-1); "layers:I,J,..." (those encoder layers only); or
                   regular expressions such as "bert/encoder/layer_0/.*".
  layer_lr_decay:  < 1 scales the learning rate of a leaf at depth d by
                   layer_lr_decay ** (L + 1 - d): embeddings have depth 0,
                   encoder layer i depth i + 1, pooler and heads depth L + 1
                   (params.depth).

Step counts (`total_steps`, warm-up, the schedule's argument) are optimizer
updates, i.e. micro-batches divided by accum_steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxbert import lora as lora_lib
from jaxbert import params as params_lib
from jaxbert.config import suggest
from jaxbert.defaults import optim_config as default_optim_config
from jaxbert.errors import UserError
from jaxbert.validate import check_optim

PyTree = Any

FROZEN = "frozen"
TRAINABLE = "trainable"
# BERT's AdamWeightDecayOptimizer excluded exactly these names from weight decay.
_NO_DECAY_MODULES = ("LayerNorm", "layer_norm")


def _resolve(cfg: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
  """Defaults overlaid with `cfg`, checked as at config load; unknown keys are a UserError."""
  out = default_optim_config()
  cfg = {} if cfg is None else cfg
  unknown = sorted(set(cfg.keys()) - set(out.keys()))
  if unknown:
    hints = {k: suggest(k, list(out.keys())) for k in unknown}
    raise UserError(f"unknown optim config keys {['optim.' + k for k in unknown]}"
                    + "".join(f" (optim.{k}: did you mean optim.{h}?)" for k, h in hints.items() if h)
                    + f"; known keys: {sorted(out.keys())}")
  for k in cfg.keys():
    out[k] = cfg[k]
  check_optim(out)
  return out


# ----------------------------------------------------------------------------- schedule


def make_schedule(cfg: Mapping[str, Any] | None, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer update: linear warm-up from 0, then decay.

  Warm-up reaches `lr` at update `W`; linear/cosine decay then runs from `W` to
  `total_steps` (not from 0 as in the original BERT code, which made the rate
  jump down at the end of warm-up) and stays at `end_lr_fraction * lr` after.
  """
  cfg = _resolve(cfg)
  total = int(total_steps)
  if total < 1:
    raise UserError(f"the number of training steps ({total_steps}) must be >= 1")
  warmup = int(cfg.warmup_steps) if cfg.warmup_steps > 0 else int(round(cfg.warmup_fraction * total))
  if cfg.decay != "constant" and warmup >= total:
    raise UserError(f"warm-up of {warmup} steps (optim.warmup_steps / optim.warmup_fraction) "
                    f"leaves no room to decay within {total} training steps; shorten the warm-up "
                    "or set optim.decay='constant'")
  lr, end, decay = float(cfg.lr), float(cfg.end_lr_fraction), cfg.decay

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * step / max(warmup, 1)
    if decay == "constant":
      after = jnp.full_like(step, lr)
    else:
      t = jnp.clip((step - warmup) / (total - warmup), 0.0, 1.0)
      shape = 1.0 - t if decay == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * t))
      after = lr * (end + (1.0 - end) * shape)
    return jnp.where(step < warmup, warm, after)

  return schedule


# ----------------------------------------------------------------------------- labels


def _names(path) -> tuple[str, ...]:
  """Key names along a pytree path (dict keys, attribute names or indices)."""
  return tuple(params_lib.path_name(path).split("/"))


def _labeler(freeze: str, params: PyTree, layer_lr_decay: float = 1.0) -> Callable[[PyTree], PyTree]:
  """A function mapping a tree shaped like `params` to its labels, checked now.

  `freeze` is a selector (jaxbert/params.py); every leaf it picks is frozen, the others
  are labelled with their depth. A tree holding LoRA adapters (jaxbert/lora.py) also
  freezes the pre-trained leaves around them; `freeze` then picks among those others.
  """
  selector = params_lib.parse(freeze, "optim.freeze", params_lib.FREEZE)
  names = params_lib.tree_names(params)
  needed_for = (f"optim.freeze={freeze!r}" if selector.needs_layout else
                "optim.layer_lr_decay" if layer_lr_decay < 1 else None)
  lay = params_lib.layout(names, needed_for)
  frozen = selector.select([n for n in names if not lora_lib.is_adapter(n)], lay)
  frozen |= lora_lib.frozen_base(names, lay)

  def label(path, _):
    name = params_lib.path_name(path)
    return FROZEN if name in frozen else f"depth_{params_lib.depth(name, lay)}"

  labeler = lambda tree: jax.tree_util.tree_map_with_path(label, tree)
  labeler(params)  # Fails now, not inside jit, on a parameter without a depth.
  return labeler


def param_labels(params: PyTree, cfg: Mapping[str, Any] | None) -> PyTree:
  """Per-leaf labels: "frozen", or "depth_D" with D as in `layer_lr_decay`.

  `params` are the model's parameters (or their ShapeDtypeStructs), i.e.
  `variables["params"]`, with the `bert` subtree and heads beside it.
  """
  cfg = _resolve(cfg)
  return _labeler(cfg.freeze, params)(params)


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for leaves that get weight decay: all but LayerNorm parameters and biases.

  Embedding tables do get decay, as in BERT's AdamWeightDecayOptimizer.
  """

  def decays(path, _):
    names = _names(path)
    return not (names and names[-1] == "bias") and not any(n in _NO_DECAY_MODULES for n in names)

  return jax.tree_util.tree_map_with_path(decays, params)


def trainable_count(params: PyTree, freeze: str = "none") -> tuple[int, int]:
  """(trainable, total) numbers of parameter scalars under `freeze`."""
  labels = _labeler(freeze, params)(params)
  sizes = jax.tree.map(lambda p: int(np.prod(p.shape)), params)
  total = sum(jax.tree.leaves(sizes))
  frozen = sum(n for n, l in zip(jax.tree.leaves(sizes), jax.tree.leaves(labels)) if l == FROZEN)
  return total - frozen, total


# ----------------------------------------------------------------------------- optimizer


def scale_by_layer_depth(decay: float, lay: params_lib.Layout) -> optax.GradientTransformation:
  """Multiplies each leaf's update by decay ** (L + 1 - depth); stateless.

  The factor is a Python float per leaf, found from the leaf's path at trace
  time, so it costs one multiply and no state. Subtrees masked out by
  `optax.partition` (MaskedNode) hold no leaves and are passed through.
  """

  def update(updates, state, params=None):
    del params

    def scale(path, u):
      return u * (decay ** (lay.num_layers + 1 - params_lib.depth(params_lib.path_name(path), lay)))

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: Mapping[str, Any] | None, params_or_shapes: PyTree,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for `params_or_shapes` and its learning-rate schedule.

  `total_steps` counts optimizer updates (micro-batches / accum_steps). Call
  `tx.update(grads, state, params)` with the params: weight decay needs them.
  """
  cfg = _resolve(cfg)
  labeler = _labeler(cfg.freeze, params_or_shapes, cfg.layer_lr_decay)
  lay = params_lib.layout(params_lib.tree_names(params_or_shapes))
  schedule = make_schedule(cfg, total_steps)

  parts = []
  if cfg.clip_norm:
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask))
  if cfg.name == "lamb":
    # The trust ratio rescales each leaf's update to ||param||, so the layer
    # factor must come after it or it would be normalised away.
    parts.append(optax.scale_by_trust_ratio())
  if cfg.layer_lr_decay < 1:
    parts.append(scale_by_layer_depth(float(cfg.layer_lr_decay), lay))
  parts.append(optax.scale_by_learning_rate(schedule))
  trainable = optax.chain(*parts)
  if cfg.accum_steps > 1:
    # Inside the partition, so the accumulator holds trainable leaves only.
    trainable = optax.MultiSteps(trainable, every_k_schedule=int(cfg.accum_steps))
    trainable = trainable.gradient_transformation()

  def coarse_labels(tree):
    return jax.tree.map(lambda l: FROZEN if l == FROZEN else TRAINABLE, labeler(tree))

  # The freeze partition wraps the whole chain: frozen leaves see neither
  # clipping, weight decay nor accumulation, and keep no optimizer state.
  tx = optax.partition({FROZEN: optax.set_to_zero(), TRAINABLE: trainable}, coarse_labels)
  return tx, schedule
