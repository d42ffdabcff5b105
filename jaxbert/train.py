"""The one trainer that pre-training and fine-tuning share.

    mesh -> data -> model and optimizer -> shardings -> step -> restore -> loop

A task (jaxbert/pretrain.py, jaxbert/finetune.py) supplies the model, a pure loss,
process-local batches as a pure function of the step, and its evaluation. Every
random choice is a function of (seed, step), so a run restored from a checkpoint
at step s continues exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert.checkpoint import write_json_atomic
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError

log = logging.getLogger("jaxbert")

# Keys that may change between a run and its resumption; anything else is a different run.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.progress", "mesh.data", "mesh.fsdp",
                     "data.num_workers", "data.eval_examples")


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


def train_step(state: TrainState, batch, rng, *, loss_fn, tx) -> tuple[TrainState, dict]:
  """One pure optimizer step; `rng` is the run's base key, folded with the step."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


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


def check_workdir_config(workdir: str, config: ConfigDict) -> None:
  """Refuses to resume a workdir whose run had a different config; records the config."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(config.to_dict(), default=str))
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    diffs = [k for k in sorted(set(_flatten(previous)) | set(_flatten(current)))
             if k not in RESUMABLE_CHANGES and _flatten(previous).get(k) != _flatten(current).get(k)]
    if diffs:
      shown = ", ".join(f"{k}: {_flatten(previous).get(k)!r} -> {_flatten(current).get(k)!r}"
                        for k in diffs[:5])
      raise UserError(f"{workdir} holds a run with a different config ({shown}); "
                      "use a new --workdir, or the same config to resume")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(path, current)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class _Preemption:
  """SIGTERM (schedulers, TPU maintenance) -> save at the next step boundary and exit."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def checkpoint_manager(workdir: str, config: ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.train.checkpoint_every,
      max_to_keep=config.train.keep_checkpoints,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """The newest checkpoint that reads back whole; a damaged one is reported and skipped."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # A torn or corrupted write: fall back to the previous checkpoint.
      log.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                  step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
  return None


def train(config: ConfigDict, workdir: str, task: Task,
          make_tx: Callable[[Any], tuple[optax.GradientTransformation, optax.Schedule]],
          mesh) -> dict[str, float]:
  """Runs (or resumes) training to `task.total_steps`; returns the last evaluation."""
  check_workdir_config(workdir, config)
  seed = config.train.seed
  model = task.model

  # Shardings, from shapes alone: nothing is allocated before we know where it goes.
  example = jax.tree.map(jnp.asarray, task.example_batch())
  init_params = lambda: model.init({"params": jax.random.key(seed)}, example)["params"]
  tx, schedule = make_tx(jax.eval_shape(init_params))
  accum = config.optim.get("accum_steps", 1) or 1

  def init_state():
    params = init_params()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init_state)
  state_sh = shd.state_shardings(mesh, abstract)
  state_sh = state_sh.replace(step=shd.replicated(mesh))
  batch_sh = shd.batch_sharding(mesh)
  rng_sh = shd.replicated(mesh)

  step_fn = jax.jit(functools.partial(train_step, loss_fn=task.loss_fn, tx=tx),
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

  rng = jax.device_put(jax.random.key(seed + 1), rng_sh)
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
  preempt = _Preemption()
  bar = tqdm(total=total, initial=start, disable=not tcfg.progress or jax.process_index() != 0,
             dynamic_ncols=True, desc=config.get("name", "train"))
  batches = task.batches(start)
  should_stop = getattr(task, "should_stop", None)  # optional: early stopping
  try:
    for step in range(start, total):
      stop = False
      local = next(batches)
      tokens += int(local["attention_mask"].sum()) * jax.process_count()
      state, metrics = step_fn(state, shd.global_batch(local, batch_sh), rng)
      pending.append(metrics)
      done = step + 1
      bar.update(1)
      if done % tcfg.log_every == 0 or done == total:
        host = jax.device_get(pending)
        dt = time.perf_counter() - t_last
        summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
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
      mngr.save(done, args=ocp.args.StandardSave(state),
                force=done == total or preempt.requested or stop)
      if stop:
        log.info("early stopping at step %d of %d", done, total)
        break
      if preempt.requested:
        log.warning("SIGTERM: saved a checkpoint at step %d; exiting", done)
        break
  finally:
    mngr.wait_until_finished()
    mngr.close()
    bar.close()
    metrics_log.close()
    preempt.restore()
  return last_eval
