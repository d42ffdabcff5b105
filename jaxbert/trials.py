"""Trials that train side by side: which runs can share one compiled program, and
the learning-rate table each trial feeds it.

A small model on a small task leaves an accelerator mostly idle. Trials that share
every shape and step count (a learning rate x seed grid, say) are trained as one
program instead (jaxbert/step.py `build_step` with stacked shardings). They may
differ in PER_TRIAL_KEYS only:
- train.seed: the new head's initialisation, dropout masks and data order (every
  trial is fed its own batch, stacked on the trial axis);
- the learning-rate schedule: the optimizer is built with a constant rate of 1
  (RATE_ONE) and each trial's schedule value comes in as data;
- early stopping: a trial that stops is checkpointed there and no longer logged.
Each trial's workdir ends up as a one-by-one run would leave it, so `jaxbert
finetune` resumes it and export-hf reads it. Results equal one-by-one runs to float
rounding: batched matrix products may sum in another order.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.config import ConfigDict
from jaxbert.optim import make_schedule

# Config keys that are data to the side-by-side program: trials may differ in these.
PER_TRIAL_KEYS = ("name", "train.seed", "train.early_stopping_patience",
                  "train.early_stopping_min_delta", "optim.lr", "optim.warmup_steps",
                  "optim.warmup_fraction", "optim.decay", "optim.end_lr_fraction")
# The schedule the shared optimizer is built with: a constant rate of 1.
RATE_ONE = {"lr": 1.0, "decay": "constant", "warmup_steps": 0, "warmup_fraction": 0.0,
            "end_lr_fraction": 0.0}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def group_key(config: ConfigDict) -> str:
  """Equal for configs that can train side by side: all but PER_TRIAL_KEYS agree."""
  flat = _flat(json.loads(json.dumps(config.to_dict(), default=str)))
  return json.dumps({k: v for k, v in flat.items() if k not in PER_TRIAL_KEYS}, sort_keys=True)


def shared_optim(optim: ConfigDict) -> ConfigDict:
  """The optimizer config of a side-by-side program: `optim` at a constant rate of 1."""
  out = ConfigDict(optim.to_dict())
  out.update(RATE_ONE)
  return out


def rate_table(optim_cfg: ConfigDict, optimizer_steps: int) -> np.ndarray:
  """The schedule's learning rate at every optimizer update, (optimizer_steps,) float32."""
  schedule = make_schedule(optim_cfg, optimizer_steps)
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(optimizer_steps)), np.float32)
