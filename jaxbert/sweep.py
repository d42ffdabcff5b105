"""Hyperparameter sweeps: one fine-tuning run per point of a search space.

  jaxbert sweep --config configs/finetune/sst2_sweep.py --workdir W \
      [--config.sweep.space.optim.lr=[1e-5,3e-5] --config.sweep.space.train.seed=[0,1]]

  W/trials/<id>/              a normal fine-tuning workdir per trial (resumable, exportable)
  W/trials/<id>/trial.json    written when the trial has finished; a restarted sweep skips it
  W/results.csv, results.md   every finished trial, and each setting's median over seeds
  W/plot.png                  the objective against each swept key
  W/best.json, W/best         the best trial of the setting with the best median (a symlink
                              to its workdir: `jaxbert export-hf W/best --out DIR`)

The objective is the task's main validation metric (or `sweep.metric`). Trials
that differ only in seed and learning-rate schedule train side by side in one
compiled program (jaxbert/trials.py); the others run one after another. Either way
each trial goes through the one trainer (jaxbert/train.py), with its guarantees:
- SIGTERM: every running trial saves at its next step boundary, the sweep stops and
  exits normally, and the same command finishes the trials; a preempted trial is
  never recorded as finished.
- A trial that diverges (train.max_nonfinite non-finite steps in a row) stops
  unsaved, is recorded with status `diverged`, is never chosen as best, and is not
  retried by a restart; the other trials go on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxbert import sweep_report
from jaxbert.checkpoint import write_json_atomic
from jaxbert.config import ConfigDict, set_key
from jaxbert.data import tasks as tasks_lib
from jaxbert.errors import UserError
from jaxbert.preemption import Preemption
from jaxbert.run import run_trials
from jaxbert import trials as trials_lib
from jaxbert import workdir_lock
from jaxbert.train import check_workdir_config

log = logging.getLogger("jaxbert")

SEED_KEY = "train.seed"
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
_NOT_SWEEPABLE = ("task", "name", "sweep")


@dataclasses.dataclass
class Trial:
  """One point of the search space: its config overrides and its run."""

  id: str
  overrides: dict[str, Any]   # dotted config key -> value
  config: ConfigDict          # the whole fine-tuning config of the run
  workdir: str


# --- the search space --------------------------------------------------------------


def search_space(config: ConfigDict) -> dict[str, Any]:
  """`config.sweep.space` as dotted key -> list of values or {distribution: (lo, hi)}."""
  space: dict[str, Any] = {}

  def walk(node, prefix):
    for k, v in node.items():
      key = prefix + k
      if isinstance(v, (list, tuple)):
        if not v:
          raise UserError(f"config.sweep.space.{key} is empty; give at least one value")
        space[key] = list(v)
      elif isinstance(v, (dict, ConfigDict)) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS:
        space[key] = _distribution(key, *dict(v).items())
      elif isinstance(v, (dict, ConfigDict)):
        walk(v, key + ".")
      else:
        raise UserError(f"config.sweep.space.{key}={v!r}: give a list of values, e.g. [{v!r}], "
                        f"or a distribution {{{DISTRIBUTIONS[0]!r}: (lo, hi)}} (method='random')")

  walk(config.sweep.space, "")
  if not space:
    raise UserError("config.sweep.space is empty: name the keys to sweep, e.g. "
                    "--config.sweep.space.optim.lr=[1e-5,3e-5] --config.sweep.space.train.seed=[0,1]")
  from jaxbert.defaults import sweep_config  # pylint: disable=g-import-not-at-top
  for key, values in space.items():
    if key.split(".")[0] in _NOT_SWEEPABLE:
      raise UserError(f"config.sweep.space.{key}: {key} cannot be swept")
    probe = copy.deepcopy(config)
    probe.sweep = sweep_config()  # so a misspelt key is matched against the run's keys only
    for v in values if isinstance(values, list) else [_draw(values, np.random.default_rng(0))]:
      try:
        set_key(probe, key, v)
      except UserError as e:
        raise UserError(f"config.sweep.space.{key}: {e}") from None
  if isinstance(space.get(SEED_KEY), dict):
    raise UserError(f"config.sweep.space.{SEED_KEY} must be a list of seeds, not a distribution")
  return space


def _distribution(key: str, item: tuple[str, Any]) -> tuple[str, tuple[float, float]]:
  name, bounds = item
  try:
    lo, hi = (float(b) for b in bounds)
  except (TypeError, ValueError):
    raise UserError(f"config.sweep.space.{key}: {name} takes (lo, hi), got {bounds!r}") from None
  if not lo < hi or (name == "log_uniform" and lo <= 0):
    raise UserError(f"config.sweep.space.{key}: {name} needs lo < hi"
                    + (" and lo > 0" if name == "log_uniform" else "") + f", got {bounds!r}")
  return name, (lo, hi)


def _draw(values, rng: np.random.Generator):
  if isinstance(values, list):
    return values[int(rng.integers(len(values)))]
  name, (lo, hi) = values
  if name == "uniform":
    return float(rng.uniform(lo, hi))
  if name == "log_uniform":
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
  return int(rng.integers(int(lo), int(hi) + 1))


def expand(config: ConfigDict) -> list[dict[str, Any]]:
  """Every trial's overrides: each setting with each seed, keys sorted, seeds fastest."""
  space = search_space(config)
  seeds = space.pop(SEED_KEY, None)
  keys = sorted(space)
  s = config.sweep
  per_setting = len(seeds) if seeds else 1
  if s.method == "grid":
    random_keys = [k for k in keys if not isinstance(space[k], list)]
    if random_keys:
      raise UserError(f"config.sweep.space.{random_keys[0]} is a distribution; grid search "
                      "needs lists (or set config.sweep.method='random')")
    settings = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    if s.num_trials and len(settings) * per_setting > s.num_trials:
      raise UserError(f"the grid has {len(settings) * per_setting} trials, more than "
                      f"config.sweep.num_trials={s.num_trials}; raise the budget, shrink the "
                      "space or set config.sweep.method='random'")
  elif s.method == "random":
    if s.num_trials < per_setting:
      raise UserError(f"random search needs config.sweep.num_trials >= the {per_setting} "
                      f"seed(s) of each setting, got {s.num_trials}")
    wanted = s.num_trials // per_setting
    rng = np.random.default_rng(s.seed)
    settings, seen = [], set()
    # Drawn one at a time, so a larger budget keeps the trials a smaller one drew.
    for _ in range(100 * wanted):
      point = {k: _draw(space[k], rng) for k in keys}
      ident = json.dumps(point, sort_keys=True, default=str)
      if ident not in seen:
        seen.add(ident)
        settings.append(point)
      if len(settings) == wanted:
        break
  else:
    raise UserError(f"config.sweep.method={s.method!r}: use 'grid' or 'random'")
  if seeds is None:
    return settings
  return [dict(setting, **{SEED_KEY: seed}) for setting in settings for seed in seeds]


def trial_id(overrides: dict[str, Any]) -> str:
  """A readable, filesystem-safe name, unique to the exact override values."""
  names = [k.rsplit(".", 1)[-1] for k in overrides]
  if len(set(names)) < len(names):  # two keys end alike: spell out the full paths
    names = list(overrides)
  short = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  slug = "_".join(f"{n}={short(v)}" for n, v in zip(names, overrides.values()))
  slug = re.sub(r"[^A-Za-z0-9=.,+_-]", "-", slug)[:80]
  digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]
  return f"{slug}-{digest}" if slug else digest


def make_trials(config: ConfigDict, workdir: str) -> list[Trial]:
  """The sweep's trials, each a plain fine-tuning config (no sweep group) and a workdir."""
  from jaxbert.defaults import sweep_config  # pylint: disable=g-import-not-at-top
  base = copy.deepcopy(config)
  base.sweep = sweep_config()  # a trial is a normal run: its config.json says nothing of sweeps
  if not base.data.data_dir and base.data.task not in tasks_lib.TFDS_TASKS:
    base.data.data_dir = os.path.join(workdir, "tfds")  # a local task is prepared once
  trials = []
  for overrides in expand(config):
    c = copy.deepcopy(base)
    for k, v in overrides.items():
      set_key(c, k, v)
    tid = trial_id(overrides)
    c.name = f"{config.get('name', 'sweep')}/{tid}"
    trials.append(Trial(tid, overrides, c, os.path.join(workdir, "trials", tid)))
  return trials


# --- trial records -----------------------------------------------------------------


def _normalized(config: ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict(), default=str))


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished_record(trial: Trial) -> dict[str, Any] | None:
  """The trial's record if it has ended (finished, stopped early or diverged) with
  exactly this config, else None."""
  record = _read_json(os.path.join(trial.workdir, "trial.json"))
  if record is None or record.get("config") != _normalized(trial.config):
    return None
  return record


def _eval_history(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [json.loads(l) for l in f if l.strip()]
  return [l for l in lines if l.get("split") == "eval"]


def make_record(trial: Trial, metrics: dict[str, float] | None, metric: str, *,
                mode: str, wall_s: float, status: str = "finished",
                message: str = "") -> dict[str, Any]:
  """What trial.json holds: status, overrides, final metrics, objective, steps, early
  stopping. A diverged trial's objective is NaN (it ranks last and is never best)."""
  results = _read_json(os.path.join(trial.workdir, "results.json")) or {}
  metrics = metrics or results.get("metrics") or {}
  # evaluate() lists the main metric first (results.json is on process 0 only).
  name = metric or results.get("main_metric") or next(iter(metrics), "")
  record = {"id": trial.id, "overrides": trial.overrides, "status": status, "metric": name,
            "value": float("nan"), "higher_is_better": results.get("higher_is_better", True),
            "metrics": metrics, "steps": None, "stopped_early": False, "best_eval": None,
            "mode": mode, "wall_s": round(wall_s, 3), "config": _normalized(trial.config)}
  if status == "diverged":
    return dict(record, message=message)
  if name not in metrics:
    raise UserError(f"config.sweep.metric={name!r} is not one of the task's metrics "
                    f"{sorted(metrics)} (trial {trial.workdir})")
  history = _eval_history(trial.workdir)
  higher = results.get("higher_is_better", True) if name == results.get("main_metric") else True
  best = max(history, key=lambda h: (1 if higher else -1) * h.get(name, -math.inf),
             default=None)
  stopping = results.get("early_stopping") or {}
  return dict(record, value=float(metrics[name]), higher_is_better=higher,
              steps=history[-1]["step"] if history else None,
              stopped_early=stopping.get("stopped_at") is not None,
              best_eval={"step": best["step"], "value": best[name]} if best else None)


# --- running -------------------------------------------------------------------------


def plan(trials: list[Trial], config: ConfigDict) -> list[list[Trial]]:
  """Trials grouped to train side by side (same group key), in trial order; or singly."""
  if not config.sweep.side_by_side:
    return [[t] for t in trials]
  groups: dict[str, list[Trial]] = {}
  for t in trials:
    groups.setdefault(trials_lib.group_key(t.config), []).append(t)
  limit = config.sweep.max_side_by_side or len(trials)
  return [g[i:i + limit] for g in groups.values() for i in range(0, len(g), limit)]


def run_sweep(config: ConfigDict, workdir: str, devices=None,
              on_record: Callable[[dict], None] | None = None) -> dict[str, Any]:
  """Runs (or continues) the sweep `config.sweep` describes in `workdir`; returns best.json.

  Finished trials (trial.json with the same config) are not run again; an unfinished
  one resumes from its checkpoints. `on_record` sees each new trial record (tests).
  The sweep workdir is locked while it runs (jaxbert/workdir_lock.py).
  """
  with workdir_lock.held(workdir):
    return _run_sweep(config, workdir, devices, on_record)


def _run_sweep(config: ConfigDict, workdir: str, devices, on_record) -> dict[str, Any]:
  if config.get("task") != "finetune" or "sweep" not in config:
    raise UserError("jaxbert sweep takes a fine-tuning config (configs/finetune/*.py) with a "
                    "config.sweep group")
  metric = config.sweep.metric
  task_entry = tasks_lib.TFDS_TASKS.get(config.data.task)
  if metric and task_entry and metric not in task_entry.metrics:
    raise UserError(f"config.sweep.metric={metric!r}: {config.data.task} reports "
                    f"{list(task_entry.metrics)}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  jax.config.update("jax_default_prng_impl", config.train.prng_impl)
  trials = make_trials(config, workdir)
  swept = list(trials[0].overrides)
  writer = jax.process_index() == 0
  if writer:
    write_json_atomic(os.path.join(workdir, "sweep.json"),
                      {"space": {k: v for k, v in search_space(config).items()},
                       "method": config.sweep.method, "num_trials": config.sweep.num_trials,
                       "trials": [t.id for t in trials]})
  records: dict[str, dict] = {}
  todo = []
  for t in trials:
    # A changed base config is refused, as for a run; the trainer records the config when
    # the trial starts training, so a sweep that fails on bad input claims no trial.
    check_workdir_config(t.workdir, t.config, record=False)
    record = finished_record(t)
    if record is not None:
      records[t.id] = record
    else:
      todo.append(t)
  groups = plan(todo, config)
  log.info("sweep: %d trials, %d finished, %d to run in %d program(s)", len(trials),
           len(records), len(todo), len(groups))

  def finish(trial, outcome, mode, wall_s):
    if outcome.status == "preempted":  # saved, not finished: the next run continues it
      return
    record = make_record(trial, outcome.metrics, metric, mode=mode, wall_s=wall_s,
                         status=outcome.status, message=outcome.message)
    records[trial.id] = record
    if writer:
      write_json_atomic(os.path.join(trial.workdir, "trial.json"), record)
    if on_record is not None:
      on_record(record)

  def report():
    done = [records[t.id] for t in trials if t.id in records]
    return sweep_report.write(workdir, done, swept, task=config.data.task) if done else {}

  report()
  # Installed for the whole sweep, so a SIGTERM between two trials is seen as well.
  with Preemption() as preemption:
    for group in groups:
      if preemption.requested():
        break
      t0 = time.perf_counter()
      mode = "one_by_one" if len(group) == 1 else "side_by_side"
      if len(group) > 1:
        log.info("sweep: %d trials side by side: %s", len(group), ", ".join(t.id for t in group))
      run_trials([t.config for t in group], [t.workdir for t in group], devices,
                 on_finish=lambda i, outcome: finish(
                     group[i], outcome, mode, (time.perf_counter() - t0) / len(group)))
      report()
    preempted = preemption.requested()
  unfinished = [t.id for t in trials if t.id not in records]
  if preempted:
    log.warning("sweep: SIGTERM; %d trial(s) not finished (%s) are saved where they stopped; "
                "the same command continues the sweep", len(unfinished), ", ".join(unfinished))
  best = report()
  diverged = [r["id"] for r in records.values() if r.get("status") == "diverged"]
  if diverged:
    log.warning("sweep: %d trial(s) diverged and were left out of the best: %s",
                len(diverged), ", ".join(diverged))
  best = dict(best, preempted=preempted, unfinished=unfinished, diverged=diverged)
  if best.get("trial"):
    log.info("sweep: best %s = %.4g (trial %s; setting median %.4g over %d seed(s))",
             best["metric"], best["value"], best["trial"], best["setting_median"],
             best["setting_seeds"])
  return best
