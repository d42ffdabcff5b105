"""The one trainer: every run (pre-training, fine-tuning, a sweep's trials one by one
or side by side) goes through `train_trials`.

    mesh -> data -> model and optimizer -> shardings -> step -> restore -> loop

A task (jaxbert/pretrain.py, jaxbert/finetune.py) supplies the model, a pure loss,
process-local batches from a given step, and its evaluation; the trainer owns step
counting, epochs, accumulation, early stopping and the tokenizer copy in the
workdir. Every random choice is a function of (seed, step), so a run restored from a
checkpoint at step s continues exactly as if it had never stopped.

N >= 1 trials that may share one program (jaxbert/trials.py) train in one loop: one
trial runs the plain step, several run it vmapped over a stacked trial axis. Each
trial keeps its own log window, evaluations, early stopping, checkpoints and outcome:
- finished / stopped_early: trained to the end, or stopped by early stopping; saved.
- preempted: SIGTERM (schedulers, TPU maintenance) saves every running trial at its
  next step boundary; the same command continues.
- diverged: `train.max_nonfinite` non-finite steps in a row (each one skipped by the
  `skip_nonfinite` optimizer, jaxbert/step.py), or a state with a non-finite value
  about to be saved. The trial stops unsaved: its checkpoints hold finite values only.
Restore (`restore_latest`, jaxbert/checkpoint.py) takes the newest checkpoint whose
files match their integrity record; damaged ones are set aside.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterator, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert import trials as trials_lib
from jaxbert.checkpoint import (checkpoint_manager, restore_latest, save_checkpoint,
                                tokenizer_files, write_json_atomic)
from jaxbert.config import ConfigDict
from jaxbert.early_stopping import EarlyStopping
from jaxbert.errors import UserError
from jaxbert.optim import make_optimizer
from jaxbert.preemption import Preemption
from jaxbert.progress import progress_bar
from jaxbert.run_files import MetricsLog, check_workdir_config  # noqa: F401 (re-exported)
from jaxbert.step import (COUNTERS, Shardings, all_finite, build_step, make_predict,  # noqa: F401
                          new_state, skip_nonfinite)

log = logging.getLogger("jaxbert")


class TrainingDiverged(UserError):
  """Too many non-finite steps in a row, or a non-finite state about to be saved."""


class Task(Protocol):
  """What the trainer needs from pre-training or fine-tuning."""

  model: nn.Module
  tokenizer: Any                 # saved into every checkpoint and WORKDIR/tokenizer
  num_train_examples: int | None  # examples per epoch (train.epochs); None: no epochs
  main_metric: str | None        # early stopping's metric (None: no early stopping)
  higher_is_better: bool

  def example_batch(self) -> dict[str, np.ndarray]: ...  # a process-local batch, for shapes
  def loss_fn(self, params, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]: ...
  def batches(self, start_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]: ...
  def init_params(self, params, param_shardings): ...  # hand-over from a checkpoint
  def evaluate(self, params, predict: Callable) -> dict[str, float]: ...
  def flops_per_batch(self) -> float: ...


@dataclasses.dataclass
class Outcome:
  """How a trial's training ended."""

  status: str                 # finished | stopped_early | preempted | diverged
  step: int
  metrics: dict[str, float]   # the last evaluation
  message: str = ""


def schedule_steps(config: ConfigDict, task: Task) -> tuple[int, int]:
  """(optimizer updates, micro-batches): train.steps if set (> 0), else train.epochs
  over the task's examples; each update takes optim.accum_steps micro-batches."""
  epochs = config.train.get("epochs", 0)
  n = task.num_train_examples
  if epochs and n and not config.train.steps:  # an explicit train.steps wins
    updates = int(math.ceil(epochs * n / config.train.batch_size))
  else:
    updates = config.train.steps
  return updates, updates * (config.optim.get("accum_steps", 1) or 1)


def nonfinite_message(in_a_row: int, limit: int, step: int) -> str | None:
  if limit > 0 and in_a_row >= limit:
    return (f"training stopped at step {step}: the last {in_a_row} steps had a non-finite loss "
            f"or gradient and were skipped (train.max_nonfinite={limit}); the checkpoints hold "
            "finite values only. Lower optim.lr or lengthen the warm-up (optim.warmup_steps), "
            "and train again in a new --workdir")
  return None


class _Trial:
  """One trial's bookkeeping in the loop."""

  def __init__(self, index: int, config: ConfigDict, workdir: str, task: Task, total: int):
    self.index, self.config, self.workdir, self.task = index, config, workdir, task
    self.mngr = checkpoint_manager(workdir, config)
    self.limit = config.train.max_nonfinite
    self.stopper = None
    t = config.train
    patience = t.get("early_stopping_patience", 0)
    if patience and task.main_metric:
      if t.eval_every >= total:
        raise UserError(f"train.early_stopping_patience={patience} needs evaluations during "
                        f"training: set train.eval_every below the {total} steps")
      self.stopper = EarlyStopping(task.main_metric, patience,
                                   t.get("early_stopping_min_delta", 0.0), task.higher_is_better)
    self.step = 0
    self.outcome: Outcome | None = None
    self.last_eval: dict[str, float] = {}
    self.pending: list[dict] = []
    self.tokens = 0
    self.t_last = time.perf_counter()

  def note_early_stopping(self, stop: bool) -> None:
    """Say in results.json why the run ended where it did (a resumed run starts counting
    its patience afresh)."""
    path = os.path.join(self.workdir, "results.json")
    if jax.process_index() == 0 and os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      results["early_stopping"] = dict(self.stopper.to_dict(),
                                       stopped_at=self.step if stop else None)
      write_json_atomic(path, results)


def train(config: ConfigDict, workdir: str, task: Task, mesh) -> dict[str, float]:
  """Trains (or resumes) one run; returns its last evaluation. Divergence raises."""
  outcome = train_trials([config], [workdir], [task], mesh)[0]
  if outcome.status == "diverged":
    raise TrainingDiverged(outcome.message)
  return outcome.metrics


def train_trials(configs: list[ConfigDict], workdirs: list[str], tasks: list[Task], mesh,
                 on_finish: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
  """Trains (or resumes) N >= 1 runs that share a program; returns each one's outcome.

  The configs must share `trials.group_key` when N > 1. `on_finish(i, outcome)` is
  called as trial i stops (its last checkpoint written), before the others have.
  """
  n = len(configs)
  if n > 1 and len({trials_lib.group_key(c) for c in configs}) != 1:
    raise ValueError("side-by-side trials must differ only in " + ", ".join(trials_lib.PER_TRIAL_KEYS))
  for c, w in zip(configs, workdirs):
    check_workdir_config(w, c, record=False)
  base, task0 = configs[0], tasks[0]
  stacked = n > 1
  model = task0.model
  optimizer_steps, total = schedule_steps(base, task0)
  accum = base.optim.get("accum_steps", 1) or 1

  # Model and optimizer. Side by side: one optimizer at rate 1, each trial's rates as data.
  example = jax.tree.map(jnp.asarray, task0.example_batch())
  init_params = lambda key: model.init({"params": key}, example)["params"]
  shapes = jax.eval_shape(init_params, jax.random.key(0))
  optim = trials_lib.shared_optim(base.optim) if stacked else base.optim
  tx, _ = make_optimizer(optim, shapes, optimizer_steps)
  rates = np.stack([trials_lib.rate_table(c.optim, optimizer_steps) for c in configs])

  # Shardings, from shapes alone: nothing is allocated before we know where it goes.
  abstract = jax.eval_shape(lambda key: new_state(init_params(key), tx), jax.random.key(0))
  one = Shardings.for_state(mesh, abstract)
  sh = Shardings.for_state(mesh, abstract, trials=n) if stacked else one
  step_fn = build_step(task0.loss_fn, tx, one if not stacked else sh)

  # Restore each trial, or initialise it (then hand over pre-trained weights, if any).
  runs = [_Trial(i, c, w, t, total) for i, (c, w, t) in enumerate(zip(configs, workdirs, tasks))]
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, one.state)
  init_jit = jax.jit(lambda key: new_state(init_params(key), tx), out_shardings=one.state)
  fresh = jax.jit(lambda p: new_state(p, tx), out_shardings=one.state)
  states = []
  for r in runs:
    state = restore_latest(r.mngr, abstract_sharded)
    if state is None:
      state = init_jit(jax.random.key(r.config.train.seed))
      params = r.task.init_params(state.params, one.state.params)
      if params is not state.params:  # Fresh optimizer state for the handed-over weights.
        state = fresh(params)
    else:
      log.info("resumed %s at step %d", r.mngr.directory, int(state.step))
      if not os.path.exists(os.path.join(r.workdir, "config.json")):
        # Deleted or copied without it: nothing says which config made these checkpoints.
        log.warning("%s has checkpoints but no config.json: resumed with this command's config, "
                    "checked against the checkpoint's shapes only", r.workdir)
    r.step = int(state.step)
    states.append(state)
  if stacked:
    state = jax.jit(lambda ss: jax.tree.map(lambda *xs: jnp.stack(xs), *ss),
                    out_shardings=sh.state)(states)
    take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s), out_shardings=one.state)
  else:
    state = states[0]
    take = lambda s, i: s
  del states

  # The workdirs are these runs' from now on (a run that failed before here leaves no claim).
  tokenizer_json = tokenizer_files(task0.tokenizer)
  for r in runs:
    check_workdir_config(r.workdir, r.config)
    path = os.path.join(r.workdir, "tokenizer")
    if jax.process_index() == 0 and not os.path.isdir(path):
      r.task.tokenizer.save(path)
  # Made by a computation laid out on the mesh: device_put cannot place a host value
  # on devices of other processes.
  seeds = [c.train.seed + 1 for c in configs]
  rngs = jax.jit(lambda: (jnp.stack([jax.random.key(s) for s in seeds]) if stacked
                          else jax.random.key(seeds[0])), out_shardings=one.replicated)()
  predict = make_predict(model, mesh, one.state.params)
  logs = [MetricsLog(r.workdir, r.step) for r in runs]
  tcfg = base.train
  flops = task0.flops_per_batch()
  # MFU's denominator: the configured peak, else one measured here (per device, x devices).
  peak = tcfg.peak_flops or flops_lib.measure_matmul_peak(jnp.dtype(base.model.dtype)) * mesh.size
  batches = [r.task.batches(r.step, total) for r in runs]
  for r in runs:
    if r.step >= total:  # trained to the end before a kill
      _finish(r, Outcome("finished", r.step, {}), on_finish)
  active = lambda: [r for r in runs if r.outcome is None]
  start = min(r.step for r in runs)
  bar = progress_bar(total=total, initial=start, unit="step",
                     desc=base.get("name", "train") if not stacked else f"{n} trials side by side",
                     enabled=tcfg.progress and jax.process_index() == 0)
  preempt = Preemption(runs[0].mngr)
  in_a_row = None  # the previous step's counts, read a step late so dispatch stays ahead
  abandon_saves = False
  for r in runs:  # the first window times its steps (compiles included), not the set-up
    r.t_last = time.perf_counter()
  try:
    while active():
      local = [next(b) if r.outcome is None else None for b, r in zip(batches, runs)]
      # A stopped trial is fed a running one's batch: same shape (the step's length may vary,
      # jaxbert/data/buckets.py); its update is dropped.
      running = next(x for x in local if x is not None)
      local = [running if x is None else x for x in local]
      if stacked:
        batch = _stack_batches(local)  # N x (B,..) -> (N, B,..)
        rate = np.asarray([rates[r.index, min(r.step, total - 1) // accum] for r in runs])
        state, metrics = step_fn(state, shd.global_batch(batch, sh.batch), rngs, rate)
      else:
        state, metrics = step_fn(state, shd.global_batch(local[0], one.batch), rngs)
      if in_a_row is not None:
        counts = np.atleast_1d(np.asarray(in_a_row))
        for r in active():
          message = nonfinite_message(int(counts[r.index]), r.limit, r.step)
          if message:
            _finish(r, Outcome("diverged", r.step, r.last_eval, message), on_finish)
      in_a_row = metrics["nonfinite_in_a_row"]
      bar.update(1)
      # Once per step for every trial: a signal arriving during one trial's save stops all
      # of them at the same step, so they resume on batches of the same shape.
      preempted = preempt.reached(max((r.step for r in active()), default=0) + 1)
      for r in active():
        r.step += 1
        done = r.step
        r.tokens += int((local[r.index]["attention_mask"] > 0).sum()) * jax.process_count()
        r.pending.append(metrics)
        t = r.config.train
        if done % t.log_every == 0 or done == total:
          _log_window(r, logs[r.index], stacked, float(rates[r.index, max(done // accum - 1, 0)]),
                      flops, peak, bar if not stacked else None)
        stop = False
        if done % t.eval_every == 0 or done == total:
          r.last_eval = r.task.evaluate(take(state, r.index).params, predict)
          logs[r.index].write(done, "eval", r.last_eval)
          bar.write(("" if not stacked else f"{r.config.name} ") + f"step {done}: "
                    + "  ".join(f"{k}={v:.4g}" for k, v in r.last_eval.items()))
          r.t_last = time.perf_counter()
          if r.stopper is not None:
            stop = r.stopper.update(done, r.last_eval) and done < total
            r.note_early_stopping(stop)
        if stop or done == total or preempted or r.mngr.should_save(done):
          count = int(np.atleast_1d(np.asarray(metrics["nonfinite_in_a_row"]))[r.index])
          trial_state = take(state, r.index)
          message = nonfinite_message(count, r.limit, done)
          if message is None and not bool(all_finite(trial_state)):
            message = (f"training stopped at step {done}: the model state holds non-finite "
                       "values (an update overflowed); lower optim.lr")
          if message:  # never saved: the checkpoints hold finite values only
            _finish(r, Outcome("diverged", done, r.last_eval, message), on_finish)
            continue
          save_checkpoint(r.mngr, done, trial_state, tokenizer_json)
        if stop:
          log.info("%s: early stopping at step %d of %d", r.config.get("name", "run"), done, total)
          _finish(r, Outcome("stopped_early", done, r.last_eval), on_finish)
        elif done == total:
          _finish(r, Outcome("finished", done, r.last_eval), on_finish)
        elif preempted:
          if preempt.interrupted():  # the command says it last, in one line
            Preemption.note_stopped(r.workdir, done)
          else:
            log.warning("SIGTERM: saved a checkpoint at step %d; exiting (%s; the same command "
                        "continues it)", done, r.workdir)
          _finish(r, Outcome("preempted", done, r.last_eval), on_finish)
  except Exception as e:
    # Several processes, and not an error they all meet at the same step: another
    # process may be gone, and finishing the save in flight would wait for it.
    abandon_saves = jax.process_count() > 1 and not isinstance(e, UserError)
    raise
  finally:
    if not abandon_saves:
      for r in runs:
        r.mngr.wait_until_finished()
        r.mngr.close()
    bar.close()
    for b in batches:  # loader workers stop now, their shared memory freed
      close = getattr(b, "close", None)
      if close is not None:
        close()
    for metrics_log in logs:
      metrics_log.close()
    preempt.restore()
  return [r.outcome for r in runs]


def _stack_batches(local: list[dict]) -> dict:
  """Stacks the trials' batches; where trials resumed at different steps of a bucketed
  order their lengths differ, and the shorter are padded at the end (attention mask 0)."""
  out = {}
  for k in local[0]:
    arrays = [l[k] for l in local]
    if len({a.shape for a in arrays}) > 1:  # rare: no copy for the usual equal shapes
      shape = np.max([a.shape for a in arrays], axis=0)
      arrays = [np.pad(a, [(0, m - d) for d, m in zip(a.shape, shape)]) for a in arrays]
    out[k] = np.stack(arrays)
  return out


def _log_window(r: _Trial, metrics_log: MetricsLog, stacked: bool, learning_rate: float,
                flops: float, peak: float, bar) -> None:
  """Writes the mean of the metrics since the last window (counters: their last value)."""
  host = jax.device_get(r.pending)
  pick = (lambda m, k: m[k][r.index]) if stacked else (lambda m, k: m[k])
  dt = time.perf_counter() - r.t_last
  summary = {k: float(np.mean([pick(m, k) for m in host])) for k in host[0]}
  summary.update({k: float(pick(host[-1], k)) for k in COUNTERS})
  summary["learning_rate"] = learning_rate
  summary["tokens_per_s"] = r.tokens / dt
  summary["steps_per_s"] = len(host) / dt
  if flops and peak:  # side by side: each trial's share of the program's MFU
    summary["mfu"] = flops * len(host) / dt / peak
  metrics_log.write(r.step, "train", summary)
  if bar is not None:
    bar.set_postfix(loss=f"{summary['loss']:.3f}", tok_s=f"{summary['tokens_per_s']:.0f}")
  r.pending, r.tokens, r.t_last = [], 0, time.perf_counter()


def _finish(r: _Trial, outcome: Outcome, on_finish) -> None:
  r.outcome = outcome
  if outcome.status == "diverged":
    log.error("%s: %s", r.workdir, outcome.message)
  r.mngr.wait_until_finished()
  if on_finish is not None:
    on_finish(r.index, outcome)
