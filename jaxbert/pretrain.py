"""The pre-training task: corpus -> tokenizer -> NSP pairs with MLM masks -> MLM + NSP loss.

Everything the corpus costs to prepare (the trained tokenizer, the tokenized
document store) is cached in the workdir, so a resumed run starts in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Iterator

import grain
from absl import flags
import jax
import numpy as np

from jaxbert import flops as flops_lib
from jaxbert import handover
from jaxbert import sharding as shd
from jaxbert.checkpoint import directory_digest
from jaxbert.config import ConfigDict
from jaxbert.data import corpus as corpus_lib
from jaxbert.data import sentences as sentences_lib
from jaxbert.data.docstore import DocumentStore
from jaxbert.data.packing import PackedExamples, packing_stats
from jaxbert.data.workers import exit_with_parent
from jaxbert.data.pretraining import (PretrainDataConfig, PretrainingExamples, batch_examples,
                                      split_heldout)
from jaxbert.defaults import bert_config
from jaxbert.errors import UserError
from jaxbert.heads.mlm_nsp import mlm_nsp_loss
from jaxbert.model import BertForPreTraining
from jaxbert import tokenizer as tok_lib

log = logging.getLogger("jaxbert")


def prepare_tokenizer(config: ConfigDict, workdir: str) -> tok_lib.Tokenizer:
  """The run's tokenizer: `tokenizer.path`, else the one cached in the workdir, else trained."""
  tcfg = config.tokenizer
  if tcfg.path:
    return tok_lib.load_tokenizer(tcfg.path)
  cached = os.path.join(workdir, "tokenizer")
  if os.path.isdir(cached) and os.listdir(cached):  # empty: a kill between mkdir and write
    return tok_lib.load_tokenizer(cached)
  if not config.data.corpus.startswith(corpus_lib.TFDS_PREFIX):
    corpus_lib.check_text_files(config.data.corpus)  # a wrong path is said before any work
  log.info("training a %s sentencepiece tokenizer (vocabulary %d) on %s",
           tcfg.model_type, tcfg.vocab_size, config.data.corpus)
  sentences = sentences_lib.sentences_for_tokenizer_training(
      documents(config, workdir), max_sentences=tcfg.train_sentences, seed=config.train.seed)
  return tok_lib.train_sentencepiece(sentences, cached, vocab_size=tcfg.vocab_size,
                                     model_type=tcfg.model_type, lowercase=tcfg.lowercase,
                                     seed=config.train.seed, source=config.data.corpus)


def documents(config: ConfigDict, workdir: str):
  """The corpus's documents (lists of lines), read as config.data says."""
  d = config.data
  if not d.corpus:
    raise UserError("config.data.corpus is empty; set --config.data.corpus=PATH (a file, folder "
                    "or glob of text) or tfds:NAME")
  return corpus_lib.iter_documents(d.corpus, data_dir=_data_dir(config, workdir), split=d.split,
                                   text_field=d.text_field)


def _data_dir(config: ConfigDict, workdir: str) -> str:
  return config.data.tfds_data_dir or os.path.join(workdir, "tfds")


def prepare_stores(config: ConfigDict, workdir: str, tokenizer, *, build=None,
                   fingerprint: str = "") -> tuple[DocumentStore, DocumentStore]:
  """(train, held-out) tokenized stores, cached under WORKDIR/corpus/<key>.

  `build(documents, tokenizer, progress=...)` tokenizes (default: sentence by sentence,
  corpus.build_docstore); `fingerprint` names the tokenizer and the build in the key
  (default: tokenizer.fingerprint())."""
  d = config.data
  # A local corpus is identified by its files' bytes, so edits re-tokenize and copies do not.
  identity = (d.corpus if d.corpus.startswith(corpus_lib.TFDS_PREFIX) else
              corpus_lib.prepare_text_corpus(d.corpus, _data_dir(config, workdir)).builder_config.name)
  key = hashlib.sha256(json.dumps([identity, d.split, d.text_field, d.heldout_fraction,
                                   config.train.seed, fingerprint or tokenizer.fingerprint()]
                                  ).encode()).hexdigest()[:16]
  root = os.path.join(workdir, "corpus", key)
  done = os.path.join(root, "DONE")
  if not os.path.exists(done):
    store = (build or corpus_lib.build_docstore)(documents(config, workdir), tokenizer,
                                                 progress=config.train.progress)
    train, held = split_heldout(store, d.heldout_fraction, config.train.seed)
    train.save(os.path.join(root, "train"))
    held.save(os.path.join(root, "eval"))
    open(done, "w").close()
  return (DocumentStore.load(os.path.join(root, "train")),
          DocumentStore.load(os.path.join(root, "eval")))


class StepBatches:
  """grain source: item i is this process's share of the global batch of step start + i.

  Global example g of step s is stream position s * global_batch + g; process p
  takes positions [p * local, (p + 1) * local) of every step's batch.
  """

  def __init__(self, examples: PretrainingExamples, global_batch: int, start: int, length: int):
    self.examples = examples
    self.local = global_batch // jax.process_count()
    self.global_batch = global_batch
    self.offset = jax.process_index() * self.local
    self.start, self.length = start, length

  def __len__(self):
    return self.length

  def __getitem__(self, i):
    base = (self.start + i) * self.global_batch + self.offset
    ex = self.examples
    return batch_examples([ex.example(*ex.locate(base + j)) for j in range(self.local)])


def batch_iterator(source, num_workers: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches in order, built by `num_workers` processes (0: in this process)."""
  if num_workers > 0:
    source = _Unexhausted(source)
  ds = grain.MapDataset.source(source).to_iter_dataset()
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we have none of our own
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=exit_with_parent)
    return _copied(iter(ds))
  return iter(ds)


class _Unexhausted:
  """`source` followed by copies of its last item that are never asked for: grain's
  workers that reach the end of their items leave shared memory blocks that the resource
  tracker reports as leaked when the process exits; these workers are closed before."""

  _MARGIN = 1024  # more than the workers ever read ahead

  def __init__(self, source):
    self.source, self.n = source, len(source)

  def __len__(self):
    return self.n + self._MARGIN

  def __getitem__(self, i):
    return self.source[min(i, self.n - 1)]


def _copied(it) -> Iterator[dict[str, np.ndarray]]:
  """The workers' batches copied out of their shared memory blocks, which are freed at
  once; a block still held when the process exits would be reported as leaked by the
  resource tracker. Closing this closes the workers' iterator (the trainer does)."""
  try:
    for batch in it:
      copy = {k: np.array(v) for k, v in batch.items()}
      del batch
      yield copy
  finally:
    it.close()


def packed(examples: PretrainingExamples, max_segments) -> PackedExamples:
  """Rows of up to `max_segments` examples (config.data.packing), efficiency logged."""
  if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 0:
    raise UserError(f"config.data.packing={max_segments!r}: give the most examples per row "
                    "as an integer (e.g. 4), or 0 for one example per row")
  rows = PackedExamples(examples, max_segments=max_segments)
  stats = packing_stats(rows, epoch=0)
  log.info("packing: up to %d examples per row (%.2f on average): %.1f %% of the pieces "
           "are real text, against %.1f %% one example per row", max_segments,
           stats["examples"] / stats["rows"], 100 * stats["packed_efficiency"],
           100 * stats["unpacked_efficiency"])
  return rows


def _continued_model_config(wanted, source: handover.Source, model: ConfigDict):
  """The checkpoint's model with the run's options; refuses another architecture.

  `wanted` is what config.model describes; only what `handover.run_model_config` takes
  from the run (dropout, dtype, remat) may differ, and the initialisation scale, which
  loaded weights make moot.
  """
  target = handover.run_model_config(source.model_cfg, model)
  have = dataclasses.asdict(target)
  differ = {k: (v, have[k]) for k, v in dataclasses.asdict(wanted).items()
            if k != "initializer_range" and v != have[k]}
  if differ:
    listed = ", ".join(f"{k}={a!r} (the checkpoint has {b!r})" for k, (a, b) in sorted(differ.items()))
    raise UserError(f"config.model does not describe the model in config.init={source.description}: "
                    f"{listed}; use the config the checkpoint was trained with, or set those "
                    "config.model keys to the checkpoint's values")
  return target


def continued_data_seed(seed: int, source: handover.Source) -> int:
  """The seed of a continued run's training examples.

  Pairs and masks are a pure function of (seed, epoch, index), so with the source's own
  seed a continued run would draw again the examples the source was trained on, in the
  same order. Mixing in the checkpoint's bytes gives a new stream, the same on every
  restart. Held-out examples keep `seed`, so their metrics compare with the source's.
  """
  digest = hashlib.sha256(f"{seed}:{directory_digest(source.item_dir)}".encode()).digest()
  return int.from_bytes(digest[:4], "little") >> 1


@dataclasses.dataclass
class PretrainInputs:
  """What pre-training reads before its task is built: the checkpoint it continues (if
  any), the tokenizer (the checkpoint's, or trained on the corpus) and the tokenized
  corpus, split into training and held-out documents."""

  source: handover.Source | None
  tokenizer: tok_lib.Tokenizer
  train_store: DocumentStore
  eval_store: DocumentStore


def prepare_inputs(config: ConfigDict, workdir: str) -> PretrainInputs:
  source = handover.source_for_run(config)
  tokenizer = source.tokenizer if source is not None else prepare_tokenizer(config, workdir)
  train_store, eval_store = prepare_stores(config, workdir, tokenizer)
  return PretrainInputs(source, tokenizer, train_store, eval_store)


def build_task(config: ConfigDict, workdir: str, mesh) -> PretrainTask:
  """Prepares the inputs (tokenizer, tokenized corpus), then builds the task on them."""
  return PretrainTask(config, workdir, mesh, prepare_inputs(config, workdir))


class PretrainTask:
  """MLM + NSP on a corpus; see jaxbert/train.py for the Task protocol."""

  def __init__(self, config: ConfigDict, workdir: str, mesh, inputs: PretrainInputs):
    self.config = config
    self.workdir = workdir
    self.batch_sharding = shd.batch_sharding(mesh)
    self.source = inputs.source
    self.tokenizer = inputs.tokenizer
    vocab = tok_lib.padded_vocab_size(self.tokenizer.vocab_size)
    self.model_cfg = bert_config(config.model, vocab)
    if self.source is not None:
      self.model_cfg = _continued_model_config(self.model_cfg, self.source, config.model)
    tok_lib.check_vocab(self.tokenizer, self.model_cfg.vocab_size, "config.model")
    d = config.data
    if d.max_seq_len > self.model_cfg.max_position_embeddings:
      raise UserError(f"config.data.max_seq_len={d.max_seq_len} exceeds "
                      f"config.model.max_position_embeddings={self.model_cfg.max_position_embeddings}")
    self.model = BertForPreTraining(self.model_cfg)
    train_store, eval_store = inputs.train_store, inputs.eval_store
    data_cfg = PretrainDataConfig(
        max_seq_len=d.max_seq_len, max_predictions_per_seq=d.max_predictions_per_seq,
        mask_prob=d.mask_prob, short_seq_prob=d.short_seq_prob, whole_word=d.whole_word,
        seed=config.train.seed)
    train_cfg = data_cfg
    if self.source is not None:
      train_cfg = dataclasses.replace(data_cfg, seed=continued_data_seed(data_cfg.seed, self.source))
      log.info("continued pre-training: training examples drawn with data seed %d (from "
               "train.seed and the checkpoint), held-out ones with train.seed", train_cfg.seed)
    self.train_examples = PretrainingExamples.from_tokenizer(train_store, train_cfg, self.tokenizer)
    if d.packing:
      self.train_examples = packed(self.train_examples, d.packing)
    # Held-out examples stay one per row, so their metrics compare across packing settings.
    self.eval_examples = PretrainingExamples.from_tokenizer(eval_store, data_cfg, self.tokenizer)
    self.num_train_examples = None  # pre-training counts steps, not epochs
    self.main_metric, self.higher_is_better = None, True
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    # The most frequent training piece: the baseline the held-out MLM accuracy must beat.
    counts = np.bincount(np.asarray(train_store.tokens), minlength=self.tokenizer.vocab_size)
    special = [self.tokenizer.pad_id, self.tokenizer.unk_id, self.tokenizer.cls_id,
               self.tokenizer.sep_id, self.tokenizer.mask_id]
    counts[special] = 0
    self.majority_id = int(counts.argmax())
    self._eval_batches = None
    log.info("corpus: %d train documents (%d tokens), %d held out; model %s, vocabulary %d",
             train_store.num_docs, train_store.num_tokens, eval_store.num_docs,
             config.model.preset, vocab)
    # [CLS] A [SEP] B [SEP]: a sentence longer than this is cut in every example holding it.
    lengths = np.diff(np.asarray(train_store.sent_start))
    long = int((lengths > d.max_seq_len - 3).sum())
    if long:
      log.warning("corpus: %d of %d sentences are longer than data.max_seq_len=%d allows "
                  "(%d pieces with [CLS] and 2 [SEP]) and are truncated in training examples",
                  long, len(lengths), d.max_seq_len, d.max_seq_len - 3)

  def example_batch(self):
    return batch_examples([self.train_examples.example(0, 0)] * self.local_batch)

  def loss_fn(self, params, batch, rng):
    outputs = self.model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return mlm_nsp_loss(outputs, batch)

  def batches(self, start_step: int, stop_step: int):
    source = StepBatches(self.train_examples, self.global_batch, start_step,
                         stop_step - start_step)
    return batch_iterator(source, self.config.data.num_workers)

  def init_params(self, params, param_shardings):
    if self.source is None:
      return params
    return handover.hand_over(self.source, params, param_shardings, self.workdir, heads=True)

  def flops_per_batch(self) -> float:
    d = self.config.data
    predictions = getattr(self.train_examples, "max_predictions", d.max_predictions_per_seq)
    return self.global_batch * flops_lib.pretraining_flops_per_sequence(
        self.model_cfg, d.max_seq_len, predictions)

  def _eval_local_batches(self):
    if self._eval_batches is None:
      n = min(self.config.data.eval_examples, self.eval_examples.num_examples(0))
      steps = max(1, n // self.global_batch)
      source = StepBatches(self.eval_examples, self.global_batch, 0, steps)
      self._eval_batches = [source[i] for i in range(steps)]
    return self._eval_batches

  def evaluate(self, params, predict) -> dict[str, float]:
    sums = {"mlm_loss": 0.0, "mlm_accuracy": 0.0, "nsp_loss": 0.0, "nsp_accuracy": 0.0}
    weight, majority_hits = 0.0, 0.0
    batches = self._eval_local_batches()
    for local in batches:
      batch = shd.global_batch(local, self.batch_sharding)
      _, metrics = mlm_nsp_loss(predict(params, batch), batch)
      for k in sums:
        sums[k] += float(metrics[k])
      w = local["masked_weights"]
      weight += float(w.sum())
      majority_hits += float(((local["masked_ids"] == self.majority_id) * w).sum())
    out = {k: v / len(batches) for k, v in sums.items()}
    # Per-process share; every process holds the same kind of data, so it estimates the whole.
    out["mlm_majority_baseline"] = majority_hits / max(weight, 1.0)
    return out
