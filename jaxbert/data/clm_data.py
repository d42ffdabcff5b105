"""Causal-LM pre-training data: whole documents -> packed rows with per-document attention.

A document of n pieces is trained as the input `[EOD] t1 .. tn` with the targets
`t1 .. tn [EOD]`: every piece is predicted from earlier pieces of its own document
only, and so is the end of the document. A document longer than a row is cut into
row-long items. Items are packed into rows of `seq_len` (first-fit decreasing,
jaxbert/data/packing.pack_lengths, as the encoder packs its examples), each item
with its own `segment_ids` value (the decoder attends within a segment only; 0 is
padding) and `positions` restarting at 0, so an item computes exactly what it
would alone in a row.

The rows depend on the documents' lengths only; each epoch trains them in an order
drawn from (seed, epoch), so a row, like an encoder example, is a pure function of
(seed, epoch, index) and a resumed run needs only its stream position.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from jaxbert.data.docstore import DocumentStore
from jaxbert.data.nsp_pairs import stream_rng
from jaxbert.data.packing import pack_lengths
from jaxbert.decoder_tokenizer import encode_batch
from jaxbert.errors import UserError
from jaxbert.progress import progress_bar

_ORDER_STREAM = 6  # a random stream of its own (pretraining.py uses 0-4, packing.py 5)
_ENCODE_CHUNK = 1024  # documents per encode_batch call


def build_store(documents, tokenizer, *, progress: bool = True) -> DocumentStore:
  """Tokenizes whole documents (lists of lines, joined by newlines) into a DocumentStore
  with one "sentence" per document: a decoder reads a document as one text."""
  tokens, lens = [], []
  bar = progress_bar(total=None, unit="doc", desc="tokenizing", enabled=progress)

  def flush(texts):
    for ids in encode_batch(tokenizer, texts):
      if ids:  # a document that tokenizes to nothing is dropped
        tokens.append(np.asarray(ids, np.int32))
        lens.append(len(ids))
    bar.update(len(texts))

  pending = []
  for doc in documents:
    pending.append("\n".join(doc))
    if len(pending) >= _ENCODE_CHUNK:
      flush(pending)
      pending = []
  flush(pending)
  bar.close()
  starts = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(np.int64)
  flat = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
  return DocumentStore(flat, starts, np.arange(len(lens) + 1, dtype=np.int64))


def doc_tokens(store: DocumentStore, d: int) -> np.ndarray:
  """Document d's pieces (all its sentences)."""
  lo = store.sent_start[store.doc_start[d]]
  hi = store.sent_start[store.doc_start[d + 1]]
  return store.tokens[lo:hi]


class LMRows:
  """Packed causal-LM rows by (epoch, index); the random-access interface of
  jaxbert.data.pretraining.PretrainingExamples (num_examples, locate, example), so
  jaxbert.pretrain.StepBatches batches them unchanged.

  shuffle=False keeps the plan's order in every epoch (held-out rows).
  """

  def __init__(self, store: DocumentStore, seq_len: int, eod_id: int, pad_id: int, seed: int,
               shuffle: bool = True):
    if store.num_docs == 0 or store.num_tokens == 0:
      raise UserError("the causal-LM document store holds no tokens; rebuild it from a "
                      "non-empty corpus")
    if seq_len < 2:
      raise UserError(f"data.max_seq_len={seq_len} is invalid: a causal-LM row needs >= 2")
    self.store, self.seq_len, self.eod_id, self.pad_id = store, seq_len, eod_id, pad_id
    self.seed, self.shuffle = seed, shuffle
    bounds = store.sent_start[store.doc_start]  # token offsets of document starts
    doc_len = np.diff(bounds) + 1  # + the end-of-document piece
    chunks = -(-doc_len // seq_len)
    # Items: (document, offset into its [EOD] t1..tn sequence, length).
    self.item_doc = np.repeat(np.arange(store.num_docs), chunks)
    first = np.repeat(np.cumsum(chunks) - chunks, chunks)
    self.item_start = (np.arange(len(self.item_doc)) - first) * seq_len
    self.item_len = np.minimum(doc_len[self.item_doc] - self.item_start, seq_len)
    self._bounds = bounds
    self.plan = pack_lengths(self.item_len, seq_len, seq_len)
    self._orders: dict[int, np.ndarray] = {}

  def num_examples(self, epoch: int = 0) -> int:
    del epoch
    return len(self.plan)

  def locate(self, position: int) -> tuple[int, int]:
    if position < 0:
      raise IndexError(f"stream position {position} < 0")
    return divmod(position, len(self.plan))

  def order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(len(self.plan))
    if epoch not in self._orders:
      if len(self._orders) >= 2:  # a stream only touches the current and next epoch
        self._orders.pop(min(self._orders))
      self._orders[epoch] = stream_rng(self.seed, epoch, _ORDER_STREAM).permutation(len(self.plan))
    return self._orders[epoch]

  def item_arrays(self, item: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one item: a slice of [EOD] t1..tn and of t1..tn [EOD]."""
    d, start, n = int(self.item_doc[item]), int(self.item_start[item]), int(self.item_len[item])
    return self._window(d, start, start + n), self._window(d, start + 1, start + 1 + n)

  def _window(self, d: int, a: int, b: int) -> np.ndarray:
    """[a, b) of document d's sequence [EOD] t1..tn [EOD], without copying the document."""
    lo, hi = int(self._bounds[d]), int(self._bounds[d + 1])
    middle = self.store.tokens[lo + max(a, 1) - 1:lo + min(b, hi - lo + 1) - 1]
    head = [self.eod_id] if a == 0 else []
    tail = [self.eod_id] if b == hi - lo + 2 else []
    return np.concatenate([np.asarray(head, np.int32), middle, np.asarray(tail, np.int32)]
                          ).astype(np.int32)

  def row_items(self, epoch: int, index: int) -> np.ndarray:
    return self.plan[int(self.order(epoch)[index])]

  def example(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    return self.pack([self.item_arrays(int(i)) for i in self.row_items(epoch, index)])

  def pack(self, items: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    t = self.seq_len
    row = {"input_ids": np.full(t, self.pad_id, np.int32), "targets": np.zeros(t, np.int32),
           "loss_weights": np.zeros(t, np.float32), "segment_ids": np.zeros(t, np.int32),
           "positions": np.zeros(t, np.int32), "attention_mask": np.zeros(t, np.int32)}
    at = 0
    for k, (inputs, targets) in enumerate(items):
      n = len(inputs)
      row["input_ids"][at:at + n] = inputs
      row["targets"][at:at + n] = targets
      row["loss_weights"][at:at + n] = 1.0
      row["segment_ids"][at:at + n] = k + 1
      row["positions"][at:at + n] = np.arange(n)
      row["attention_mask"][at:at + n] = 1
      at += n
    return row

  def empty_row(self) -> dict[str, np.ndarray]:
    return self.pack([])

  def efficiency(self) -> float:
    """Real pieces per row slot."""
    return float(self.item_len.sum()) / (len(self.plan) * self.seq_len)


def item_bytes(rows: LMRows, tokenizer, items) -> int:
  """UTF-8 bytes of the text the items' targets spell (end-of-document pieces aside),
  the denominator of bits per byte."""
  total = 0
  for i in items:
    _, targets = rows.item_arrays(int(i))
    total += len(tokenizer.decode(targets[targets != rows.eod_id].tolist()).encode("utf-8"))
  return total


def unigram_log_probs(store: DocumentStore, vocab_size: int, eod_id: int) -> np.ndarray:
  """log p(piece) of an add-one smoothed unigram fitted on `store`'s documents, each
  ending with an end-of-document piece (the targets a causal LM is trained on)."""
  counts = np.bincount(np.asarray(store.tokens[:store.num_tokens]), minlength=vocab_size)
  counts = counts[:vocab_size].astype(np.float64) + 1.0
  counts[eod_id] += store.num_docs
  return np.log(counts) - math.log(counts.sum())


def targets_of(rows: LMRows, indices) -> np.ndarray:
  """Every target piece of the rows `indices` (epoch 0), concatenated."""
  return np.concatenate(list(itertools.chain.from_iterable(
      (rows.item_arrays(int(i))[1] for i in rows.row_items(0, r)) for r in indices)))
