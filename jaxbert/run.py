"""Entry point shared by `jaxbert pretrain` and `jaxbert finetune`: config -> trained workdir."""

from __future__ import annotations

import logging
import os

import jax

from jaxbert import sharding as shd
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.optim import make_optimizer
from jaxbert.train import check_workdir_config, train

log = logging.getLogger("jaxbert")


def build_task(config: ConfigDict, workdir: str, mesh):
  if config.task == "pretrain":
    from jaxbert.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top
    return PretrainTask(config, workdir, mesh)
  if config.task == "finetune":
    from jaxbert.finetune import FinetuneTask  # pylint: disable=g-import-not-at-top
    return FinetuneTask(config, workdir, mesh)
  raise UserError(f"config.task must be 'pretrain' or 'finetune', not {config.task!r}")


def run(config: ConfigDict, workdir: str, devices=None) -> dict[str, float]:
  """Trains (or resumes) the run `config` describes in `workdir`; returns final eval metrics.

  `devices` restricts the mesh to some devices (tests); by default it spans all of them.
  """
  shd.maybe_initialize_distributed()
  jax.config.update("jax_default_prng_impl", config.train.prng_impl)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  n = mesh.size
  if config.train.batch_size % n:
    raise UserError(f"train.batch_size={config.train.batch_size} must be a multiple of the "
                    f"{n} devices (mesh {dict(mesh.shape)})")
  log.info("%d process(es), %d device(s), mesh %s", jax.process_count(), n, dict(mesh.shape))
  # Before the task writes caches into the workdir, so a different run's workdir stays as
  # it is; train() records the config once the task is built.
  check_workdir_config(workdir, config, record=False)
  # Process 0 prepares the shared caches (tokenizer, tokenized corpus, task files); the
  # others then read them instead of writing the same files at the same time.
  task = shd.process_0_first(lambda: build_task(config, workdir, mesh))
  make_tx = lambda params: make_optimizer(config.optim, params, task.optimizer_steps)
  return train(config, workdir, task, make_tx, mesh)
