"""A tokenized corpus as three flat arrays: pieces, sentence starts, document starts.

The whole corpus lives in a few `.npy` files that every loader worker memory-maps,
so building an instance is pure index arithmetic with no Python objects per token.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class DocumentStore:
  """Tokenized documents.

  tokens:     int32[N]    every sentence's piece ids, concatenated (no specials).
  sent_start: int64[S+1]  sentence s is tokens[sent_start[s]:sent_start[s+1]].
  doc_start:  int64[D+1]  document d is sentences doc_start[d]:doc_start[d+1].
  """

  tokens: np.ndarray
  sent_start: np.ndarray
  doc_start: np.ndarray

  @property
  def num_docs(self) -> int:
    return len(self.doc_start) - 1

  @property
  def num_sentences(self) -> int:
    return len(self.sent_start) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.sent_start[-1])

  def sentence(self, s: int) -> np.ndarray:
    return self.tokens[self.sent_start[s]:self.sent_start[s + 1]]

  def doc_sentences(self, d: int) -> range:
    return range(int(self.doc_start[d]), int(self.doc_start[d + 1]))

  def subset(self, doc_ids: np.ndarray) -> "DocumentStore":
    """A new store holding only `doc_ids` (in that order); copies."""
    tokens, sents, docs = [], [0], [0]
    for d in doc_ids:
      for s in self.doc_sentences(int(d)):
        piece = self.sentence(s)
        tokens.append(piece)
        sents.append(sents[-1] + len(piece))
      docs.append(len(sents) - 1)
    return DocumentStore(
        np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, np.int32),
        np.asarray(sents, np.int64), np.asarray(docs, np.int64))

  @classmethod
  def from_documents(cls, docs: list[list[list[int]]]) -> "DocumentStore":
    """From documents given as lists of sentences of piece ids (tests, small data)."""
    tokens, sents, starts = [], [0], [0]
    for doc in docs:
      for sent in doc:
        tokens.extend(sent)
        sents.append(len(tokens))
      starts.append(len(sents) - 1)
    return cls(np.asarray(tokens, np.int32), np.asarray(sents, np.int64),
               np.asarray(starts, np.int64))

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in ("tokens", "sent_start", "doc_start"):
      tmp = os.path.join(directory, f"{name}.tmp.npy")
      np.save(tmp, getattr(self, name))
      os.replace(tmp, os.path.join(directory, f"{name}.npy"))

  @classmethod
  def load(cls, directory: str, mmap: bool = True) -> "DocumentStore":
    mode = "r" if mmap else None
    return cls(*(np.load(os.path.join(directory, f"{n}.npy"), mmap_mode=mode)
                 for n in ("tokens", "sent_start", "doc_start")))
