"""Entry point shared by `jaxbert pretrain`, `jaxbert finetune` and the sweep's trials:
configs -> mesh -> task -> the trainer (jaxbert/train.py)."""

from __future__ import annotations

import importlib
import logging
import os

import jax

from jaxbert import defaults
from jaxbert import sharding as shd
from jaxbert import workdir_lock
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.train import Outcome, TrainingDiverged, check_workdir_config, train_trials

log = logging.getLogger("jaxbert")


# (config.task, defaults.model_family) -> "module:callable(config, workdir, mesh)";
# instruction tuning is `jaxbert finetune` with data.task = "instruct" (defaults.is_instruct).
TASKS = {
    ("pretrain", "encoder"): "jaxbert.pretrain:build_task",   # MLM + NSP
    ("pretrain", "decoder"): "jaxbert.clm:build_task",        # next-token prediction
    ("finetune", "encoder"): "jaxbert.finetune:FinetuneTask",
    ("instruct", "decoder"): "jaxbert.instruct:build_task",   # finetune, data.task="instruct"
}


def build_task(config: ConfigDict, workdir: str, mesh):
  """The task of `config`; its inputs (tokenizer, corpus, task files) are prepared first."""
  family = defaults.model_family(config)
  kind = "instruct" if defaults.is_instruct(config) else config.task
  target = TASKS.get((kind, family))
  if target is None:
    kinds = ", ".join(f"{t} ({f})" for t, f in TASKS)
    raise UserError(f"config.task={config.task!r} with a {family} model is not a run jaxbert "
                    f"trains; it trains {kinds}")
  module, name = target.split(":")
  return getattr(importlib.import_module(module), name)(config, workdir, mesh)


def run(config: ConfigDict, workdir: str, devices=None) -> dict[str, float]:
  """Trains (or resumes) the run `config` describes in `workdir`; returns final eval metrics.

  `devices` restricts the mesh to some devices (tests); by default it spans all of them.
  A run that diverges raises TrainingDiverged. The workdir is locked while it runs,
  and left as found if it was fresh and the run fails on bad input (workdir_lock).
  """
  with workdir_lock.claimed(workdir):
    outcome = run_trials([config], [workdir], devices)[0]
  if outcome.status == "diverged":
    raise TrainingDiverged(outcome.message)
  return outcome.metrics


def run_trials(configs: list[ConfigDict], workdirs: list[str], devices=None,
               on_finish=None) -> list[Outcome]:
  """Trains (or resumes) runs that share one program (one run, or a sweep's trials side
  by side); returns each one's outcome. See jaxbert.train.train_trials."""
  base = configs[0]
  shd.maybe_initialize_distributed()
  jax.config.update("jax_default_prng_impl", base.train.prng_impl)
  workdirs = [os.path.abspath(w) for w in workdirs]
  for w in workdirs:
    os.makedirs(w, exist_ok=True)
  mesh = shd.make_mesh(base.mesh.data, base.mesh.fsdp, devices)
  n = mesh.size
  if base.train.batch_size % n:
    raise UserError(f"train.batch_size={base.train.batch_size} must be a multiple of the "
                    f"{n} devices (mesh {dict(mesh.shape)})")
  log.info("%d process(es), %d device(s), mesh %s", jax.process_count(), n, dict(mesh.shape))
  # Before the task writes caches into the workdir, so a different run's workdir stays as
  # it is; the trainer records the config once the task is built.
  for c, w in zip(configs, workdirs):
    check_workdir_config(w, c, record=False)
  # Process 0 prepares the shared caches (tokenizer, tokenized corpus, task files); the
  # others then read them instead of writing the same files at the same time.
  task = shd.process_0_first(lambda: build_task(base, workdirs[0], mesh))
  tasks = [task] + [task.for_run(c, w) for c, w in zip(configs[1:], workdirs[1:])]
  return train_trials(configs, workdirs, tasks, mesh, on_finish)
