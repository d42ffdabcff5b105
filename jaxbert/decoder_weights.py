"""Reading a decoder's weights: `load(path) -> (DecoderConfig, params, tokenizer)`.

`path` is any of
  - a bundle from `jaxbert import-hf` (model.json with head "causal_lm", params/, tokenizer/),
  - a causal-LM training workdir (its newest undamaged checkpoint), or
  - one of its checkpoints/<step> folders.
A run's architecture is its config.json `model` group (jaxbert.defaults.decoder_config,
vocabulary padded from its tokenizer's), or, for a run continued from `init`, that
checkpoint's architecture with the run's dropout. Parameters come back as numpy arrays
(float32), the config with dtype float32 and remat off (the caller sets its own).
"""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from jaxbert.checkpoint import MODEL_JSON, integrity_problem
from jaxbert.decoder import DecoderConfig
from jaxbert.errors import UserError

HEAD = "causal_lm"


def _bundle_meta(path: str) -> dict | None:
  """model.json of a decoder bundle at `path`, None when `path` is no bundle."""
  file = os.path.join(path, MODEL_JSON)
  if not os.path.isfile(file):
    return None
  try:
    with open(file) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{file} is malformed ({e}); re-create the checkpoint") from None
  if meta.get("head") != HEAD:
    raise UserError(f"{path} is an encoder (BERT) checkpoint, not a decoder; give a decoder "
                    "bundle (jaxbert import-hf of a GPT-2, Llama or GGUF model) or a causal-LM run")
  return meta


def is_decoder(path: str) -> bool:
  """Whether `path` is a decoder bundle or a decoder run (workdir or step folder)."""
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, MODEL_JSON)):
    try:
      with open(os.path.join(path, MODEL_JSON)) as f:
        return json.load(f).get("head") == HEAD
    except (OSError, ValueError):
      return False
  workdir = _workdir_of(path)
  if workdir is None:
    return False
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return "arch" in (json.load(f).get("model") or {})
  except (OSError, ValueError, AttributeError):
    return False


def _workdir_of(path: str) -> str | None:
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    return os.path.dirname(os.path.dirname(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path
  return None


def _config(meta_model: dict, where: str) -> DecoderConfig:
  try:
    return DecoderConfig.from_dict(meta_model)
  except (TypeError, ValueError) as e:
    raise UserError(f"{where}: the decoder config is invalid ({e})") from None


def load(path: str, key: str = "checkpoint"):
  """(DecoderConfig, params as a numpy tree, tokenizer); `key` names `path` in messages."""
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  given, path = path, os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"{key}={given}: no such file or directory")
  meta = _bundle_meta(path)
  if meta is not None:
    cfg = _config(meta["model"], os.path.join(path, MODEL_JSON))
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
      raise UserError(f"{path} has no params/ folder; the checkpoint is incomplete")
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(params_dir)
    # Bundles come from import-hf, which keeps the model's own tokenizer.json.
    return cfg, params, bpe_tokenizer.load(os.path.join(path, "tokenizer"))
  return _load_run(given, path, key)


def _load_run(given: str, path: str, key: str):
  from jaxbert import decoder_tokenizer, defaults, handover  # pylint: disable=g-import-not-at-top
  from jaxbert.config import ConfigDict  # pylint: disable=g-import-not-at-top
  from jaxbert.tokenizer import padded_vocab_size  # pylint: disable=g-import-not-at-top
  workdir = _workdir_of(path)
  if workdir is None:
    raise UserError(f"{key}={given} is neither a decoder bundle (with {MODEL_JSON}), a training "
                    "workdir (with checkpoints/) nor one of its checkpoints/<step> folders")
  if workdir == path:
    step_dir = handover._latest_step_dir(os.path.join(path, "checkpoints"), key)  # pylint: disable=protected-access
  else:
    step_dir = path
    problem = integrity_problem(step_dir)
    if problem is not None:
      raise UserError(f"{key}={given}: the checkpoint is damaged ({problem}); use another step "
                      "or the workdir (its newest undamaged checkpoint)")
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      run_config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{workdir}/config.json is missing or malformed ({e})") from None
  model = run_config.get("model") or {}
  if "arch" not in model:
    raise UserError(f"{key}={given} is an encoder (BERT) run, not a decoder run")
  tokenizer = handover._checkpoint_tokenizer(step_dir, decoder_tokenizer.load)  # pylint: disable=protected-access
  if tokenizer is None:
    tokenizer = decoder_tokenizer.load(os.path.join(workdir, "tokenizer"))
  if run_config.get("init"):
    cfg = load(run_config["init"], key=f"{workdir}/config.json init")[0]
    if model.get("dropout_rate") is not None:
      cfg = cfg.replace(dropout_rate=model["dropout_rate"])
  else:
    cfg = defaults.decoder_config(ConfigDict(model), padded_vocab_size(tokenizer.vocab_size))
  params = handover._restore_params(os.path.join(step_dir, "default"), ("params",))  # pylint: disable=protected-access
  return cfg.replace(dtype="float32", remat=False), params, tokenizer
