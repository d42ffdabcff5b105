"""Model bundles on disk: parameters (Orbax), model config and tokenizer together.

A bundle directory is what `jaxbert import-hf` writes and what fine-tuning and
`jaxbert embed` start from:

  BUNDLE/model.json    {"model": BertConfig fields, "head": str, "extra": {...}}
  BUNDLE/tokenizer/    the tokenizer's own files
  BUNDLE/params/       an Orbax checkpoint of the parameter tree

Orbax stores arrays as tensorstore data plus JSON metadata: loading runs no code.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbert.errors import UserError
from jaxbert.model import BertConfig

MODEL_JSON = "model.json"


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


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
