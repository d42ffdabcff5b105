"""The causal-LM pre-training task: corpus -> decoder tokenizer -> packed document rows ->
next-token cross-entropy on a decoder (jaxbert/decoder.py). See jaxbert/train.py for the
Task protocol; jaxbert/pretrain.py is the encoder's MLM + NSP counterpart, whose corpus
readers, store cache and batching this task shares.

Own pre-training trains a SentencePiece BPE on the corpus (jaxbert/decoder_tokenizer.py);
`config.init` continues from an imported or pre-trained decoder
(jaxbert.decoder_weights.load) with that model's tokenizer and architecture, the run's
dropout, dtype and remat applied. Held-out rows (whole held-out documents) give the
loss, perplexity, bits per byte of the text they spell, and the perplexity of an
add-one smoothed unigram fitted on the training documents, the baseline to beat.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from jaxbert import decoder as decoder_lib
from jaxbert import decoder_tokenizer as dtok
from jaxbert import defaults
from jaxbert import pretrain
from jaxbert import sharding as shd
from jaxbert.config import ConfigDict
from jaxbert.data import clm_data
from jaxbert.data import sentences as sentences_lib
from jaxbert.data.pretraining import batch_examples
from jaxbert.errors import UserError
from jaxbert.heads.causal_lm import CausalLM, causal_lm_loss
from jaxbert.tokenizer import padded_vocab_size

log = logging.getLogger("jaxbert")


def _load_init(path: str):
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  return decoder_weights.load(path)


def prepare_tokenizer(config: ConfigDict, workdir: str):
  """`tokenizer.path`, else the one cached in the workdir, else a BPE trained on the corpus."""
  tcfg = config.tokenizer
  if tcfg.path:
    return dtok.load(tcfg.path)
  cached = os.path.join(workdir, "tokenizer")
  if os.path.isdir(cached) and os.listdir(cached):
    return dtok.load(cached)
  log.info("training a BPE sentencepiece tokenizer (vocabulary %d) on %s", tcfg.vocab_size,
           config.data.corpus)
  sentences = sentences_lib.sentences_for_tokenizer_training(
      pretrain.documents(config, workdir), max_sentences=tcfg.train_sentences,
      seed=config.train.seed)
  return dtok.train(sentences, cached, tcfg.vocab_size, seed=config.train.seed,
                    source=config.data.corpus)


def run_decoder_config(config: ConfigDict, tokenizer, source_cfg=None) -> decoder_lib.DecoderConfig:
  """The decoder this run trains: config.model's (its vocabulary the tokenizer's, padded),
  or the checkpoint's with the run's dropout, dtype and remat."""
  if source_cfg is None:
    cfg = defaults.decoder_config(config.model, padded_vocab_size(tokenizer.vocab_size))
  else:
    m = config.model
    cfg = source_cfg.replace(dtype=m.dtype, remat=m.remat, **(
        {} if m.dropout_rate is None else {"dropout_rate": m.dropout_rate}))
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(f"config.init: the tokenizer has {tokenizer.vocab_size} pieces but the "
                    f"model's vocabulary is {cfg.vocab_size}; use the model's own tokenizer")
  t = config.data.max_seq_len
  if cfg.arch == "gpt2" and t > cfg.max_position_embeddings:
    raise UserError(f"data.max_seq_len={t} exceeds the model's {cfg.max_position_embeddings} "
                    "learned positions (model.max_position_embeddings); shorten the rows or "
                    "give the model more positions")
  return cfg


def build_task(config: ConfigDict, workdir: str, mesh) -> CausalLMTask:
  source = _load_init(config.init) if config.init else None  # (cfg, params, tokenizer)
  tokenizer = source[2] if source is not None else prepare_tokenizer(config, workdir)
  train_store, eval_store = pretrain.prepare_stores(
      config, workdir, tokenizer, build=clm_data.build_store,
      fingerprint="clm:" + dtok.fingerprint(tokenizer))
  return CausalLMTask(config, mesh, tokenizer, train_store, eval_store, source)


class CausalLMTask:
  """Next-token prediction on packed document rows; see jaxbert/train.py's Task."""

  def __init__(self, config: ConfigDict, mesh, tokenizer, train_store, eval_store, source=None):
    self.config = config
    self.tokenizer = tokenizer
    self.source = source
    self.batch_sharding = shd.batch_sharding(mesh)
    self.model_cfg = run_decoder_config(config, tokenizer, source[0] if source else None)
    self.model = CausalLM(self.model_cfg)
    d, seed = config.data, config.train.seed
    eod = dtok.document_separator(tokenizer)
    pad = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else eod
    self.train_rows = clm_data.LMRows(train_store, d.max_seq_len, eod, pad, seed)
    self.eval_rows = clm_data.LMRows(eval_store, d.max_seq_len, eod, pad, seed, shuffle=False)
    self.num_train_examples = None  # pre-training counts steps, not epochs
    self.main_metric, self.higher_is_better = None, True
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // jax.process_count()
    self.num_eval_rows = min(d.eval_examples, self.eval_rows.num_examples())
    items = [i for r in range(self.num_eval_rows) for i in self.eval_rows.row_items(0, r)]
    self.eval_bytes = clm_data.item_bytes(self.eval_rows, tokenizer, items)
    unigram = clm_data.unigram_log_probs(train_store, self.model_cfg.vocab_size, eod)
    targets = clm_data.targets_of(self.eval_rows, range(self.num_eval_rows))
    self.unigram_nll = float(-unigram[targets].mean())
    self._eval_batches = None
    log.info("corpus: %d train documents (%d pieces) in %d rows of %d (%.1f %% real pieces), "
             "%d held out (%d rows evaluated, %d pieces, %d bytes); decoder %s, vocabulary %d",
             train_store.num_docs, train_store.num_tokens, self.train_rows.num_examples(),
             d.max_seq_len, 100 * self.train_rows.efficiency(), eval_store.num_docs,
             self.num_eval_rows, len(targets), self.eval_bytes,
             # config.model names the architecture of a fresh model only
             f"{self.model_cfg.arch} from {config.init}" if source else
             config.model.preset or self.model_cfg.arch, self.model_cfg.vocab_size)

  def example_batch(self):
    return batch_examples([self.train_rows.example(0, 0)] * self.local_batch)

  def loss_fn(self, params, batch, rng):
    outputs = self.model.apply({"params": params}, batch, deterministic=False,
                               rngs={"dropout": rng})
    return causal_lm_loss(outputs, batch)

  def batches(self, start_step: int, stop_step: int):
    source = pretrain.StepBatches(self.train_rows, self.global_batch, start_step,
                                  stop_step - start_step)
    return pretrain.batch_iterator(source, self.config.data.num_workers)

  def init_params(self, params, param_shardings):
    if self.source is None:
      return params
    loaded = self.source[1]
    if jax.tree.structure(loaded) != jax.tree.structure(params):
      raise UserError(f"config.init={self.config.init}: its parameters do not fit the decoder "
                      f"{self.model_cfg.arch} model the run builds")
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
      if tuple(np.shape(a)) != tuple(b.shape):
        raise UserError(f"config.init={self.config.init}: a parameter of shape {np.shape(a)} "
                        f"where the model has {b.shape}")
    return jax.device_put(jax.tree.map(lambda a, b: np.asarray(a, b.dtype), loaded, params),
                          param_shardings)

  def flops_per_batch(self) -> float:
    t = self.config.data.max_seq_len
    return self.global_batch * t * decoder_lib.flops_per_token(self.model_cfg, t)

  def _eval_local_batches(self):
    """Held-out rows 0..n-1 in batches, the last one filled with empty rows."""
    if self._eval_batches is None:
      rows, local = self.eval_rows, self.local_batch
      offset = jax.process_index() * local
      steps = -(-self.num_eval_rows // self.global_batch)
      self._eval_batches = [
          batch_examples([rows.example(0, g) if g < self.num_eval_rows else rows.empty_row()
                          for g in range(s * self.global_batch + offset,
                                         s * self.global_batch + offset + local)])
          for s in range(steps)]
    return self._eval_batches

  def evaluate(self, params, predict) -> dict[str, float]:
    nll = hits = weight = 0.0
    for local in self._eval_local_batches():
      out = predict(params, shd.global_batch(local, self.batch_sharding))
      w = shd.global_batch({"w": local["loss_weights"]}, self.batch_sharding)["w"]
      nll += float((out["nll"] * w).sum())
      hits += float((out["hits"] * w).sum())
      weight += float(w.sum())
    loss = nll / max(weight, 1.0)
    return {"lm_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nll / math.log(2) / max(self.eval_bytes, 1),
            "accuracy": hits / max(weight, 1.0),
            "unigram_perplexity": math.exp(self.unigram_nll)}
