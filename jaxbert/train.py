"""The one trainer that pre-training and fine-tuning share.

    mesh -> data -> model and optimizer -> shardings -> step -> restore -> loop

A task (jaxbert/pretrain.py, jaxbert/finetune.py) supplies the model, a pure loss,
process-local batches as a pure function of the step, and its evaluation. Every
random choice is a function of (seed, step), so a run restored from a checkpoint
at step s continues exactly as if it had never stopped.

Reliability, in the order a run meets it:
- Restore (`restore_latest`, jaxbert/checkpoint.py) takes the newest checkpoint whose
  files match their integrity record and read back; damaged ones are reported and
  moved to WORKDIR/checkpoints_damaged/. One that reads but holds another model is a
  UserError.
- The optimizer is wrapped in `skip_nonfinite`: a step with a non-finite loss,
  gradient or update changes nothing but the step counter and two counters in the
  optimizer state, which the metrics report. `train.max_nonfinite` such steps in a
  row stop the run (TrainingDiverged, exit status 2); a state with a non-finite
  value is never saved.
- SIGTERM saves a checkpoint at the next step boundary and returns normally.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert.checkpoint import (checkpoint_manager, restore_latest, save_checkpoint,
                                tokenizer_files, write_json_atomic)
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.progress import progress_bar

log = logging.getLogger("jaxbert")

# Keys that may change between a run and its resumption; anything else is a different run.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.progress", "train.max_nonfinite",
                     "train.peak_flops", "mesh.data", "mesh.fsdp", "data.num_workers",
                     "data.eval_examples")
# Non-finite steps in a row that stop a run whose config has no train.max_nonfinite.
DEFAULT_MAX_NONFINITE = 10
# Metrics that count (reported as their last value in a logging window, not the mean).
COUNTERS = ("nonfinite_in_a_row", "nonfinite_skipped")


class TrainingDiverged(UserError):
  """Too many non-finite steps in a row, or a non-finite state about to be saved."""


class Task(Protocol):
  """What the trainer needs from pre-training or fine-tuning."""

  model: nn.Module
  total_steps: int       # micro-batches to train on
  optimizer_steps: int   # total_steps / optim.accum_steps

  def example_batch(self) -> dict[str, np.ndarray]: ...  # a process-local batch, for shapes
  def loss_fn(self, params, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]: ...
  def batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]: ...  # process-local
  def init_params(self, params, param_shardings): ...  # hand-over from a checkpoint
  def evaluate(self, params, predict: Callable) -> dict[str, float]: ...
  def flops_per_batch(self) -> float: ...


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteGuardState(NamedTuple):
  in_a_row: jax.Array  # int32: consecutive skipped steps, up to and including the last
  total: jax.Array     # int32: skipped steps since the run began
  inner_state: Any


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`inner`, except that a step whose loss, gradient or update is not finite is skipped.

  Skipped means: zero updates and `inner`'s state unchanged (no Adam moment or
  accumulator sees the NaN). Unlike `optax.apply_if_finite` it never gives up and
  applies a non-finite update; the trainer stops the run instead. The loss comes in
  as the `loss` extra argument (`optax.with_extra_args_support(tx).update(..., loss=l)`).
  """

  def init(params):
    zero = jnp.zeros((), jnp.int32)
    return NonFiniteGuardState(zero, zero, inner.init(params))

  def update(grads, state, params=None, *, loss=None, **extra_args):
    del extra_args
    updates, inner_state = inner.update(grads, state.inner_state, params)
    checked = [grads, updates] + ([] if loss is None else [loss])
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(checked)]))
    updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
    inner_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                               inner_state, state.inner_state)
    in_a_row = jnp.where(ok, 0, state.in_a_row + 1).astype(jnp.int32)
    total = (state.total + jnp.where(ok, 0, 1)).astype(jnp.int32)
    return updates, NonFiniteGuardState(in_a_row, total, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def train_step(state: TrainState, batch, rng, *, loss_fn, tx) -> tuple[TrainState, dict]:
  """One pure optimizer step; `rng` is the run's base key, folded with the step."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  # The loss goes to transformations that take it (skip_nonfinite); others ignore it.
  updates, opt_state = optax.with_extra_args_support(tx).update(
      grads, state.opt_state, state.params, loss=loss)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def guarded_train_step(state: TrainState, batch, rng, *, loss_fn, tx):
  """`train_step` with a `skip_nonfinite` optimizer; its counters join the metrics."""
  state, metrics = train_step(state, batch, rng, loss_fn=loss_fn, tx=tx)
  guard = state.opt_state
  return state, dict(metrics, nonfinite_in_a_row=guard.in_a_row, nonfinite_skipped=guard.total)


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_nonfinite(in_a_row: int, limit: int, step: int) -> None:
  """TrainingDiverged once `limit` steps in a row (ending at `step`) were skipped."""
  if limit > 0 and in_a_row >= limit:
    raise TrainingDiverged(
        f"training stopped at step {step}: the last {in_a_row} steps had a non-finite loss "
        f"or gradient and were skipped (train.max_nonfinite={limit}); the checkpoints hold "
        "finite values only. Lower optim.lr or lengthen the warm-up (optim.warmup_steps), "
        "and train again in a new --workdir")


def make_predict(model: nn.Module, mesh, param_shardings):
  """A jitted deterministic forward pass: (params, global batch) -> outputs."""
  fn = lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
  return jax.jit(fn, in_shardings=(param_shardings, shd.batch_sharding(mesh)))


class MetricsLog:
  """WORKDIR/metrics.jsonl plus TensorBoard event files, written by process 0."""

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):  # After a restore, drop what the lost steps logged.
      with open(self.path) as f:
        kept = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= start_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    for k, v in metrics.items():
      self.tb.add_scalar(f"{split}/{k}", v, step)
    self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


def check_workdir_config(workdir: str, config: ConfigDict, record: bool = True) -> None:
  """Refuses to resume a workdir whose run had a different config; records the config
  (unless `record` is False: a run that fails before training must not claim the workdir)."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(config.to_dict(), default=str))
  if os.path.exists(path):
    with open(path) as f:
      previous = _flatten(json.load(f))
    now = _flatten(current)
    # A key added to jaxbert after the run started is absent from its config.json; at its
    # default value it changes nothing, so the run still resumes.
    defaults = _default_keys(config)
    previous.update({k: defaults[k] for k in now if k not in previous and k in defaults})
    diffs = [k for k in sorted(set(previous) | set(now))
             if k not in RESUMABLE_CHANGES and previous.get(k) != now.get(k)]
    if diffs:
      shown = ", ".join(f"{k}: {previous.get(k)!r} -> {now.get(k)!r}" for k in diffs[:5])
      raise UserError(f"{workdir} holds a run with a different config ({shown}); "
                      "use a new --workdir, or the same config to resume")
  if record and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(path, current)


def _default_keys(config: ConfigDict) -> dict[str, Any]:
  """The flattened defaults of a run config of the same kind (jaxbert/defaults.py)."""
  from jaxbert import defaults  # pylint: disable=g-import-not-at-top
  make = defaults.pretrain_config if config.get("task") == "pretrain" else defaults.finetune_config
  return _flatten(json.loads(json.dumps(make().to_dict(), default=str)))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class _Preemption:
  """SIGTERM (schedulers, TPU maintenance) -> save at a step boundary and exit.

  One process: a signal handler sets a flag. Several: they must all stop at the same
  step, so JAX's preemption service (which catches SIGTERM itself once
  jax.distributed is initialised) picks the step, asked through Orbax.
  """

  def __init__(self, mngr: ocp.CheckpointManager):
    self._mngr = mngr
    self._flag = False
    self._local = jax.process_count() == 1
    if self._local:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    return self._flag if self._local else self._mngr.reached_preemption(step)

  def restore(self):
    if self._local:
      signal.signal(signal.SIGTERM, self._previous)


def train(config: ConfigDict, workdir: str, task: Task,
          make_tx: Callable[[Any], tuple[optax.GradientTransformation, optax.Schedule]],
          mesh) -> dict[str, float]:
  """Runs (or resumes) training to `task.total_steps`; returns the last evaluation."""
  check_workdir_config(workdir, config, record=False)
  seed = config.train.seed
  model = task.model

  # Shardings, from shapes alone: nothing is allocated before we know where it goes.
  example = jax.tree.map(jnp.asarray, task.example_batch())
  init_params = lambda: model.init({"params": jax.random.key(seed)}, example)["params"]
  tx, schedule = make_tx(jax.eval_shape(init_params))
  tx = skip_nonfinite(tx)
  accum = config.optim.get("accum_steps", 1) or 1

  def init_state():
    params = init_params()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init_state)
  state_sh = shd.state_shardings(mesh, abstract)
  state_sh = state_sh.replace(step=shd.replicated(mesh))
  batch_sh = shd.batch_sharding(mesh)
  rng_sh = shd.replicated(mesh)

  step_fn = jax.jit(functools.partial(guarded_train_step, loss_fn=task.loss_fn, tx=tx),
                    in_shardings=(state_sh, batch_sh, rng_sh),
                    out_shardings=(state_sh, rng_sh), donate_argnums=(0,))

  # Restore, or initialise (then hand over pre-trained weights, if the task has any).
  mngr = checkpoint_manager(workdir, config)
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, state_sh)
  state = restore_latest(mngr, abstract_sharded)
  if state is None:
    state = jax.jit(init_state, out_shardings=state_sh)()
    params = task.init_params(state.params, state_sh.params)
    if params is not state.params:  # Fresh optimizer state for the handed-over weights.
      state = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                      out_shardings=state_sh)(params)
    start = 0
  else:
    start = int(state.step)
    log.info("resumed from %s at step %d", mngr.directory, start)
    if not os.path.exists(os.path.join(workdir, "config.json")):
      # Deleted or copied without it: nothing says which config made these checkpoints.
      log.warning("%s has checkpoints but no config.json: resumed with this command's config, "
                  "checked against the checkpoint's shapes only", workdir)

  # The workdir is this run's from now on (a run that failed before here leaves no claim).
  check_workdir_config(workdir, config)
  # Made by a computation laid out on the mesh: device_put cannot place a host value
  # on devices of other processes.
  rng = jax.jit(lambda: jax.random.key(seed + 1), out_shardings=rng_sh)()
  # Every checkpoint carries its tokenizer, so a checkpoint folder is usable on its own.
  tokenizer_json = tokenizer_files(task.tokenizer)
  predict = make_predict(model, mesh, state_sh.params)
  metrics_log = MetricsLog(workdir, start)
  total = task.total_steps  # micro-steps; the optimizer updates every `accum`
  tcfg = config.train
  flops = task.flops_per_batch()
  # MFU's denominator: the configured peak, else one measured here (per device, x devices).
  peak = tcfg.peak_flops or flops_lib.measure_matmul_peak(
      jnp.dtype(config.model.dtype)) * mesh.size

  last_eval: dict[str, float] = {}
  pending: list[dict] = []
  tokens = 0
  t_last = time.perf_counter()
  limit = tcfg.get("max_nonfinite", DEFAULT_MAX_NONFINITE)
  preempt = _Preemption(mngr)
  bar = progress_bar(total=total, initial=start, desc=config.get("name", "train"), unit="step",
                     enabled=tcfg.progress and jax.process_index() == 0)
  batches = task.batches(start)
  should_stop = getattr(task, "should_stop", None)  # optional: early stopping
  in_a_row = None  # the previous step's count, read a step late so dispatch stays ahead
  abandon_saves = False
  try:
    for step in range(start, total):
      stop = False
      local = next(batches)
      tokens += int(local["attention_mask"].sum()) * jax.process_count()
      state, metrics = step_fn(state, shd.global_batch(local, batch_sh), rng)
      if in_a_row is not None:
        check_nonfinite(int(in_a_row), limit, step)
      in_a_row = metrics["nonfinite_in_a_row"]
      pending.append(metrics)
      done = step + 1
      bar.update(1)
      if done % tcfg.log_every == 0 or done == total:
        host = jax.device_get(pending)
        dt = time.perf_counter() - t_last
        summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        summary.update({k: float(host[-1][k]) for k in COUNTERS})
        summary["learning_rate"] = float(schedule(max(done // accum - 1, 0)))
        summary["tokens_per_s"] = tokens / dt
        summary["steps_per_s"] = len(host) / dt
        if flops and peak:
          summary["mfu"] = flops * len(host) / dt / peak
        metrics_log.write(done, "train", summary)
        bar.set_postfix(loss=f"{summary['loss']:.3f}", tok_s=f"{summary['tokens_per_s']:.0f}")
        pending, tokens, t_last = [], 0, time.perf_counter()
      if done % tcfg.eval_every == 0 or done == total:
        last_eval = task.evaluate(state.params, predict)
        metrics_log.write(done, "eval", last_eval)
        bar.write(f"step {done}: " + "  ".join(f"{k}={v:.4g}" for k, v in last_eval.items()))
        t_last = time.perf_counter()
        stop = bool(should_stop and should_stop(done, last_eval))
      preempted = preempt.reached(done)
      force = done == total or preempted or stop
      if force or mngr.should_save(done):
        check_nonfinite(int(in_a_row), limit, done)
        if not bool(all_finite(state)):  # a finite update that overflowed: never save it
          raise TrainingDiverged(f"training stopped at step {done}: the model state holds "
                                 "non-finite values (an update overflowed); lower optim.lr")
        save_checkpoint(mngr, done, state, tokenizer_json)
      if stop:
        log.info("early stopping at step %d of %d", done, total)
        break
      if preempted:
        log.warning("SIGTERM: saved a checkpoint at step %d; exiting", done)
        break
  except Exception as e:
    # Several processes, and not an error they all meet at the same step: another
    # process may be gone, and finishing the save in flight would wait for it.
    abandon_saves = jax.process_count() > 1 and not isinstance(e, UserError)
    raise
  finally:
    if not abandon_saves:
      mngr.wait_until_finished()
      mngr.close()
    bar.close()
    metrics_log.close()
    preempt.restore()
  return last_eval
