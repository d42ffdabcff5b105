"""Feature extraction: one vector per line of a text file (`jaxbert embed`).

Each line becomes `[CLS] pieces [SEP]` and one row of the output, in input order;
an empty line still gets a row (the vector of `[CLS] [SEP]`), so row i is always
line i. Lines are split the way `bytes.splitlines` does (\\n, \\r\\n or \\r).

Lines are sorted by length and grouped into a few fixed padded lengths (powers of
two up to `max_seq_len`) with a fixed batch size, so the jitted forward pass
compiles once per length, never per batch, and short lines are not padded to the
longest one.

Pooling:
  "cls"    the last hidden state at position 0 ([CLS]), not the pooler output;
  "mean"   the mean of the last hidden states over real tokens ([CLS] and [SEP]
           included, padding excluded), as sentence-transformers does;
  "pooler" BERT's pooler output, tanh(dense([CLS] state)).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.errors import UserError
from jaxbert.model import BertConfig, BertEncoderOnly
from jaxbert.progress import progress_bar

log = logging.getLogger("jaxbert")

POOLINGS = ("cls", "mean", "pooler")
_MIN_BUCKET = 16


@dataclasses.dataclass
class EmbedReport:
  """What `embed_lines` wrote."""

  output: str
  num_lines: int
  dim: int
  pooling: str
  empty_lines: int
  truncated_lines: int
  undecodable_lines: int

  def __str__(self) -> str:
    s = (f"wrote {self.num_lines} x {self.dim} float32 ({self.pooling} pooling) to {self.output}")
    counts = [(self.empty_lines, "empty"), (self.truncated_lines, "truncated"),
              (self.undecodable_lines, "with invalid UTF-8 replaced")]
    details = [f"{n} {what}" for n, what in counts if n]
    return s + (f"; lines: {', '.join(details)}" if details else "")


def bucket_lengths(max_seq_len: int) -> list[int]:
  """The padded lengths used: 16, 32, 64, ... below max_seq_len, then max_seq_len."""
  out, n = [], _MIN_BUCKET
  while n < max_seq_len:
    out.append(n)
    n *= 2
  return out + [max_seq_len]


def read_lines(path: str) -> tuple[list[str], int]:
  """Lines of a text file and how many held bytes that are not UTF-8 (replaced by U+FFFD)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f"input file {path} does not exist") from None
  except (IsADirectoryError, PermissionError) as e:
    raise UserError(f"cannot read input file {path}: {e}") from None
  lines, bad = [], 0
  for raw in data.splitlines():
    try:
      lines.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
      lines.append(raw.decode("utf-8", errors="replace"))
      bad += 1
  return lines, bad


def _encoder_fn(cfg: BertConfig, pooling: str):
  model = BertEncoderOnly(cfg)

  @jax.jit
  def fn(params, input_ids, attention_mask):
    batch = {"input_ids": input_ids, "token_type_ids": jnp.zeros_like(input_ids),
             "attention_mask": attention_mask}
    out = model.apply({"params": params}, batch, deterministic=True)
    if pooling == "pooler":
      return out["pooled_output"]
    seq = out["sequence_output"]  # (B, T, H)
    if pooling == "cls":
      return seq[:, 0]
    mask = attention_mask[..., None].astype(jnp.float32)  # (B, T, 1)
    return (seq * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)

  return fn


def embed_texts(params, cfg: BertConfig, tokenizer, texts: list[str], *, pooling: str = "cls",
                batch_size: int = 64, max_seq_len: int = 128,
                progress: bool = False) -> tuple[np.ndarray, int]:
  """-> (float32 (N, H) embeddings in the order of `texts`, number of truncated texts).

  `params` holds the encoder under "bert" (a bundle's tree; heads are ignored).
  """
  if pooling not in POOLINGS:
    raise UserError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  if not 2 <= max_seq_len <= cfg.max_position_embeddings:
    raise UserError(f"max_seq_len={max_seq_len} must be between 2 and the model's "
                    f"max_position_embeddings={cfg.max_position_embeddings}")
  if batch_size < 1:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  cfg = cfg.replace(hidden_dropout=0.0, attention_dropout=0.0)
  pieces = tokenizer.encode_batch(list(texts))
  budget = max_seq_len - 2
  truncated = sum(len(p) > budget for p in pieces)
  rows = [[tokenizer.cls_id] + p[:budget] + [tokenizer.sep_id] for p in pieces]
  lengths = np.array([len(r) for r in rows], np.int64)
  buckets = bucket_lengths(max_seq_len)
  bucket_of = np.searchsorted(buckets, lengths)  # smallest bucket >= length
  order = np.argsort(lengths, kind="stable")
  batches = []  # (bucket length, indices of texts)
  for b, t in enumerate(buckets):
    members = order[bucket_of[order] == b]
    batches += [(t, members[i:i + batch_size]) for i in range(0, len(members), batch_size)]

  fn = _encoder_fn(cfg, pooling)
  params = jax.device_put({"bert": params["bert"]})
  out = np.zeros((len(rows), cfg.hidden_size), np.float32)
  pending = None  # the previous batch's device result: fetched after the next is dispatched
  for t, idx in progress_bar(batches, desc="embed", unit="batch", enabled=progress):
    # Fixed (batch_size, t) shapes: a short last batch is filled with [CLS] [SEP] rows.
    ids = np.full((batch_size, t), tokenizer.pad_id, np.int32)
    mask = np.zeros((batch_size, t), np.int32)
    ids[:, :2] = (tokenizer.cls_id, tokenizer.sep_id)
    mask[:, :2] = 1
    for j, i in enumerate(idx):
      ids[j, :lengths[i]] = rows[i]
      mask[j, :lengths[i]] = 1
    result = fn(params, ids, mask)
    if pending is not None:
      out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
    pending = (idx, result)
  if pending is not None:
    out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
  return out, truncated


def embed_lines(bundle_dir: str, input_file: str, output_file: str, pooling: str = "cls",
                batch_size: int = 64, max_seq_len: int = 128, progress: bool = True) -> EmbedReport:
  """Writes one embedding per line of `input_file` to `output_file` (.npy, float32 (N, H)).

  `bundle_dir` is an import-hf bundle or a training run (see handover.read_checkpoint).
  Empty lines get the embedding of `[CLS] [SEP]`; lines longer than max_seq_len - 2
  pieces are truncated; invalid UTF-8 bytes become U+FFFD. Each is counted and warned.
  """
  from jaxbert.handover import read_checkpoint  # pylint: disable=g-import-not-at-top
  if pooling not in POOLINGS:
    raise UserError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  lines, undecodable = read_lines(input_file)
  if undecodable:
    log.warning("%s: %d lines held bytes that are not UTF-8; they were replaced by U+FFFD",
                input_file, undecodable)
  ckpt = read_checkpoint(bundle_dir)
  vectors, truncated = embed_texts(ckpt.params, ckpt.config, ckpt.tokenizer, lines,
                                   pooling=pooling, batch_size=batch_size,
                                   max_seq_len=max_seq_len, progress=progress)
  if truncated:
    log.warning("%s: %d lines were longer than max_seq_len=%d pieces and were truncated",
                input_file, truncated, max_seq_len)
  output_file = os.path.abspath(output_file)
  os.makedirs(os.path.dirname(output_file), exist_ok=True)
  tmp = output_file + ".tmp"
  with open(tmp, "wb") as f:
    np.save(f, vectors)
  os.replace(tmp, output_file)
  return EmbedReport(output=output_file, num_lines=len(lines), dim=int(vectors.shape[1]),
                     pooling=pooling, empty_lines=sum(not line.strip() for line in lines),
                     truncated_lines=truncated, undecodable_lines=undecodable)
