"""The fine-tuning task: a tfds (or local) task, an encoder handed over, a new head.

Shares the trainer, loop, sharding and checkpointing with pre-training; only the
data, the head and the loss differ.
"""

from __future__ import annotations

import copy
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbert import flops as flops_lib
from jaxbert import handover
from jaxbert import decoder as decoder_lib
from jaxbert import heads
from jaxbert.heads import last_token
from jaxbert import lora as lora_lib
from jaxbert import model as model_lib
from jaxbert import optim as optim_lib
from jaxbert import sharding as shd
from jaxbert.checkpoint import write_json_atomic
from jaxbert.config import ConfigDict
from jaxbert.data import buckets as buckets_lib
from jaxbert.data import scoring
from jaxbert.data import tasks as tasks_lib
from jaxbert.errors import UserError

log = logging.getLogger("jaxbert")


POOLINGS = ("cls", "mean")


def build_model(cfg: model_lib.BertConfig, spec, pooling: str = "cls"):
  """The fine-tuning model of a task: the encoder and the head of its kind."""
  return heads.get(spec.kind).model(cfg, spec, pooling)


def _rows(data: tasks_lib.TaskData, idx: np.ndarray) -> dict[str, np.ndarray]:
  """The batch of features `idx` (inputs and targets; the model ignores what it doesn't use)."""
  return {k: v[idx] for k, v in data.arrays.items()}


def _refuse_unlabeled(config: ConfigDict, key: str, data: tasks_lib.TaskData) -> None:
  """A UserError naming `config.data.<key>` when its split has examples without a label."""
  head = heads.get(data.spec.kind)
  labels = data.arrays.get(head.label_keys[0]) if head.label_keys else None
  if labels is None or not labels.size or not getattr(head, "unlabeled", None) \
      or not head.unlabeled(labels):
    return
  d = config.data
  missing = int(np.sum(np.isnan(labels) if labels.dtype.kind == "f" else labels < 0))
  local = "" if d.task in tasks_lib.TFDS_TASKS else (
      f" (no {d.options.get('label_column', 'label')!r} column: set "
      "config.data.options.label_column if it has another name)")
  use = ("train on a labeled split" if key == "train_split" else
         "evaluate on a labeled split (a local task's dev file is split 'validation'), then "
         f"label this one with `jaxbert predict --checkpoint WORKDIR --split {d[key]}`")
  raise UserError(f"config.data.{key}={d[key]!r}: {missing} of {labels.size} examples of "
                  f"{d.task} have no label{local}; {use}")


class FinetuneTask:
  """Supervised training on one task; see jaxbert/train.py for the Task protocol."""

  def __init__(self, config: ConfigDict, workdir: str, mesh):
    self.config = config
    self.workdir = workdir
    self.mesh = mesh
    self.batch_sharding = shd.batch_sharding(mesh)
    d = config.data
    if config.head.pooling not in POOLINGS:
      raise UserError(f"config.head.pooling={config.head.pooling!r} is not one of {list(POOLINGS)}")
    # A decoder (GPT-2/Llama-style) from config.init classifies by its last real token.
    self.decoder = last_token.run_setup(config)
    self.source = handover.source_for_run(config) if self.decoder is None else None
    if config.reinit and self.source is None and self.decoder is None:
      raise UserError(f"config.reinit={config.reinit!r} re-initialises parts of a pre-trained "
                      "encoder, but config.init is empty; set config.init or drop config.reinit")
    if self.decoder is not None:
      self.tokenizer, base_cfg, _ = self.decoder
    elif self.source is not None:
      handover.reinit_prefixes(config.reinit, self.source.model_cfg.num_layers)  # fail early
      self.tokenizer = self.source.tokenizer
      base_cfg = self.source.model_cfg
    else:
      from jaxbert.defaults import bert_config  # pylint: disable=g-import-not-at-top
      from jaxbert.tokenizer import load_tokenizer, padded_vocab_size  # pylint: disable=g-import-not-at-top
      if not config.tokenizer.path:
        raise UserError("fine-tuning from random initialisation needs --config.tokenizer.path "
                        "(or start from a checkpoint with --config.init=...)")
      self.tokenizer = load_tokenizer(config.tokenizer.path)
      base_cfg = bert_config(config.model, padded_vocab_size(self.tokenizer.vocab_size))
    # Dropout may be retuned for fine-tuning; the architecture comes from the checkpoint.
    self.model_cfg = (base_cfg if self.decoder is not None else
                      handover.run_model_config(base_cfg, config.model))
    if d.max_seq_len > self.model_cfg.max_position_embeddings:
      raise UserError(f"config.data.max_seq_len={d.max_seq_len} exceeds the model's "
                      f"max_position_embeddings={self.model_cfg.max_position_embeddings}")
    # A tfds task's data_dir (checked), or WORKDIR/tfds where local files are prepared.
    data_dir = tasks_lib.task_data_dir(d.task, d.data_dir, workdir)
    load = lambda split, options: tasks_lib.load_task(
        d.task, split=split, tokenizer=self.tokenizer, max_seq_len=d.max_seq_len,
        data_dir=data_dir, **{**d.options.to_dict(), **options.to_dict()})
    self.train_data = load(d.train_split, d.train_options)
    self.eval_data = load(d.eval_split, d.eval_options)
    for key, data in (("train_split", self.train_data), ("eval_split", self.eval_data)):
      _refuse_unlabeled(config, key, data)  # before training, not when evaluating after it
    self.spec = self.train_data.spec
    self.head = heads.get(self.spec.kind)
    # With config.lora, the model carries adapters (jaxbert/lora.py); else it is as built.
    model = (last_token.sentence_model(self.model_cfg, self.spec) if self.decoder is not None
             else build_model(self.model_cfg, self.spec, config.head.pooling))
    self.model = lora_lib.wrap(model, config)
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    n = self.train_data.num_features
    if n < self.global_batch:
      raise UserError(f"{d.task} split {d.train_split!r} has {n} examples, fewer than "
                      f"train.batch_size={self.global_batch}")
    self.num_train_examples = n
    self._setup_buckets(int(d.get("length_buckets", 1)))
    self.main_metric = self.spec.main_metric
    self.higher_is_better = self.spec.higher_is_better
    log.info("task %s (%s): %d train / %d eval examples; batch %d",
             d.task, self.spec.kind, n, self.eval_data.num_features, self.global_batch)
    for split, data in ((d.train_split, self.train_data), (d.eval_split, self.eval_data)):
      if data.counts.get("truncated"):
        log.warning("%s split %r: %d of %d examples are longer than data.max_seq_len=%d pieces "
                    "and were truncated", d.task, split, data.counts["truncated"],
                    data.counts["examples"], d.max_seq_len)

  def for_run(self, config: ConfigDict, workdir: str) -> FinetuneTask:
    """This task's data and model for another run (`config`, `workdir`).

    The runs may differ only in what the task reads per run: the seed (data order)
    and the workdir its evaluation writes to. Trials trained side by side share one
    loaded task this way.
    """
    other = copy.copy(self)
    other.config, other.workdir = config, workdir
    return other

  # --- data --------------------------------------------------------------------
  def _setup_buckets(self, count: int) -> None:
    """data.length_buckets: the lengths batches are cut to (jaxbert/data/buckets.py)."""
    t = self.config.data.max_seq_len
    lengths = buckets_lib.row_lengths(self.train_data.arrays)
    self.bucket_lengths = (buckets_lib.choose_lengths(lengths, t, count) if count > 1 else (t,))
    self.schedule = buckets_lib.Schedule(lengths, self.bucket_lengths, self.global_batch)
    if count > 1:
      log.info("length buckets (data.length_buckets=%d): %s pieces", count,
               list(self.bucket_lengths))

  def _local(self, rows: np.ndarray) -> np.ndarray:
    return rows[jax.process_index() * self.local_batch:][:self.local_batch]

  def _train_rows(self, step: int) -> dict[str, np.ndarray]:
    """This process's share of the batch of `step`, cut to the step's length."""
    rows = self._local(self.schedule.step_rows(self.config.train.seed, step))
    return buckets_lib.cut(_rows(self.train_data, rows), self.schedule.step_length(step),
                           self.config.data.max_seq_len)

  def example_batch(self):
    return _rows(self.train_data, np.arange(self.local_batch))

  def batches(self, start_step: int, stop_step: int):
    for step in range(start_step, stop_step):
      yield self._train_rows(step)

  # --- model ---------------------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    outputs = self.model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return self.head.loss(outputs, batch)

  def init_params(self, params, param_shardings):
    trainable = optim_lib.trainable_count(params, self.config.optim.freeze)
    if self.decoder is not None:
      return last_token.hand_over(self.config.init, self.decoder[2], params, param_shardings,
                                  self.workdir, reinit=self.config.reinit, trainable=trainable)
    if self.source is None:
      return params
    return handover.hand_over(self.source, params, param_shardings, self.workdir,
                              reinit=self.config.reinit, trainable=trainable)

  def flops_per_batch(self) -> float:
    """Per step, averaged over an epoch's steps (their lengths differ when bucketed)."""
    steps = max(1, self.num_train_examples // self.global_batch)
    seq = lambda t: (flops_lib.finetune_flops_per_sequence(self.model_cfg, t,
                                                           self.head.num_outputs(self.spec))
                     if self.decoder is None else decoder_lib.flops_per_token(self.model_cfg, t) * t)
    per_length = {t: seq(t) for t in self.bucket_lengths}
    return self.global_batch * float(np.mean([per_length[self.schedule.step_length(s)]
                                              for s in range(steps)]))

  # --- evaluation ----------------------------------------------------------------
  def predict_all(self, params, predict, data) -> dict[str, np.ndarray]:
    """Outputs for every example of `data`, in order. Rows are batched by length bucket
    (the training buckets; longer rows at data.max_seq_len), each batch cut to its
    bucket; the last batch of a bucket is padded with repeats, sliced away below.
    Per-piece outputs are padded back to data.max_seq_len."""
    n, t = data.num_features, self.config.data.max_seq_len
    lengths = self.bucket_lengths + (t,)
    ids = buckets_lib.bucket_ids(buckets_lib.row_lengths(data.arrays), self.bucket_lengths)
    outputs: dict[str, np.ndarray] = {}
    for b, idx in buckets_lib.eval_batches(ids, self.global_batch):
      rows = buckets_lib.cut(_rows(data, self._local(idx)), lengths[b], t)
      out = predict(params, shd.global_batch(rows, self.batch_sharding))
      out = jax.tree.map(np.asarray, multihost_utils.process_allgather(out, tiled=True))
      for k, v in out.items():
        if k not in outputs:
          outputs[k] = np.zeros((n,) + self._output_shape(params, k, v, lengths[b], t), v.dtype)
        if v.ndim >= 2 and self._per_piece(params, k, lengths[b]):
          v = np.pad(v, [(0, 0), (0, t - lengths[b])] + [(0, 0)] * (v.ndim - 2))
        outputs[k][idx] = v  # repeated rows write the same values twice
    return self.head.host_outputs(outputs)

  def _per_piece(self, params, key: str, length: int) -> bool:
    """Whether output `key` has one entry per piece (its axis 1 follows the length)."""
    if not hasattr(self, "_per_piece_keys"):
      shape = lambda t: jax.eval_shape(
          lambda p, b: self.model.apply({"params": p}, b, deterministic=True), params,
          {k: jax.ShapeDtypeStruct(v.shape[:1] + (t,) + v.shape[2:] if v.ndim >= 2 else v.shape,
                                   v.dtype) for k, v in self.example_batch().items()})
      a, b = shape(8), shape(16)
      self._per_piece_keys = {k for k in a if a[k].shape != b[k].shape}
    return key in self._per_piece_keys

  def _output_shape(self, params, key, v, length, t) -> tuple[int, ...]:
    shape = v.shape[1:]
    return ((t,) + shape[1:]) if v.ndim >= 2 and self._per_piece(params, key, length) else shape

  def evaluate(self, params, predict) -> dict[str, float]:
    outputs = self.predict_all(params, predict, self.eval_data)
    metrics = scoring.evaluate(self.eval_data, outputs)
    if jax.process_index() == 0:
      scoring.write_predictions(self.eval_data, outputs,
                                os.path.join(self.workdir, "predictions.jsonl"))
      write_json_atomic(os.path.join(self.workdir, "results.json"),
                        {"task": self.config.data.task, "split": self.config.data.eval_split,
                         "metrics": metrics, "counts": self.eval_data.counts,
                         "main_metric": self.spec.main_metric,
                         "higher_is_better": self.spec.higher_is_better})
    return metrics
