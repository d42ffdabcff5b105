"""What a fine-tuning run learned to do: its task's kind, label names, inputs and settings.

`jaxbert predict` and `export-hf` need the task a checkpoint was fine-tuned on. It is
read back the way the run read it (`tasks.load_task` with the run's config), on the
first example of the run's evaluation split only: the label set, the text fields and
the QA decoding options then equal those the run's evaluation used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile

from jaxbert.checkpoint import MODEL_JSON
from jaxbert.config import ConfigDict
from jaxbert.data import tasks as tasks_lib
from jaxbert.defaults import data_dir_default
from jaxbert.errors import UserError


def run_workdir(path: str) -> str | None:
  """The training workdir of a checkpoint path (workdir or checkpoints/<step>); None for
  a bundle or anything else."""
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, MODEL_JSON)):
    return None
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    return os.path.dirname(os.path.dirname(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path
  return None


def read_run_config(workdir: str) -> ConfigDict:
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      return ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"{workdir}/config.json is missing or malformed ({e})") from None


@dataclasses.dataclass
class RunTask:
  """A fine-tuning run's task as its evaluation saw it."""

  spec: tasks_lib.TaskSpec
  options: dict           # QA decoding options in effect (TaskData.options)
  file_options: dict      # local-file options of the run (column names, format, ...)
  max_seq_len: int
  batch_size: int
  pooling: str
  name: str               # config.data.task
  local: bool             # the user's own files, not a tfds dataset
  config: ConfigDict      # the run's config.json


def _first_example(split: str) -> str:
  """`split` narrowed to its first example ("validation" -> "validation[:1]")."""
  return re.sub(r"\[[^\]]*\]$", "", split) + "[:1]"


def _options(d: ConfigDict) -> dict:
  return {**d.get("options", ConfigDict()).to_dict(), **d.get("eval_options", ConfigDict()).to_dict()}


def load_run_split(workdir: str, config: ConfigDict, split: str, tokenizer,
                   key: str = "--checkpoint") -> tasks_lib.TaskData:
  """Split `split` of the run's task, read and encoded as the run's evaluation read its split
  (config.data's task, data_dir, max_seq_len, options and eval_options)."""
  d = config.data
  local = d.task not in tasks_lib.TFDS_TASKS
  prepared = os.path.join(workdir, "tfds")
  with tempfile.TemporaryDirectory(prefix="jaxbert-task-") as tmp:
    try:
      # Local files: where the run prepared them (never into a data_dir); tfds: its data_dir.
      data_dir = ((prepared if os.path.isdir(prepared) else tmp) if local else
                  tasks_lib.tfds_data_dir(d.task, d.get("data_dir") or data_dir_default()))
      return tasks_lib.load_task(d.task, split=split, tokenizer=tokenizer,
                                 max_seq_len=d.max_seq_len, data_dir=data_dir, **_options(d))
    except UserError as e:
      raise UserError(f"{key}={workdir}: cannot read split {split!r} of the task {d.task!r} "
                      f"the run was fine-tuned on ({e})") from None


def run_task(workdir: str, tokenizer, key: str = "--checkpoint") -> RunTask:
  """The task of the fine-tuning run in `workdir`; a UserError for other runs.

  Reads the run's task data (tfds, or its local files, which must still be where the
  run found them); never writes into the run except into the prepared-data folder the
  run itself made.
  """
  config = read_run_config(workdir)
  if config.get("task") != "finetune":
    raise UserError(f"{key}={workdir} is a {config.get('task')!r} run; this needs a "
                    "fine-tuned checkpoint (jaxbert finetune)")
  d = config.data
  local = d.task not in tasks_lib.TFDS_TASKS
  data = load_run_split(workdir, config, _first_example(d.eval_split), tokenizer, key)
  options = _options(d)
  file_options = {k: v for k, v in options.items() if k not in data.options} if local else {}
  return RunTask(spec=data.spec, options=data.options, file_options=file_options,
                 max_seq_len=int(d.max_seq_len), batch_size=int(config.train.batch_size),
                 pooling=config.get("head", ConfigDict()).get("pooling", "cls"), name=d.task,
                 local=local, config=config)
