"""Instruction-tuning data: JSONL examples -> token rows whose prompt pieces carry no loss.

A line of a JSONL file is one example, either

    {"prompt": "Is this review positive or negative? ...", "completion": "positive"}
    {"messages": [{"role": "system", "content": ...}, {"role": "user", "content": ...},
                  {"role": "assistant", "content": ...}, ...]}

A prompt/completion pair is the pieces of the prompt as `jaxbert generate` encodes a
prompt (jaxbert.generate.encode_prompt: the tokenizer's own special tokens), then the
completion's pieces and the end-of-sequence piece. A conversation is rendered with the
model's chat template (jaxbert/chat_template.py) turn by turn: the text each assistant
turn adds after the generation prompt is the assistant's, the rest (system and user turns,
the template's own framing) is context. Both become a piece sequence s_0..s_n with a
weight per piece, 1 for the completion / assistant pieces (up to the end-of-turn piece),
0 for everything else; the model reads s_0..s_{n-1} and predicts s_1..s_n, target j
weighted by piece j + 1's weight, so the prompt's pieces are never predicted.

Examples are packed into rows of `seq_len` (jaxbert/data/packing.pack_lengths, first-fit
decreasing) with their own `segment_ids` (the decoder attends within a segment only) and
`positions` restarting at 0, so an example computes exactly what it would alone in a
row; the row plan depends on the examples' lengths only and each epoch visits the rows in
an order drawn from (seed, epoch), so a batch is a pure function of (seed, step) and a
resumed run needs only its step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import numpy as np

from jaxbert.data.nsp_pairs import stream_rng
from jaxbert.data.packing import pack_lengths
from jaxbert.errors import UserError

_ORDER_STREAM = 7  # a random stream of its own (pretraining.py 0-4, packing.py 5, clm_data.py 6)
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class Example:
  """One JSONL line: the prompt the model is given and the reference answer."""

  where: str                      # file:line, for messages
  prompt: str | None = None       # a prompt/completion pair ...
  completion: str | None = None
  messages: list[dict] | None = None  # ... or a conversation ending with an assistant turn

  @property
  def reference(self) -> str:
    return self.completion if self.messages is None else self.messages[-1]["content"]

  @property
  def shown_prompt(self):
    """The prompt as predictions.jsonl shows it: the text, or the turns before the answer."""
    return self.prompt if self.messages is None else self.messages[:-1]


def read_jsonl(path: str, key: str) -> list[Example]:
  """The examples of one JSONL file; a bad line is a UserError naming file:line."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f"{key}={path}: no such file") from None
  except (IsADirectoryError, PermissionError) as e:
    raise UserError(f"{key}={path}: cannot read it ({e})") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}:{line}: not UTF-8 text; write the file as UTF-8") from None
  examples = []
  for n, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      examples.append(_example(line, f"{path}:{n}"))
  if not examples:
    raise UserError(f"{path} holds no example: write one JSON object per line, "
                    '{"prompt": ..., "completion": ...} or {"messages": [...]}')
  return examples


def _example(line: str, where: str) -> Example:
  try:
    obj = json.loads(line)
  except ValueError as e:
    raise UserError(f"{where}: not a JSON object ({e.msg}); write one example per line") from None
  if not isinstance(obj, dict):
    raise UserError(f"{where}: a line must be a JSON object, not {type(obj).__name__}")
  if "messages" in obj:
    return Example(where, messages=_messages(obj["messages"], where))
  missing = [k for k in ("prompt", "completion") if k not in obj]
  if missing:
    raise UserError(f"{where}: an example needs \"prompt\" and \"completion\" strings or a "
                    f"\"messages\" list; this one lacks {' and '.join(repr(k) for k in missing)} "
                    f"(keys: {sorted(obj)})")
  for k in ("prompt", "completion"):
    if not isinstance(obj[k], str):
      raise UserError(f"{where}: \"{k}\" must be a string, not {type(obj[k]).__name__}")
  if not obj["completion"].strip():
    raise UserError(f"{where}: the completion is empty; every example needs an answer to learn")
  return Example(where, prompt=obj["prompt"], completion=obj["completion"])


def _messages(messages, where: str) -> list[dict]:
  if not isinstance(messages, list) or not messages:
    raise UserError(f"{where}: \"messages\" must be a non-empty list of "
                    '{"role": ..., "content": ...} objects')
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
        or not isinstance(m.get("content"), str):
      raise UserError(f"{where}: message {i} must be an object with \"role\" and \"content\" "
                      "strings")
    if m["role"] not in ROLES:
      raise UserError(f"{where}: message {i} has role {m['role']!r}; use one of {list(ROLES)}")
    out.append({"role": m["role"], "content": m["content"]})
  if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
    raise UserError(f"{where}: the last message must be a non-empty assistant turn (the "
                    "answer the model learns and is evaluated on)")
  return out


def resolve_files(train_file: str, eval_file: str) -> tuple[str, str]:
  """(train, eval) JSONL paths from config.data.train_file / eval_file: a file each, or a
  folder train_file holding train.jsonl and dev.jsonl (or valid/validation.jsonl)."""
  if not train_file:
    raise UserError("config.data.train_file is empty; set --config.data.train_file=FILE.jsonl "
                    "(or a folder holding train.jsonl and dev.jsonl)")
  if not os.path.exists(train_file):
    raise UserError(f"config.data.train_file={train_file}: no such file or directory")
  train = train_file
  if os.path.isdir(train_file):
    train = os.path.join(train_file, "train.jsonl")
    if not os.path.isfile(train):
      raise UserError(f"config.data.train_file={train_file} is a folder without train.jsonl")
  if eval_file:
    if not os.path.isfile(eval_file):
      raise UserError(f"config.data.eval_file={eval_file}: no such file")
    return train, eval_file
  if os.path.isdir(train_file):
    for name in ("dev.jsonl", "valid.jsonl", "validation.jsonl"):
      if os.path.isfile(os.path.join(train_file, name)):
        return train, os.path.join(train_file, name)
  raise UserError(f"config.data.eval_file is empty and {train_file} has no dev.jsonl beside "
                  "train.jsonl; set --config.data.eval_file=FILE.jsonl (the held-out examples)")


# ----------------------------------------------------------------------------- encoding


def _encode(tokenizer, text: str) -> list[int]:
  """`text`'s pieces without special tokens added (the template or caller places them)."""
  try:
    return list(tokenizer.encode(text, add_special_tokens=False))
  except TypeError:  # own SentencePiece BPE: never adds any
    return list(tokenizer.encode(text))


def end_id(tokenizer) -> int:
  """The piece that ends a completion: the tokenizer's eos (a chat model's end of turn),
  else its end-of-text piece."""
  eos = getattr(tokenizer, "eos_id", None)
  if eos is None or eos < 0:
    eos = getattr(tokenizer, "eod_id", None)
  if eos is None or eos < 0:
    raise UserError("the model's tokenizer has no end-of-sequence token to end completions with")
  return int(eos)


@dataclasses.dataclass
class Encoded:
  pieces: np.ndarray    # (n,) int32: s_0..s_{n-1}
  weights: np.ndarray   # (n,) float32: 1 on the pieces to learn
  prompt: list[int]     # the pieces before the (last) answer: the generation prompt


def encode(ex: Example, tokenizer, stops: tuple[int, ...]) -> Encoded:
  if ex.messages is None:
    from jaxbert.generate import encode_prompt  # pylint: disable=g-import-not-at-top
    prompt = encode_prompt(tokenizer, ex.prompt, chat=False, system=None)
    answer = _encode(tokenizer, ex.completion) + [end_id(tokenizer)]
    return Encoded(np.asarray(prompt + answer, np.int32),
                   np.asarray([0.0] * len(prompt) + [1.0] * len(answer), np.float32), prompt)
  pieces, weights, prompt = [], [], []
  for text, learn in _chat_segments(ex, tokenizer):
    ids = _encode(tokenizer, text)
    w = [float(learn)] * len(ids)
    if learn:  # the turn's pieces up to its end-of-turn piece; the framing after it is context
      ends = [i for i, t in enumerate(ids) if t in stops]
      if ends:
        w = [1.0] * (ends[0] + 1) + [0.0] * (len(ids) - ends[0] - 1)
      prompt = list(pieces)  # the context before this (so far last) assistant turn
    pieces += ids
    weights += w
  return Encoded(np.asarray(pieces, np.int32), np.asarray(weights, np.float32), prompt)


def _chat_segments(ex: Example, tokenizer) -> list[tuple[str, bool]]:
  """The rendered conversation cut into (text, is the assistant's) segments: each assistant
  turn is what rendering it adds to the conversation before it with the generation prompt."""
  from jaxbert import chat_template  # pylint: disable=g-import-not-at-top
  from jaxbert.generate import special_tokens  # pylint: disable=g-import-not-at-top
  template = getattr(tokenizer, "chat_template", None)
  if not template:
    raise UserError(f"{ex.where}: a \"messages\" example needs the model's chat template, and "
                    "this model's tokenizer has none; write {\"prompt\", \"completion\"} lines")
  special = special_tokens(tokenizer)
  render = lambda msgs, gen: chat_template.render(template, msgs, add_generation_prompt=gen,
                                                  special_tokens=special)
  segments, done = [], ""
  for i, m in enumerate(ex.messages):
    if m["role"] != "assistant":
      continue
    before, after = render(ex.messages[:i], True), render(ex.messages[:i + 1], False)
    if not before.startswith(done) or not after.startswith(before):
      raise UserError(f"{ex.where}: the chat template does not render this conversation turn "
                      "by turn (a turn changes the text before it), so the assistant's pieces "
                      "cannot be told apart; write {\"prompt\", \"completion\"} lines")
    segments += [(before[len(done):], False), (after[len(before):], True)]
    done = after
  return segments


@dataclasses.dataclass
class Item:
  """One example as trained: inputs s_0..s_{n-1}, targets s_1..s_n and their weights."""

  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray


def items(examples: list[Example], tokenizer, seq_len: int, stops) -> tuple[list, list, dict]:
  """(items, generation prompts, counts) of `examples`; an example longer than a row is
  cut to it, one left without a piece to learn is skipped (both counted)."""
  out, prompts = [], []
  counts = {"examples": len(examples), "truncated": 0, "skipped": 0}
  for ex in examples:
    enc = encode(ex, tokenizer, stops)
    prompts.append(enc.prompt)
    s, w = enc.pieces[:seq_len + 1], enc.weights[:seq_len + 1]
    if len(enc.pieces) > seq_len + 1:
      counts["truncated"] += 1
    if len(s) < 2 or not w[1:].any():
      counts["skipped"] += 1
      continue
    out.append(Item(s[:-1], s[1:], w[1:]))
  return out, prompts, counts


# ----------------------------------------------------------------------------- packed rows


class InstructRows:
  """Packed rows by (epoch, index): the random-access interface of
  jaxbert.data.clm_data.LMRows (num_examples, locate, example), so
  jaxbert.pretrain.StepBatches batches them unchanged. shuffle=False keeps the plan's
  order (held-out rows)."""

  def __init__(self, items_: list[Item], seq_len: int, pad_id: int, seed: int,
               shuffle: bool = True):
    if not items_:
      raise ValueError("no items to pack")
    self.items, self.seq_len, self.pad_id = items_, seq_len, pad_id
    self.seed, self.shuffle = seed, shuffle
    self.plan = pack_lengths(np.asarray([len(i.inputs) for i in items_]), seq_len, seq_len)
    self._orders: dict[int, np.ndarray] = {}

  def with_seed(self, seed: int) -> "InstructRows":
    """The same rows in another seed's epoch orders (a sweep trial's)."""
    other = copy.copy(self)
    other.seed, other._orders = seed, {}
    return other

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

  def row_items(self, epoch: int, index: int) -> np.ndarray:
    return self.plan[int(self.order(epoch)[index])]

  def example(self, epoch: int, index: int) -> dict[str, np.ndarray]:
    return self.pack([self.items[int(i)] for i in self.row_items(epoch, index)])

  def pack(self, row_items: list[Item]) -> dict[str, np.ndarray]:
    t = self.seq_len
    row = {"input_ids": np.full(t, self.pad_id, np.int32), "targets": np.zeros(t, np.int32),
           "loss_weights": np.zeros(t, np.float32), "segment_ids": np.zeros(t, np.int32),
           "positions": np.zeros(t, np.int32), "attention_mask": np.zeros(t, np.int32)}
    at = 0
    for k, item in enumerate(row_items):
      n = len(item.inputs)
      row["input_ids"][at:at + n] = item.inputs
      row["targets"][at:at + n] = item.targets
      row["loss_weights"][at:at + n] = item.weights
      row["segment_ids"][at:at + n] = k + 1
      row["positions"][at:at + n] = np.arange(n)
      row["attention_mask"][at:at + n] = 1
      at += n
    return row

  def empty_row(self) -> dict[str, np.ndarray]:
    return self.pack([])

  def efficiency(self) -> float:
    """Real pieces per row slot."""
    return sum(len(i.inputs) for i in self.items) / (len(self.plan) * self.seq_len)
