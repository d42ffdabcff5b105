"""Model bundles on disk: parameters (Orbax), model config and tokenizer together.

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
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbert.errors import UserError
from jaxbert.model import BertConfig

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


def seal(directory: str) -> None:
  """Records the size and sha256 of every file under a finished checkpoint `directory`."""
  files = {rel: _file_record(os.path.join(directory, rel)) for rel in _files_under(directory)}
  write_json_atomic(os.path.join(directory, INTEGRITY_JSON), {"version": 1, "files": files})


def is_sealed(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, INTEGRITY_JSON))


def integrity_problem(directory: str) -> str | None:
  """What differs from the sealed record (missing, truncated or changed file), else None.

  An unsealed folder (written before checkpoints were sealed) has nothing to check: None.
  """
  path = os.path.join(directory, INTEGRITY_JSON)
  if not os.path.isfile(path):
    return None if os.path.isdir(directory) else "the folder is missing"
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
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise UserError(f"{directory} already exists; choose another --out or remove it first")
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, "params"), jax.tree.map(np.asarray, params))
  tokenizer.save(os.path.join(tmp, "tokenizer"))
  write_json_atomic(os.path.join(tmp, MODEL_JSON),
                    {"model": model_cfg.to_dict(), "head": head, "extra": extra or {}})
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
