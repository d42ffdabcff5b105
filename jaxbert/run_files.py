"""A run's files besides its checkpoints: metrics.jsonl with TensorBoard events,
config.json, which says which run a workdir holds (a resumed run must match it), and the
summary a finished run prints of where they all are."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import jax

from jaxbert.checkpoint import write_json_atomic
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError

# Keys that may change between a run and its resumption; anything else is a different run.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.progress", "train.max_nonfinite",
                     "train.peak_flops", "mesh.data", "mesh.fsdp", "data.num_workers",
                     "data.eval_examples")


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


def summary(config: ConfigDict, workdir: str) -> str:
  """The end of a finished run's output: where its files are and what to run next."""
  w = os.path.abspath(workdir)
  ckpt_root = os.path.join(w, "checkpoints")
  steps = sorted(int(n) for n in (os.listdir(ckpt_root) if os.path.isdir(ckpt_root) else ())
                 if n.isdigit())
  lines = [f"{config.get('name') or config.task} finished: {w}"]
  if steps:
    lines.append(f"  checkpoint   {os.path.join(ckpt_root, str(steps[-1]))} (step {steps[-1]})")
  lines.append(f"  metrics      {os.path.join(w, 'metrics.jsonl')}")
  lines.append(f"  TensorBoard  tensorboard --logdir {os.path.join(w, 'tensorboard')}  "
               "(pip install tensorboard)")
  quoted = shlex.quote(w)
  from jaxbert.defaults import is_instruct  # pylint: disable=g-import-not-at-top
  if is_instruct(config):  # a decoder again: generate and export as one
    lines.append(f"  results      {os.path.join(w, 'results.json')}, "
                 f"{os.path.join(w, 'predictions.jsonl')}")
    lines.append(f"  next         jaxbert generate --checkpoint {quoted} --input FILE")
    lines.append(f"               jaxbert export-hf {quoted} --out {shlex.quote(w + '-hf')}")
  elif config.task == "finetune":
    results = [os.path.join(w, n) for n in ("results.json", "predictions.jsonl")
               if os.path.exists(os.path.join(w, n))]
    if results:
      lines.append(f"  results      {', '.join(results)}")
    lines.append(f"  next         jaxbert predict --checkpoint {quoted} --input FILE "
                 "--output predictions.jsonl")
    lines.append(f"               jaxbert export-hf {quoted} --out {shlex.quote(w + '-hf')}")
  elif "arch" not in config.model:  # an encoder (decoders are not fine-tuned by jaxbert)
    lines.append(f"  next         jaxbert finetune --config configs/finetune/local.py "
                 f"--workdir {shlex.quote(w + '-finetune')} --config.init={quoted} "
                 "--config.data.task=TASK_FOLDER")
  return "\n".join(lines)
