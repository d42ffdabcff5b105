"""Dynamic BERT pre-training examples: sentence pairs and masks from (seed, epoch, index).

The construction follows the original BERT recipe: sentence pairs, half of them with
segment B from another document, truncated at random ends (jaxbert/data/nsp_pairs.py),
then 15% of the pieces masked (80% [MASK], 10% a random piece, 10% unchanged;
jaxbert/data/masking.py).

Unlike the original, nothing is written out: for every epoch a *plan* (integer token
spans and labels only) is computed from (seed, epoch), and each example's mask is drawn
from (seed, epoch, index). A resumed run therefore needs only its stream position,
and every process and machine produces identical examples.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
from typing import NamedTuple

import numpy as np

from jaxbert.data.docstore import DocumentStore
from jaxbert.data.masking import Masker
from jaxbert.data.nsp_pairs import (HELDOUT_STREAM, MASK_STREAM, EpochPlan, plan_epoch,
                                     stream_rng)
from jaxbert.errors import UserError

# Epoch plans kept in memory; a stream only ever touches the current and next epoch.
_PLAN_CACHE_SIZE = 2


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
  """How pre-training examples are built (defaults are BERT's)."""

  max_seq_len: int = 128
  max_predictions_per_seq: int = 20
  mask_prob: float = 0.15
  short_seq_prob: float = 0.1
  whole_word: bool = False
  random_next_prob: float = 0.5
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  seed: int = 0

  def __post_init__(self):
    def bad(key, value, need):
      raise UserError(
          f"pre-training data config key `{key}` = {value!r}: must be {need}.")

    if self.max_seq_len < 5:
      bad("max_seq_len", self.max_seq_len,
          ">= 5 ([CLS] A [SEP] B [SEP] needs one piece per segment)")
    if self.max_predictions_per_seq < 1:
      bad("max_predictions_per_seq", self.max_predictions_per_seq, ">= 1")
    for key in ("mask_prob", "short_seq_prob", "random_next_prob",
                "mask_token_prob", "random_token_prob"):
      value = getattr(self, key)
      if not 0.0 <= value <= 1.0:
        bad(key, value, "a probability in [0, 1]")
    if self.mask_prob == 0.0:
      bad("mask_prob", self.mask_prob, "> 0")
    if self.mask_token_prob + self.random_token_prob > 1.0:
      bad("random_token_prob", self.random_token_prob,
          f"<= 1 - mask_token_prob = {1.0 - self.mask_token_prob:g} "
          "(the rest of the masked pieces stay unchanged)")
    if self.seed < 0:
      bad("seed", self.seed, ">= 0")


class Provenance(NamedTuple):
  """Where an example's segments come from (for checks and debugging).

  a_span, b_span: [lo, hi) offsets into `store.tokens` after truncation.
  """

  a_doc: int
  b_doc: int
  a_span: tuple[int, int]
  b_span: tuple[int, int]
  next_sentence_label: int


class PretrainingExamples:
  """Random access to BERT pre-training examples by (epoch, index).

  Each example is a pure function of (cfg.seed, epoch, index) and the store; the
  per-epoch plan is computed on first use and cached.
  """

  def __init__(self, store: DocumentStore, cfg: PretrainDataConfig, *,
               vocab_size: int, pad_id: int, unk_id: int, cls_id: int,
               sep_id: int, mask_id: int,
               word_start: np.ndarray | None = None,
               random_ids: np.ndarray | None = None):
    """Args:

      store: the tokenized corpus (no special pieces added).
      cfg: how examples are built.
      vocab_size, *_id: the tokenizer's vocabulary size and special ids.
      word_start: bool[vocab_size], True where a piece begins a word (required
        for cfg.whole_word).
      random_ids: ids that may replace a masked piece; default: every id that is
        not one of the special ids above.
    """
    self.store = store
    self.cfg = cfg
    self.pad_id, self.cls_id, self.sep_id, self.mask_id = (
        pad_id, cls_id, sep_id, mask_id)
    specials = np.asarray([pad_id, unk_id, cls_id, sep_id, mask_id])
    if specials.min() < 0 or specials.max() >= vocab_size:
      raise ValueError(f"special ids {specials.tolist()} outside vocabulary "
                       f"of size {vocab_size}")
    if store.num_tokens == 0:
      raise UserError("the pre-training document store holds no tokens; "
                      "rebuild it from a non-empty corpus.")
    largest = int(np.max(store.tokens[:store.num_tokens]))
    if largest >= vocab_size:
      raise UserError(
          f"the pre-training document store holds piece id {largest} but the "
          f"tokenizer has only {vocab_size} pieces: the store was built with "
          "another tokenizer; rebuild it with this one.")
    self.masker = Masker(cfg, vocab_size=vocab_size, special_ids=specials,
                         mask_id=mask_id, word_start=word_start, random_ids=random_ids)
    self._index_arrays()
    self._reset_caches()

  @classmethod
  def from_tokenizer(cls, store: DocumentStore, cfg: PretrainDataConfig,
                     tokenizer) -> "PretrainingExamples":
    """Takes the vocabulary facts from a `jaxbert.tokenizer.Tokenizer`."""
    return cls(store, cfg, vocab_size=tokenizer.vocab_size,
               pad_id=tokenizer.pad_id, unk_id=tokenizer.unk_id,
               cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
               mask_id=tokenizer.mask_id,
               word_start=tokenizer.word_start_table())

  def _index_arrays(self):
    # Python lists make the sequential walk in `plan_epoch` several times faster.
    self._sent_start = np.asarray(self.store.sent_start).tolist()
    self._doc_start = np.asarray(self.store.doc_start).tolist()
    doc_tokens = np.diff(np.asarray(self.store.sent_start)[self.store.doc_start])
    self._docs = np.flatnonzero(doc_tokens > 0).tolist()

  def _reset_caches(self):
    self._lock = threading.RLock()
    self._plans: collections.OrderedDict[int, EpochPlan] = collections.OrderedDict()
    self._counts: dict[int, int] = {}
    self._offsets = [0]  # stream position where epoch e begins, for known epochs

  def __getstate__(self):
    # Worker processes rebuild locks and plans instead of receiving them.
    state = self.__dict__.copy()
    for key in ("_lock", "_plans", "_counts", "_offsets", "_sent_start",
                "_doc_start", "_docs"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._index_arrays()
    self._reset_caches()

  def _plan(self, epoch: int) -> EpochPlan:
    if epoch < 0:
      raise IndexError(f"epoch {epoch} < 0")
    with self._lock:
      plan = self._plans.get(epoch)
      if plan is None:
        plan = plan_epoch(self._sent_start, self._doc_start, self._docs,
                           self.cfg, epoch)
        self._plans[epoch] = plan
        self._counts[epoch] = len(plan)
        while len(self._plans) > _PLAN_CACHE_SIZE:
          self._plans.popitem(last=False)
      else:
        self._plans.move_to_end(epoch)
      return plan

  def num_examples(self, epoch: int) -> int:
    """Instances in `epoch` (varies a little from epoch to epoch)."""
    with self._lock:
      if epoch not in self._counts:
        self._plan(epoch)
      return self._counts[epoch]

  def locate(self, position: int) -> tuple[int, int]:
    """(epoch, index) of `position` in the endless stream epoch 0, 1, 2, ..."""
    if position < 0:
      raise IndexError(f"stream position {position} < 0")
    with self._lock:
      while self._offsets[-1] <= position:
        epoch = len(self._offsets) - 1
        self._offsets.append(self._offsets[-1] + self.num_examples(epoch))
      epoch = bisect.bisect_right(self._offsets, position) - 1
      return epoch, position - self._offsets[epoch]

  def provenance(self, epoch: int, index: int) -> Provenance:
    """The documents and token spans behind example (epoch, index)."""
    plan = self._plan(epoch)
    self._check_index(plan, epoch, index)
    a_lo, a_hi, b_lo, b_hi = plan.spans[index].tolist()
    a_doc, b_doc = plan.docs[index].tolist()
    return Provenance(a_doc, b_doc, (a_lo, a_hi), (b_lo, b_hi),
                      int(plan.label[index]))

  @staticmethod
  def _check_index(plan: EpochPlan, epoch: int, index: int) -> None:
    if not 0 <= index < len(plan):
      raise IndexError(f"index {index} outside epoch {epoch} "
                       f"of {len(plan)} examples")

  def example(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    """Example `index` of `epoch`: `[CLS] A [SEP] B [SEP]`, padded, with its mask.

    Returns int32 input_ids, token_type_ids, attention_mask (T,); int32
    masked_positions, masked_ids and float32 masked_weights (P,); int32
    next_sentence_label () with 0 = IsNext, 1 = NotNext.
    """
    cfg = self.cfg
    plan = self._plan(epoch)
    self._check_index(plan, epoch, index)
    a_lo, a_hi, b_lo, b_hi = plan.spans[index].tolist()
    la, lb = a_hi - a_lo, b_hi - b_lo
    b0 = la + 2  # first position of B
    n = b0 + lb + 1  # real tokens, specials included
    tokens = self.store.tokens

    ids = np.full(cfg.max_seq_len, self.pad_id, np.int32)
    ids[0] = self.cls_id
    ids[1:la + 1] = tokens[a_lo:a_hi]
    ids[la + 1] = self.sep_id
    ids[b0:b0 + lb] = tokens[b_lo:b_hi]
    ids[n - 1] = self.sep_id
    token_type_ids = np.zeros(cfg.max_seq_len, np.int32)
    token_type_ids[b0:n] = 1
    attention_mask = np.zeros(cfg.max_seq_len, np.int32)
    attention_mask[:n] = 1

    content = np.zeros(cfg.max_seq_len, bool)
    content[1:la + 1] = True
    content[b0:b0 + lb] = True
    masks = self.masker.mask(ids, content, stream_rng(cfg.seed, epoch, MASK_STREAM, index))
    return {
        "input_ids": ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        **masks,
        "next_sentence_label": np.asarray(plan.label[index], np.int32),
    }


class StreamSource:
  """`length` consecutive stream positions from `start`, for grain.MapDataset.source.

  Item i is the example at stream position start + i (epochs back to back), so a
  resumed run continues by passing start = examples already consumed.
  """

  def __init__(self, examples: PretrainingExamples, length: int, start: int = 0):
    if length < 0 or start < 0:
      raise ValueError(f"length {length} and start {start} must be >= 0")
    self.examples = examples
    self.length = length
    self.start = start

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not 0 <= i < self.length:
      raise IndexError(f"stream item {i} outside [0, {self.length})")
    return self.examples.example(*self.examples.locate(self.start + i))


def batch_examples(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks examples key by key into a batch with a leading axis."""
  if not examples:
    raise ValueError("cannot batch an empty list of examples")
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def split_heldout(store: DocumentStore, fraction: float,
                  seed: int) -> tuple[DocumentStore, DocumentStore]:
  """Splits whole documents into (train, eval) stores, eval ~ `fraction` of them.

  Deterministic in (store, fraction, seed); both keep the store's document order.
  """
  if not 0.0 < fraction < 1.0:
    raise UserError(f"held-out fraction {fraction!r} must be in (0, 1).")
  if store.num_docs < 2:
    raise UserError(f"the document store holds {store.num_docs} document(s); "
                    "holding some out for evaluation needs at least 2.")
  n_eval = min(store.num_docs - 1, max(1, round(fraction * store.num_docs)))
  held = np.zeros(store.num_docs, bool)
  held[stream_rng(seed, HELDOUT_STREAM).permutation(store.num_docs)[:n_eval]] = True
  return store.subset(np.flatnonzero(~held)), store.subset(np.flatnonzero(held))
