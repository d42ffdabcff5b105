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


def _closest(key: str, config: ConfigDict) -> str:
  keys = flat_keys(config)
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
  if not close:  # A misspelt last component ("lr" for "learning_rate") still helps.
    by_last = {k.rsplit(".", 1)[-1]: k for k in keys}
    match = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_last), n=1, cutoff=0.6)
    close = [by_last[match[0]]] if match else []
  return f"; did you mean --config.{close[0]}?" if close else ""


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
  config = load_config_file(path)
  apply_overrides(config, overrides)
  return config


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
