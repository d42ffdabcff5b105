"""`jaxbert evaluate-lm`: perplexity and bits per byte of a decoder over a text file.

The whole file is one text, tokenized as the model's tokenizer tokenizes (no special
tokens added). A model of fixed context scores it with the standard sliding window
(transformers' "Perplexity of fixed-length models"): windows of `max_length` tokens start
every `stride` tokens, and each window scores only the tokens the previous window did not
score, each conditioned on every earlier token inside its window. So every token but the
first is scored exactly once, with at least max_length - stride tokens of context once the
window is full. stride must be below max_length: disjoint windows would leave each
window's first token without context, unscored.

  perplexity    = exp(total negative log-likelihood / scored tokens)
  bits per byte = total negative log-likelihood in bits / UTF-8 bytes of the scored text
                  (the file without the first token's bytes, which only serve as context)

Windows are run as fixed-shape batches (the last window right-padded; causal attention
keeps padding out of real tokens) through one jitted function that returns each window's
summed log-likelihood of its scored tokens; sums are accumulated in float64 on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.errors import UserError
from jaxbert.progress import progress_bar

log = logging.getLogger("jaxbert")

_DEFAULT_MAX_LENGTH = 1024
# Logits of a batch are (batch, max_length, vocab) float32; batches are sized to keep
# them near this many bytes.
_LOGITS_BYTES = 1 << 28


@dataclasses.dataclass
class Windows:
  """Fixed-length windows over one token sequence."""

  ids: np.ndarray     # (W, max_length) int32, right-padded with 0
  scored: np.ndarray  # (W, max_length) bool: the token at this position is scored here

  @property
  def num_scored(self) -> int:
    return int(self.scored.sum())


def sliding_windows(tokens: list[int] | np.ndarray, max_length: int, stride: int) -> Windows:
  """The windows [begin, begin + max_length) for begin = 0, stride, 2 * stride, ...

  A window scores the positions from the previous window's end (and never its own first
  token, which has no context) to its own end; the last window reaches the last token.
  """
  tokens = np.asarray(tokens, np.int32)
  n = len(tokens)
  if not 1 <= stride < max_length:
    raise UserError(f"--stride {stride} is invalid: use 1..{max_length - 1} (below "
                    "--max-length, so that every window's first scored token has context)")
  ids, scored = [], []
  prev_end = 0
  for begin in range(0, n, stride):
    end = min(begin + max_length, n)
    row = np.zeros(max_length, np.int32)
    row[:end - begin] = tokens[begin:end]
    mask = np.zeros(max_length, bool)
    mask[max(prev_end, begin + 1) - begin:end - begin] = True
    ids.append(row)
    scored.append(mask)
    prev_end = end
    if end == n:
      break
  return Windows(np.stack(ids), np.stack(scored))


def window_log_likelihoods(apply_fn, params, ids: jax.Array, scored: jax.Array) -> jax.Array:
  """(W,) float32: each window's summed log-probability of its scored tokens.

  apply_fn(params, ids) -> logits (W, T, V); position j is predicted by the logits at j-1.
  """
  logits = apply_fn(params, ids)[:, :-1].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  target = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(scored[:, 1:], target, 0.0), axis=-1)


@dataclasses.dataclass
class LMReport:
  input: str
  tokens: int
  scored_tokens: int
  bytes: int
  windows: int
  max_length: int
  stride: int
  nll: float          # total negative log-likelihood of the scored tokens, in nats
  seconds: float

  @property
  def perplexity(self) -> float:
    return math.exp(self.nll / self.scored_tokens)

  @property
  def bits_per_byte(self) -> float:
    return self.nll / math.log(2) / self.bytes

  def __str__(self) -> str:
    return (f"{self.input}: perplexity {self.perplexity:.4f}, bits per byte "
            f"{self.bits_per_byte:.4f}, mean NLL {self.nll / self.scored_tokens:.4f} nats/token; "
            f"{self.tokens} tokens ({self.scored_tokens} scored), {self.bytes} bytes scored; "
            f"{self.windows} windows of {self.max_length}, stride {self.stride}; "
            f"{self.seconds:.1f} s ({self.scored_tokens / max(self.seconds, 1e-9):.0f} tokens/s)")


def score_tokens(apply_fn, params, tokens, *, max_length: int, stride: int,
                 batch_size: int, show_progress: bool = False) -> tuple[float, int, int]:
  """(total NLL in nats, scored tokens, windows) of a token sequence, sliding window."""
  win = sliding_windows(tokens, max_length, stride)
  scorer = jax.jit(functools.partial(window_log_likelihoods, apply_fn))
  total = 0.0
  batches = range(0, len(win.ids), batch_size)
  for start in progress_bar(batches, desc="windows", unit="batch", enabled=show_progress):
    ids = win.ids[start:start + batch_size]
    scored = win.scored[start:start + batch_size]
    pad = batch_size - len(ids)  # one shape for every batch: one compile
    if pad:
      ids = np.concatenate([ids, np.zeros((pad, max_length), np.int32)])
      scored = np.concatenate([scored, np.zeros((pad, max_length), bool)])
    total -= float(np.asarray(scorer(params, ids, scored), np.float64).sum())
  return total, win.num_scored, len(win.ids)


def default_batch_size(max_length: int, vocab_size: int) -> int:
  return max(1, min(64, _LOGITS_BYTES // (4 * max_length * vocab_size)))


def read_text(path: str) -> str:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f"--input {path} does not exist") from None
  except (IsADirectoryError, PermissionError) as e:
    raise UserError(f"cannot read --input {path}: {e}") from None
  text = data.decode("utf-8", errors="replace")
  if not text.strip():
    raise UserError(f"--input {path} is empty: give a text file to score")
  return text


def evaluate_file(checkpoint: str, path: str, *, max_length: int | None = None,
                  stride: int | None = None, batch_size: int | None = None) -> LMReport:
  """Perplexity and bits per byte of the decoder at `checkpoint` over the text file `path`."""
  from jaxbert.generate import load_decoder  # pylint: disable=g-import-not-at-top
  model, config, params, tokenizer = load_decoder(checkpoint)
  context = config.max_position_embeddings
  max_length = max_length or min(context, _DEFAULT_MAX_LENGTH)
  if not 2 <= max_length <= context:
    raise UserError(f"--max-length {max_length} is invalid: use 2..{context} (the model's "
                    "context, max_position_embeddings)")
  stride = stride or max_length // 2
  text = read_text(path)
  tokens = tokenizer.encode(text)
  if len(tokens) < 2:
    raise UserError(f"--input {path} has {len(tokens)} token(s): perplexity needs at least 2")
  first_bytes = len(tokenizer.decode(tokens[:1]).encode("utf-8"))
  num_bytes = max(1, len(text.encode("utf-8")) - first_bytes)
  batch_size = batch_size or default_batch_size(max_length, config.vocab_size)
  if batch_size < 1:
    raise UserError(f"--batch-size {batch_size} is invalid: use an integer >= 1")

  def apply_fn(p, ids):
    return model.apply({"params": p}, ids)

  start = time.perf_counter()
  nll, scored, windows = score_tokens(apply_fn, params, tokens, max_length=max_length,
                                      stride=stride, batch_size=batch_size, show_progress=True)
  return LMReport(path, len(tokens), scored, num_bytes, windows, max_length, stride, nll,
                  time.perf_counter() - start)


def evaluate_lm_command(args) -> int:
  print(evaluate_file(args.checkpoint, args.input, max_length=args.max_length,
                      stride=args.stride, batch_size=args.batch_size))
  return 0
