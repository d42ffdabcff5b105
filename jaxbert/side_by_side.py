"""Fine-tuning trials trained side by side: one compiled step, vmapped over trials.

A small model on a small task leaves an accelerator mostly idle. Trials that
share every shape and step count (a learning rate x seed grid, say) are trained
as one program instead: their TrainStates are stacked on a leading trial axis and
`jaxbert.train.train_step` is `jax.vmap`-ed over (state, batch, rng, rate).

What the trials of a group may differ in (everything else is one program):
- train.seed: the new head's initialisation, dropout masks and data order (every
  trial is fed its own batch, stacked on the trial axis);
- the learning-rate schedule (optim.lr, warmup_steps, warmup_fraction, decay,
  end_lr_fraction): the optimizer is built with a constant rate of 1 and each
  trial's update is multiplied by its own schedule value, passed in as data. The
  AdamW and LAMB updates are linear in the rate, so this is the same update;
- early stopping: a trial that stops is checkpointed there and no longer logged.

Each trial's workdir ends up as a one-by-one run would leave it (config.json,
metrics.jsonl, results.json, predictions, checkpoints/ holding the same TrainState
layout), so `jaxbert finetune` resumes it and export-hf reads it. A killed group
resumes from each trial's latest checkpoint; trials at different steps share the
program, those ahead idling at the end. Results equal one-by-one runs to float
rounding: batched matrix products may sum in another order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxbert import sharding as shd
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.finetune import FinetuneTask
from jaxbert.optim import make_optimizer, make_schedule
from jaxbert.progress import progress_bar
from jaxbert.checkpoint import tokenizer_files
from jaxbert.checkpoint import checkpoint_manager, restore_latest, save_checkpoint
from jaxbert.train import (COUNTERS, MetricsLog, TrainState, check_workdir_config,
                           guarded_train_step, make_predict, skip_nonfinite)

log = logging.getLogger("jaxbert")

# Config keys that are data to the side-by-side program: trials may differ in these.
PER_TRIAL_KEYS = ("name", "train.seed", "train.early_stopping_patience",
                  "train.early_stopping_min_delta", "optim.lr", "optim.warmup_steps",
                  "optim.warmup_fraction", "optim.decay", "optim.end_lr_fraction")
# The schedule the shared optimizer is built with: a constant rate of 1.
_RATE_ONE = {"lr": 1.0, "decay": "constant", "warmup_steps": 0, "warmup_fraction": 0.0,
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


def scale_updates(tx: optax.GradientTransformation, rate) -> optax.GradientTransformation:
  """`tx` with every update multiplied by `rate` (a traced scalar); same state as `tx`."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u: u * rate.astype(u.dtype), updates), state

  return optax.GradientTransformation(tx.init, update)


def rate_table(optim_cfg: ConfigDict, optimizer_steps: int) -> np.ndarray:
  """The schedule's learning rate at every optimizer update, (optimizer_steps,) float32."""
  schedule = make_schedule(optim_cfg, optimizer_steps)
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(optimizer_steps)), np.float32)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def train_group(configs: list[ConfigDict], workdirs: list[str], devices=None,
                on_finish: Callable[[int, dict[str, float]], None] | None = None
                ) -> list[dict[str, float]]:
  """Trains (or resumes) fine-tuning runs side by side; returns each one's last evaluation.

  `configs` must share `group_key`. `on_finish(i, metrics)` is called as trial i's
  training ends (its last checkpoint written), before the others have finished.
  """
  if len({group_key(c) for c in configs}) != 1:
    raise ValueError("side-by-side trials must differ only in " + ", ".join(PER_TRIAL_KEYS))
  base = configs[0]
  n = len(configs)
  shd.maybe_initialize_distributed()
  jax.config.update("jax_default_prng_impl", base.train.prng_impl)
  mesh = shd.make_mesh(base.mesh.data, base.mesh.fsdp, devices)
  if base.train.batch_size % mesh.size:
    raise UserError(f"train.batch_size={base.train.batch_size} must be a multiple of the "
                    f"{mesh.size} devices (mesh {dict(mesh.shape)})")
  workdirs = [os.path.abspath(w) for w in workdirs]
  for c, w in zip(configs, workdirs):
    os.makedirs(w, exist_ok=True)
    check_workdir_config(w, c)
  task0 = FinetuneTask(base, workdirs[0], mesh)
  tasks = [task0.for_run(c, w) for c, w in zip(configs, workdirs)]
  model, total = task0.model, task0.total_steps
  accum = base.optim.get("accum_steps", 1) or 1

  # One optimizer for all trials (rate 1); each trial's rates come in as data.
  example = jax.tree.map(jnp.asarray, task0.example_batch())
  init_params = lambda key: model.init({"params": key}, example)["params"]
  shared_optim = ConfigDict(base.optim.to_dict())
  shared_optim.update(_RATE_ONE)
  tx, _ = make_optimizer(shared_optim, jax.eval_shape(init_params, jax.random.key(0)),
                         task0.optimizer_steps)
  rates = np.stack([rate_table(c.optim, task0.optimizer_steps) for c in configs])  # (N, updates)

  def init_state(key):  # the optimizer state of a one-by-one run (skip_nonfinite's included)
    params = init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=skip_nonfinite(tx).init(params))

  # Shardings: a trial's state as the one-by-one trainer lays it out, plus a leading
  # (unsplit) trial axis; batches (N, B, ...) split along B.
  abstract = jax.eval_shape(init_state, jax.random.key(0))
  state_sh = shd.state_shardings(mesh, abstract).replace(step=shd.replicated(mesh))
  stacked_sh = jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), state_sh)
  batch_sh = NamedSharding(mesh, P(None, shd.BATCH_AXES))
  rep = shd.replicated(mesh)

  def one_trial(state, batch, rng, rate):
    return guarded_train_step(state, batch, rng, loss_fn=task0.loss_fn,
                              tx=skip_nonfinite(scale_updates(tx, rate)))

  step_fn = jax.jit(jax.vmap(one_trial), in_shardings=(stacked_sh, batch_sh, rep, rep),
                    out_shardings=(stacked_sh, rep), donate_argnums=(0,))
  take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s), out_shardings=state_sh)

  # Restore each trial, or initialise it as the one-by-one trainer would.
  mngrs = [checkpoint_manager(w, c) for c, w in zip(configs, workdirs)]
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, state_sh)
  init_jit = jax.jit(init_state, out_shardings=state_sh)
  fresh = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, skip_nonfinite(tx).init(p)),
                  out_shardings=state_sh)
  states = []
  for c, task, mngr in zip(configs, tasks, mngrs):
    state = restore_latest(mngr, abstract_sharded)
    if state is None:
      state = init_jit(jax.random.key(c.train.seed))
      params = task.init_params(state.params, state_sh.params)
      if params is not state.params:  # Fresh optimizer state for the handed-over weights.
        state = fresh(params)
    else:
      log.info("resumed %s at step %d", mngr.directory, int(state.step))
    states.append(state)
  steps = [int(s.step) for s in states]
  state = jax.jit(_stack, out_shardings=stacked_sh)(states)
  del states
  # A computation laid out on the mesh (device_put cannot reach other processes' devices).
  rngs = jax.jit(lambda: jnp.stack([jax.random.key(c.train.seed + 1) for c in configs]),
                 out_shardings=rep)()

  predict = make_predict(model, mesh, state_sh.params)
  tokenizer_jsons = [tokenizer_files(task0.tokenizer)] * n  # the trials share one tokenizer
  logs = [MetricsLog(w, s) for w, s in zip(workdirs, steps)]
  batches = [t.batches(s) for t, s in zip(tasks, steps)]
  idle = task0.example_batch()  # fed to trials that have finished; their updates are dropped
  active = [s < total for s in steps]
  last_eval: list[dict[str, float]] = [{} for _ in range(n)]
  pending: list[list[dict]] = [[] for _ in range(n)]
  tokens = [0] * n
  t_last = [time.perf_counter()] * n
  for i in range(n):
    if not active[i] and on_finish is not None:  # trained to the end before a kill
      on_finish(i, last_eval[i])
  bar = progress_bar(total=total - min(steps), desc=f"{n} trials side by side", unit="step",
                     enabled=base.train.progress and jax.process_index() == 0)
  try:
    while any(active):
      local = [next(b) if a else idle for b, a in zip(batches, active)]
      stacked = {k: np.stack([l[k] for l in local]) for k in local[0]}  # N x (B, ...) -> (N, B, ...)
      rate = np.asarray([rates[i, min(steps[i], total - 1) // accum] for i in range(n)])
      state, metrics = step_fn(state, shd.global_batch(stacked, batch_sh), rngs, rate)
      bar.update(1)
      for i in range(n):
        if not active[i]:
          continue
        tcfg = configs[i].train
        tokens[i] += int(local[i]["attention_mask"].sum()) * jax.process_count()
        pending[i].append(metrics)
        steps[i] += 1
        done = steps[i]
        if done % tcfg.log_every == 0 or done == total:
          host = jax.device_get(pending[i])
          dt = time.perf_counter() - t_last[i]
          summary = {k: float(np.mean([m[k][i] for m in host])) for k in host[0]}
          summary.update({k: float(host[-1][k][i]) for k in COUNTERS})
          summary["learning_rate"] = float(rates[i, max(done // accum - 1, 0)])
          summary["tokens_per_s"] = tokens[i] / dt
          summary["steps_per_s"] = len(host) / dt
          logs[i].write(done, "train", summary)
          pending[i], tokens[i], t_last[i] = [], 0, time.perf_counter()
        stop = False
        if done % tcfg.eval_every == 0 or done == total:
          last_eval[i] = tasks[i].evaluate(take(state, i).params, predict)
          logs[i].write(done, "eval", last_eval[i])
          bar.write(f"{configs[i].name} step {done}: "
                    + "  ".join(f"{k}={v:.4g}" for k, v in last_eval[i].items()))
          stop = tasks[i].should_stop(done, last_eval[i])
          t_last[i] = time.perf_counter()
        if stop or done == total or mngrs[i].should_save(done):
          save_checkpoint(mngrs[i], done, take(state, i), tokenizer_jsons[i])
        if stop or done == total:
          if stop:
            log.info("%s: early stopping at step %d of %d", configs[i].name, done, total)
          active[i] = False
          mngrs[i].wait_until_finished()
          if on_finish is not None:
            on_finish(i, last_eval[i])
  finally:
    for mngr in mngrs:
      mngr.wait_until_finished()
      mngr.close()
    for metrics_log in logs:
      metrics_log.close()
    bar.close()
  return last_eval
