"""What jaxbert keeps on disk: model bundles and a training run's checkpoints.

A bundle directory is what `jaxbert import-hf` writes and what fine-tuning and
`jaxbert embed` start from:

  BUNDLE/model.json    {"model": BertConfig fields, "head": str, "extra": {...}}
  BUNDLE/tokenizer/    the tokenizer's own files
  BUNDLE/params/       an Orbax checkpoint of the parameter tree

Orbax stores arrays as tensorstore data plus JSON metadata: loading runs no code.

Training checkpoints (WORKDIR/checkpoints/<step>/) are sealed: `seal` records the
size and sha256 of every file before the step folder is committed, and
`integrity_problem` checks a folder against that record. Orbax's own format has no
checksums, so without the record a flipped byte would restore as a wrong value.
`checkpoint_manager`, `save_checkpoint` and `restore_latest` are how the trainer
writes and reads them; a save that fails for lack of space is one UserError
(jaxbert/full_disk.py).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxbert import full_disk
from jaxbert.config import ConfigDict
from jaxbert.errors import UserError
from jaxbert.model import BertConfig

log = logging.getLogger("jaxbert")

MODEL_JSON = "model.json"
INTEGRITY_JSON = "jaxbert_integrity.json"
# Not covered by the record: the record itself, and Orbax's step metadata, which Orbax
# rewrites when it commits the folder (a commit time); the arrays never change.
_UNSEALED = (INTEGRITY_JSON, "_CHECKPOINT_METADATA")


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _file_record(path: str) -> list:
  with open(path, "rb") as f:
    return [os.path.getsize(path), hashlib.file_digest(f, "sha256").hexdigest()]


def _files_under(directory: str) -> list[str]:
  out = []
  for root, _, names in os.walk(directory):
    out.extend(os.path.relpath(os.path.join(root, n), directory) for n in names)
  return sorted(r for r in out if r not in _UNSEALED and not r.endswith(".tmp"))


def directory_digest(directory: str) -> str:
  """sha256 over the names, sizes and contents of the files under `directory` (those
  `seal` records): its identity wherever it is kept."""
  h = hashlib.sha256()
  for rel in _files_under(directory):
    h.update(json.dumps([rel, _file_record(os.path.join(directory, rel))]).encode())
  return h.hexdigest()


def seal(directory: str) -> None:
  """Records the size and sha256 of every file under a finished checkpoint `directory`."""
  files = {rel: _file_record(os.path.join(directory, rel)) for rel in _files_under(directory)}
  write_json_atomic(os.path.join(directory, INTEGRITY_JSON), {"version": 1, "files": files})


def is_sealed(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, INTEGRITY_JSON))


def integrity_problem(directory: str) -> str | None:
  """What differs from the sealed record (missing, truncated or changed file), else None.

  A folder without its record is damaged too: every committed checkpoint is sealed
  before Orbax renames it into place, so a missing record means a deleted file or an
  unfinished write, and nothing in the folder can be verified.
  """
  path = os.path.join(directory, INTEGRITY_JSON)
  if not os.path.isdir(directory):
    return "the folder is missing"
  if not os.path.isfile(path):
    return f"its integrity record {INTEGRITY_JSON} is missing (its files cannot be verified)"
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its integrity record {INTEGRITY_JSON} is unreadable ({e})"
  for rel, (size, digest) in sorted(files.items()):
    file = os.path.join(directory, rel)
    if not os.path.isfile(file):
      return f"{rel} is missing"
    if os.path.getsize(file) != size:
      return f"{rel} has {os.path.getsize(file)} bytes, {size} were written"
    if _file_record(file)[1] != digest:
      return f"{rel} differs from what was written (sha256 mismatch)"
  return None


def save_bundle(directory: str, params, model_cfg: BertConfig, tokenizer, *, head: str,
                extra: dict | None = None, overwrite: bool = False) -> None:
  """Writes params, config and tokenizer; the directory appears only when complete."""
  with new_directory(directory, overwrite) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "params"), jax.tree.map(np.asarray, params))
    tokenizer.save(os.path.join(tmp, "tokenizer"))
    write_json_atomic(os.path.join(tmp, MODEL_JSON),
                      {"model": model_cfg.to_dict(), "head": head, "extra": extra or {}})


@contextlib.contextmanager
def new_directory(directory: str, overwrite: bool = False) -> Iterator[str]:
  """Yields DIRECTORY.partial to fill; it becomes `directory` only if the block finishes.

  An existing `directory` is a UserError unless `overwrite`; it is replaced only at the end.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise UserError(f"{directory} already exists; choose another --out or remove it first")
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  yield tmp
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)


def read_model_json(directory: str) -> dict:
  path = os.path.join(directory, MODEL_JSON)
  if not os.path.isfile(path):
    raise UserError(f"{directory} is not a jaxbert checkpoint: {MODEL_JSON} is missing "
                    "(make one with `jaxbert import-hf` or a training run)")
  try:
    with open(path) as f:
      meta = json.load(f)
    meta["model"] = BertConfig.from_dict(meta["model"])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is malformed ({e}); re-create the checkpoint") from None
  return meta


def load_bundle(directory: str, target=None):
  """-> (params as numpy tree, BertConfig, tokenizer, meta). `target` restores sharded."""
  from jaxbert.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise UserError(f"checkpoint {directory} does not exist")
  meta = read_model_json(directory)
  params_dir = os.path.join(directory, "params")
  if not os.path.isdir(params_dir):
    raise UserError(f"{directory} has no params/ folder; the checkpoint is incomplete")
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(params_dir, target) if target is not None else ckptr.restore(params_dir)
  tokenizer = load_tokenizer(os.path.join(directory, "tokenizer"))
  return params, meta["model"], tokenizer, meta


def tokenizer_files(tokenizer) -> dict[str, str]:
  """The tokenizer's files as {name: base64}, to travel inside every training checkpoint."""
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer.save(tmp)
    return {name: base64.b64encode(open(os.path.join(tmp, name), "rb").read()).decode("ascii")
            for name in sorted(os.listdir(tmp))}


def write_tokenizer_files(files: dict[str, str], directory: str) -> None:
  """Inverse of `tokenizer_files`: writes the files into `directory`."""
  os.makedirs(directory, exist_ok=True)
  for name, data in files.items():
    if os.path.basename(name) != name:
      raise UserError(f"checkpoint tokenizer file name {name!r} is not a plain file name")
    with open(os.path.join(directory, name), "wb") as f:
      f.write(base64.b64decode(data))


# --- a training run's checkpoints (WORKDIR/checkpoints/<step>/) -------------------

def _seal_pending_save(root: str) -> None:
  """Orbax's post-finalization hook: seal the step folder it is about to commit.

  Runs on the primary process after every process has written its part and before
  the folder is renamed into place, so a committed checkpoint always has its record.
  """
  pending = [os.path.join(root, n) for n in os.listdir(root) if ".orbax-checkpoint-tmp" in n]
  if not pending:  # Not a rename-to-commit file system: seal the newest step in place.
    pending = [os.path.join(root, n) for n in os.listdir(root)
               if n.isdigit() and not is_sealed(os.path.join(root, n))]
  if pending:
    seal(max(pending, key=os.path.getmtime))


def checkpoint_manager(workdir: str, config: ConfigDict) -> ocp.CheckpointManager:
  """The run's checkpoints: every `train.checkpoint_every` steps, sealed, kept a few.

  Nothing is written before the first save: a run that fails while it is set up
  leaves no checkpoints/ folder behind.
  """
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(
      # Exactly every checkpoint_every steps (Orbax's default also saves the first step).
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(
          config.train.checkpoint_every),
      max_to_keep=config.train.keep_checkpoints,
      create=False,  # the first save creates the folder
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,  # folders of saves a kill interrupted
      async_options=ocp.AsyncOptions(
          post_finalization_callback=functools.partial(_seal_pending_save, root)))
  # Two items per step: the train state, and the tokenizer's files (so that a step
  # folder alone is enough to fine-tune from or export).
  return full_disk.CheckpointManager(root, options=options, item_names=("default", "tokenizer"))


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state, tokenizer_json: dict) -> None:
  """Starts the asynchronous save of `state` and the tokenizer as checkpoint `step`."""
  mngr.save(step, args=ocp.args.Composite(default=ocp.args.StandardSave(state),
                                          tokenizer=ocp.args.JsonSave(tokenizer_json)),
            force=True)


def _saved_state_metadata(step_dir: str):
  """Shapes and dtypes of the train state in a step folder (its `default` item)."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.metadata(epath.Path(step_dir) / "default")
  finally:
    handler.close()


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _layout(tree) -> dict[str, tuple]:
  """'params/bert/...' -> (shape, dtype) for every array of a state or its metadata."""
  return {"/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_layout(saved_metadata, abstract_state, step_dir: str) -> None:
  """UserError if a readable checkpoint holds another model (shapes, dtypes or tree)."""
  saved, wanted = _layout(saved_metadata), _layout(abstract_state)
  if saved == wanted:
    return
  differ = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  k = ([d for d in differ if d.startswith("params/")] or differ)[0]
  show = lambda v: "absent" if v is None else f"{v[1]}{list(v[0])}"
  raise UserError(
      f"checkpoint {step_dir} does not fit this run: {k} is {show(saved.get(k))} there but "
      f"{show(wanted.get(k))} here ({len(differ)} array(s) differ). It was written with "
      "another model config, tokenizer or optimizer (or an older jaxbert); use a new "
      "--workdir, or the config and tokenizer of the run that wrote it")


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves damaged step folders to WORKDIR/checkpoints_damaged/ so new saves can take
  their step numbers; the files are kept for inspection."""
  root = str(mngr.directory)
  if jax.process_count() > 1:  # every process has finished reading them
    multihost_utils.sync_global_devices("jaxbert: checkpoints checked")
  if jax.process_index() == 0:
    dest_root = os.path.join(os.path.dirname(root), "checkpoints_damaged")
    os.makedirs(dest_root, exist_ok=True)
    for step in steps:
      dest, n = os.path.join(dest_root, str(step)), 1
      while os.path.exists(dest):
        dest, n = os.path.join(dest_root, f"{step}.{n}"), n + 1
      os.replace(os.path.join(root, str(step)), dest)
      log.warning("moved the damaged checkpoint %s/%d to %s", root, step, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxbert: damaged checkpoints moved")
  mngr.reload()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """The newest whole checkpoint, restored into `abstract_state`'s shardings; or None.

  A checkpoint whose files fail their integrity record, or that does not read back,
  is reported and set aside, and the next older one is tried. One that reads back
  but holds arrays of other shapes belongs to another run: UserError, nothing moved.
  """
  damaged, state = [], None
  for step in sorted(mngr.all_steps(), reverse=True):
    step_dir = os.path.join(str(mngr.directory), str(step))
    problem = integrity_problem(step_dir)
    if problem is None:
      try:
        metadata = _saved_state_metadata(step_dir)
      except Exception as e:  # pylint: disable=broad-except
        problem = f"its metadata is unreadable ({type(e).__name__}: {_first_line(e)})"
      else:
        _check_layout(metadata, abstract_state, step_dir)
        try:
          state = mngr.restore(step, args=ocp.args.Composite(
              default=ocp.args.StandardRestore(abstract_state)))["default"]
          break
        except Exception as e:  # pylint: disable=broad-except
          problem = f"it does not read back ({type(e).__name__}: {_first_line(e)})"
    log.warning("checkpoint %s is damaged: %s; trying an older one", step_dir, problem)
    damaged.append(step)
  if damaged:
    if state is None:
      log.warning("no readable checkpoint left in %s; training starts from step 0",
                  mngr.directory)
    _set_aside(mngr, damaged)
  return state


def _first_line(e: BaseException) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else ""
