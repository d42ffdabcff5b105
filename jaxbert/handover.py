"""Hand-over of pre-trained weights into a new run.

`config.init` names a pre-training workdir (its latest checkpoint), one checkpoint
step folder inside it, or a bundle from `jaxbert import-hf`. Fine-tuning reads only
the encoder (`bert/...`), continued pre-training the MLM and NSP heads too, through
an Orbax partial restore straight into the target shardings; new heads are
initialised, and the optimizer, step and schedule start fresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from jaxbert.checkpoint import (MODEL_JSON, integrity_problem, load_bundle, read_model_json,
                                write_json_atomic, write_tokenizer_files)
from jaxbert.config import ConfigDict
from jaxbert import lora as lora_lib
from jaxbert import params as params_lib
from jaxbert.errors import UserError
from jaxbert.model import BertConfig

log = logging.getLogger("jaxbert")


@dataclasses.dataclass
class Source:
  """Where pre-trained weights come from."""

  item_dir: str            # the Orbax checkpoint folder to read
  prefix: tuple[str, ...]  # path of the parameter tree inside it
  model_cfg: BertConfig
  tokenizer: object
  description: str


def _latest_step_dir(ckpt_root: str, key: str) -> str:
  """The newest step folder whose files match their integrity record."""
  steps = sorted((int(n) for n in os.listdir(ckpt_root) if n.isdigit()), reverse=True)
  for step in steps:
    step_dir = os.path.join(ckpt_root, str(step))
    problem = integrity_problem(step_dir)
    if problem is None:
      return step_dir
    log.warning("checkpoint %s is damaged: %s; trying an older one", step_dir, problem)
  raise UserError(f"{ckpt_root} holds no finished{' undamaged' if steps else ''} checkpoint; "
                  f"train longer or point {key} at another run")


def open_source(init: str, key: str = "config.init") -> Source:
  """Resolves `init` to a readable source, or a UserError saying what was expected.

  `key` is what the user set to `init` (an option or argument), for the messages.
  """
  from jaxbert.defaults import bert_config  # pylint: disable=g-import-not-at-top
  from jaxbert.tokenizer import load_tokenizer, padded_vocab_size  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(init)
  if not os.path.exists(path):
    raise UserError(f"{key}={init}: no such file or directory")
  if os.path.isfile(os.path.join(path, MODEL_JSON)):  # an import-hf bundle
    meta = read_model_json(path)
    return Source(os.path.join(path, "params"), (), meta["model"],
                  load_tokenizer(os.path.join(path, "tokenizer")), f"bundle {path}")
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    step_dir, workdir = path, os.path.dirname(os.path.dirname(path))
    problem = integrity_problem(step_dir)
    if problem is not None:
      raise UserError(f"{key}={init}: the checkpoint is damaged ({problem}); use another "
                      "step, or the workdir to take its newest undamaged checkpoint")
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    step_dir, workdir = _latest_step_dir(os.path.join(path, "checkpoints"), key), path
  else:
    raise UserError(f"{key}={init} is neither a training workdir (with checkpoints/), "
                    f"a checkpoint step folder, nor a bundle (with {MODEL_JSON})")
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      run_config = ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"{workdir}/config.json is missing or malformed ({e})") from None
  tokenizer = _checkpoint_tokenizer(step_dir)
  if tokenizer is None:
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
  model_cfg = bert_config(run_config.model, padded_vocab_size(tokenizer.vocab_size))
  return Source(os.path.join(step_dir, "default"), ("params",), model_cfg, tokenizer,
                f"run {workdir} step {os.path.basename(step_dir)}")


def source_for_run(config: ConfigDict) -> Source | None:
  """The run's `config.init` opened, or None without one.

  The source brings its tokenizer, so a `config.tokenizer.path` beside it is refused.
  """
  if not config.get("init"):
    return None
  if config.tokenizer.get("path"):
    raise UserError("set either config.init (its tokenizer is used) or config.tokenizer.path")
  return open_source(config.init)


def run_model_config(architecture: BertConfig, model: ConfigDict) -> BertConfig:
  """`architecture` with the run's dropout, dtype and remat, which a run may retune."""
  return architecture.replace(hidden_dropout=model.hidden_dropout,
                              attention_dropout=model.attention_dropout,
                              dtype=model.dtype, remat=model.remat)


def _checkpoint_tokenizer(step_dir: str, load=None):
  """The tokenizer saved inside a checkpoint, read by `load(folder)` (by default
  jaxbert.tokenizer.load_tokenizer), or None for checkpoints written before tokenizers
  travelled with them.

  Unpacked into a temporary folder, read, and the folder removed; not next to the
  checkpoint: reading a checkpoint never writes into it (it may be read-only, and its
  files are sealed).
  """
  from jaxbert.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  load = load or load_tokenizer
  item = os.path.join(step_dir, "tokenizer")
  if not os.path.isdir(item):
    return None
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    files = ckptr.restore(item)
  with tempfile.TemporaryDirectory(prefix="jaxbert-tokenizer-") as unpacked:
    write_tokenizer_files(files, unpacked)
    return load(unpacked)


def reinit_selector(reinit: str, key: str = "config.reinit") -> params_lib.Selector:
  """`reinit` parsed: a selector (jaxbert/params.py) of the encoder parts to initialise
  afresh instead of loading, such as "pooler" and "top:K".

  Re-initialising the pooler and the top layers (Zhang et al., 2021, "Revisiting
  Few-sample BERT Fine-tuning") discards what is most specific to the pre-training
  tasks, e.g. a pooler tuned to next-sentence prediction.
  """
  return params_lib.parse(reinit, key, params_lib.REINIT)


def reinit_prefixes(reinit: str, num_layers: int, key: str = "config.reinit") -> tuple[str, ...]:
  """The regular expressions `reinit` stands for in an encoder of `num_layers` layers
  (its shorthands expanded and range-checked); a bad selector is a UserError.

  (Named for the path prefixes it gave before selectors were regular expressions.)
  """
  lay = params_lib.bert_layout(num_layers)
  return tuple(p for _, p in reinit_selector(reinit, key).patterns(lay))


@dataclasses.dataclass
class HandoverReport:
  source: str
  loaded: dict[str, tuple]
  new: dict[str, tuple]
  dropped: dict[str, tuple]
  reinitialised: dict[str, tuple] = dataclasses.field(default_factory=dict)
  # (parameters the optimizer updates, all parameters): optim.freeze and LoRA's frozen base.
  trainable: tuple[int, int] | None = None

  def to_dict(self):
    count = lambda d: int(sum(np.prod(s, dtype=np.int64) for s in d.values()))
    out = {"source": self.source,
           **{k: {"tensors": len(v), "parameters": count(v), "paths": sorted(v)}
              for k, v in (("loaded", self.loaded), ("new", self.new), ("dropped", self.dropped),
                           ("reinitialised", self.reinitialised))}}
    if self.trainable is not None:
      n, total = self.trainable
      out["trainable"] = {"parameters": n, "of": total, "fraction": n / max(total, 1)}
    return out

  def describe(self) -> str:
    d = self.to_dict()
    lines = [f"hand-over from {self.source}:"]
    # "reinitialised" (config.reinit) is the part of "new" that the source had.
    for k in ("loaded", "new", "dropped") + (("reinitialised",) if self.reinitialised else ()):
      depth = 3 if k == "reinitialised" else 2  # bert/encoder/layer_3, not bert/encoder
      heads = sorted({p.split("/")[0] if not p.startswith("bert/") else "/".join(p.split("/")[:depth])
                      for p in d[k]["paths"]})
      lines.append(f"  {k:13s} {d[k]['tensors']:4d} tensors {d[k]['parameters']:>12,d} parameters"
                   + (f"  ({', '.join(heads)})" if heads and k != "loaded" else ""))
    if self.trainable is not None:
      n, total = self.trainable
      lines.append(f"  trainable     {n:>12,d} of {total:,d} parameters "
                   f"({100 * n / max(total, 1):.2f} %)")
    return "\n".join(lines)


def _flat(tree) -> dict[str, object]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def load_encoder(source: Source, params, shardings, reinit: str = "", heads: bool = False):
  """params with every `bert/...` leaf the source has replaced by the pre-trained value.

  With `heads`, every other leaf the source has as well (the MLM and NSP heads, for
  continued pre-training). Leaves `reinit` selects (`reinit_selector`) keep their fresh
  initialisation; a part of it that selects nothing is a UserError.
  """
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(source.item_dir)
    except (FileNotFoundError, ValueError) as e:
      raise UserError(f"cannot read the checkpoint at {source.item_dir} ({e})") from None
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    for key in source.prefix:
      tree = tree[key]
    saved = {k: tuple(v.shape) for k, v in _flat(tree).items()}
    target = _flat(params)
    target_sh = _flat(shardings)
    selector = reinit_selector(reinit)
    skip = set() if selector.empty else selector.select(list(target))
    fresh = {k: saved[k] for k in target if k in saved and k in skip}
    loaded = {k: saved[k] for k in target
              if (heads or k.startswith("bert/")) and k in saved and k not in fresh}
    for k, shape in loaded.items():
      if tuple(target[k].shape) != shape:
        raise UserError(f"{source.description}: pre-trained tensor {k} has shape {shape} but "
                        f"the model expects {tuple(target[k].shape)} from the checkpoint's own "
                        "model config and tokenizer, which do not describe its weights (edited "
                        "or replaced?); point config.init at an intact checkpoint")
    if not loaded:
      raise UserError(f"{source.description} holds no encoder (bert/...) parameters")
    item = {}
    for k in loaded:
      node = item
      parts = k.split("/")
      for p in parts[:-1]:
        node = node.setdefault(p, {})
      node[parts[-1]] = jax.ShapeDtypeStruct(target[k].shape, target[k].dtype, sharding=target_sh[k])
    for key in reversed(source.prefix):
      item = {key: item}
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), item)
    restored = ckptr.restore(source.item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  for key in source.prefix:
    restored = restored[key]
  restored = _flat(restored)
  merged = {k: restored.get(k, v) for k, v in target.items()}
  report = HandoverReport(
      source=source.description, loaded=loaded,
      new={k: tuple(v.shape) for k, v in target.items() if k not in loaded},
      dropped={k: s for k, s in saved.items() if k not in loaded and k not in fresh},
      reinitialised=fresh)
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in merged.items()}), report


def hand_over(source: Source, params, shardings, workdir: str, *, reinit: str = "",
              heads: bool = False, trainable: tuple[int, int] | None = None):
  """`load_encoder`, its report printed and written to WORKDIR/handover.json; the params.
  `trainable` (trainable, total parameter counts) goes into the report."""
  params, report = load_encoder(source, params, shardings, reinit=reinit, heads=heads)
  report.trainable = trainable
  if jax.process_index() == 0:
    print(report.describe())
    write_json_atomic(os.path.join(workdir, "handover.json"), report.to_dict())
  return params


# --- reading a checkpoint's parameters whole (export-hf, embed, tools) -----------

@dataclasses.dataclass
class Checkpoint:
  """Parameters and what describes them, from a bundle or a training run."""

  params: dict
  config: BertConfig
  tokenizer: object
  head: str
  extra: dict
  description: str


def _restore_params(item_dir: str, prefix: tuple[str, ...]) -> dict:
  """Only the parameter subtree of a training state (no optimizer state), as numpy; LoRA
  adapters merged (jaxbert/lora.py)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"cannot read the checkpoint at {item_dir} ({e})") from None
  tree = tree.tree if hasattr(tree, "tree") else tree
  item = tree
  for key in prefix:
    item = item[key]
  for key in reversed(prefix):
    item = {key: item}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  for key in prefix:
    out = out[key]
  # A training run's checkpoint (WORKDIR/checkpoints/<step>/default): a LoRA run's adapters
  # merged into their kernels, which is what the run computes with.
  step_dir = os.path.dirname(os.path.abspath(item_dir))
  if os.path.basename(os.path.dirname(step_dir)) == "checkpoints":
    try:
      with open(os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json")) as f:
        out = lora_lib.merge_for_run(out, json.load(f))
    except (OSError, ValueError):
      pass  # no readable config.json: its callers say so; no LoRA settings to apply
  return out


def read_checkpoint(path: str, key: str = "checkpoint") -> Checkpoint:
  """A bundle (import-hf), a training workdir (its latest step) or one step folder.

  `key` names `path` in error messages (the option or argument the user gave).
  """
  from jaxbert import heads as heads_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.hf.names import bundle_head  # pylint: disable=g-import-not-at-top
  given, path = path, os.path.abspath(path)
  if os.path.isfile(os.path.join(path, MODEL_JSON)):
    params, cfg, tokenizer, meta = load_bundle(path)
    return Checkpoint(params, cfg, tokenizer, meta.get("head", "encoder"), meta.get("extra", {}),
                      f"bundle {path}")
  source = open_source(given, key)
  workdir = os.path.dirname(os.path.dirname(os.path.dirname(source.item_dir)))
  with open(os.path.join(workdir, "config.json")) as f:
    run_config = json.load(f)
  cfg = source.model_cfg
  if run_config.get("init"):
    # A fine-tuning run keeps the architecture of the checkpoint it started from.
    model = run_config.get("model", {})
    cfg = open_source(run_config["init"]).model_cfg.replace(
        hidden_dropout=model.get("hidden_dropout", cfg.hidden_dropout),
        attention_dropout=model.get("attention_dropout", cfg.attention_dropout))
  cfg = cfg.replace(dtype="float32", remat=False)
  params = _restore_params(source.item_dir, source.prefix)
  head_params = [h for h in ("mlm", "nsp", "classifier", "qa_outputs") if h in params]
  entry = (tasks_lib.TFDS_TASKS.get(run_config.get("data", {}).get("task", ""))
           if run_config.get("task") == "finetune" else None)
  # A "classifier" head is ambiguous (sentences or tokens): the task's head kind says.
  architecture = heads_lib.get(entry.kind).hf_architecture if entry is not None else ""
  architectures = [architecture] if architecture else []
  # A sentence classifier may read the mean of the outputs instead of the pooled [CLS].
  extra = ({"pooling": run_config.get("head", {}).get("pooling", "cls")}
           if run_config.get("task") == "finetune" else {})
  return Checkpoint(params, cfg, source.tokenizer, bundle_head(head_params, architectures), extra,
                    source.description)
