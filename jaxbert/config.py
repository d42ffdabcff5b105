"""Run configs: `configs/*.py` files with `get_config()`, overridden from the command line.

    jaxbert pretrain --config configs/pretrain/mini.py --config.train.steps=1000

An override must name an existing key; a typo is a `UserError` that suggests the
closest valid key. Values are parsed as Python literals (`1e-4`, `True`, `[1, 2]`)
and fall back to plain strings (`--config.optim.freeze=encoder`).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Iterable

import ml_collections

from jaxbert.errors import UserError

ConfigDict = ml_collections.ConfigDict


def load_config_file(path: str) -> ConfigDict:
  """Imports `path` and returns its `get_config()`."""
  if not os.path.isfile(path):
    raise UserError(f"config file {path} does not exist (see configs/ for the shipped ones)")
  spec = importlib.util.spec_from_file_location(f"_jaxbert_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A user's config file: report it as theirs, not ours.
    raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ConfigDict):
    raise UserError(f"get_config() in {path} must return an ml_collections.ConfigDict")
  return config


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf key as a dotted path."""
  keys = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    if isinstance(v, ConfigDict):
      keys.extend(flat_keys(v, path + "."))
    else:
      keys.append(path)
  return keys


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


# Names users bring from other trainers (Hugging Face, BERT's flags), by a key's last
# part: tried before spelling distance, which would take `optim.learning_rate` for
# `optim.name`. Several targets: the first the config has.
ALIASES = {
    "learning_rate": ("lr",), "base_lr": ("lr",), "peak_lr": ("lr",),
    "lr_schedule": ("decay",), "schedule": ("decay",), "scheduler": ("decay",),
    "lr_scheduler_type": ("decay",), "warmup": ("warmup_steps",),
    "num_warmup_steps": ("warmup_steps",), "warmup_ratio": ("warmup_fraction",),
    "warmup_proportion": ("warmup_fraction",), "optimizer": ("name",),
    "epochs": ("epochs", "steps"), "num_epochs": ("epochs", "steps"),
    "num_train_epochs": ("epochs", "steps"), "max_steps": ("steps",),
    "num_train_steps": ("steps",), "train_steps": ("steps",), "num_steps": ("steps",),
    "batch": ("batch_size",), "train_batch_size": ("batch_size",),
    "per_device_train_batch_size": ("batch_size",), "wd": ("weight_decay",),
    "weight_decay_rate": ("weight_decay",), "max_grad_norm": ("clip_norm",),
    "grad_clip": ("clip_norm",), "clip": ("clip_norm",), "gradient_clip": ("clip_norm",),
    "gradient_accumulation_steps": ("accum_steps",), "grad_accum": ("accum_steps",),
    "accumulation_steps": ("accum_steps",), "beta1": ("b1",), "beta2": ("b2",),
    "adam_beta1": ("b1",), "adam_beta2": ("b2",), "adam_epsilon": ("eps",),
    "epsilon": ("eps",), "layer_decay": ("layer_lr_decay",), "llrd": ("layer_lr_decay",),
    "layerwise_lr_decay": ("layer_lr_decay",), "freeze_layers": ("freeze",),
    "frozen": ("freeze",), "dropout": ("hidden_dropout",),
    "hidden_dropout_prob": ("hidden_dropout",), "attention_probs_dropout_prob": ("attention_dropout",),
    "num_hidden_layers": ("num_layers",), "layers": ("num_layers",),
    "num_attention_heads": ("num_heads",), "heads": ("num_heads",),
    "max_seq_length": ("max_seq_len",), "max_length": ("max_seq_len",), "seq_len": ("max_seq_len",),
    "save_steps": ("checkpoint_every",), "save_every": ("checkpoint_every",),
    "eval_steps": ("eval_every",), "logging_steps": ("log_every",),
    "patience": ("early_stopping_patience",), "workers": ("num_workers",),
}


def suggest(key: str, keys: list[str]) -> str:
  """The valid key (dotted or not) a user most likely meant by `key`, or ""."""
  group, _, last = key.rpartition(".")
  by_last: dict[str, list[str]] = {}
  for k in keys:
    by_last.setdefault(k.rpartition(".")[2], []).append(k)
  for target in ALIASES.get(last.lower(), ()) + (last,):
    found = by_last.get(target, [])
    same_group = [k for k in found if k.rpartition(".")[0] == group]
    if same_group or found:
      return (same_group or found)[0]
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
  if not close:  # A misspelt last component still helps.
    match = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
    close = [by_last[match[0]][0]] if match else []
  return close[0] if close else ""


def _closest(key: str, config: ConfigDict) -> str:
  close = suggest(key, flat_keys(config))
  return f"; did you mean --config.{close}?" if close else ""


def set_key(config: ConfigDict, key: str, value: Any) -> None:
  """Sets a dotted `key`, which must already exist, converting to its type."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    open_group = isinstance(node, ConfigDict) and not node.is_type_safe and i == len(parts) - 1
    if open_group and part not in node:  # free-form groups (e.g. data.options) take new keys
      node[part] = value
      return
    if not isinstance(node, ConfigDict) or part not in node:
      raise UserError(f"unknown config key {key!r}{_closest(key, config)}")
    if i < len(parts) - 1:
      node = node[part]
  leaf, old = parts[-1], node[parts[-1]]
  if isinstance(old, ConfigDict):
    raise UserError(f"config key {key!r} is a group; set one of its keys: "
                    + ", ".join(f"{key}.{k}" for k in flat_keys(old)))
  value = _coerce(key, old, value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise UserError(f"config key {key!r}: cannot set {value!r} ({e})") from None


def _coerce(key: str, old: Any, value: Any) -> Any:
  if old is None or value is None:
    return value
  if isinstance(old, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    raise UserError(f"config key {key!r} takes true/false, got {value!r}")
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(old, str) and not isinstance(value, str):
    return str(value)
  if isinstance(old, (int, float)) and isinstance(value, str):
    raise UserError(f"config key {key!r} takes a number, got {value!r}")
  if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(old)(value)
  return value


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
  """Applies `--config.a.b=value` (or `a.b=value`) strings in order."""
  for item in overrides:
    text = item[2:] if item.startswith("--") else item
    if not text.startswith("config."):
      raise UserError(f"unrecognised argument {item!r}; overrides look like --config.train.steps=100")
    if "=" not in text:
      raise UserError(f"override {item!r} needs a value: --{text}=VALUE")
    key, raw = text[len("config."):].split("=", 1)
    set_key(config, key, _parse_value(raw))
  return config


def load(path: str, overrides: Iterable[str] = ()) -> ConfigDict:
  """The config file with the overrides applied, validated as a whole (jaxbert/validate.py)
  before any data is read."""
  from jaxbert.validate import check_data_locations, validate  # pylint: disable=g-import-not-at-top
  config = load_config_file(path)
  apply_overrides(config, overrides)
  validate(config)
  check_data_locations(config)
  return config


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
