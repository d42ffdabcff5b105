"""Heads: everything that differs between kinds of task, one module per kind.

A head kind says how its model is built on the encoder, its training loss, the width of
its output layer (for FLOPs), how raw records become examples and model inputs, how the
model's outputs over a split are decoded into predictions, how those are scored, and
how one prediction is written for people to read. Fine-tuning (jaxbert/finetune.py),
scoring (jaxbert/data/scoring.py), task loading (jaxbert/data/tasks.py) and
`jaxbert predict` look the kind up here instead of switching on it, so a new head is
one module and one `register` call.

    sentence.py   classification and regression on the pooled (or mean) encoder output
    tokens.py     token classification (NER), scored per entity
    span_qa.py    extractive question answering (start and end of the answer span)
    mlm_nsp.py    pre-training's masked-LM + next-sentence heads: loss and FLOPs
"""

from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxbert.errors import UserError


class Head(abc.ABC):
  """The interface of a fine-tuning head kind (see the module docstring); every method
  without a body is abstract, so a head that lacks one cannot be instantiated."""

  kind: str = ""
  title: str = ""  # the kind in messages
  label_keys: tuple[str, ...] = ()  # batch keys holding the targets
  options: dict[str, Any] = {}  # load_task options of this kind, with their defaults
  hf_architecture: str = ""  # the transformers class, where the parameters leave it open

  @abc.abstractmethod
  def model(self, cfg, spec, pooling: str = "cls") -> nn.Module:
    """The encoder with this head on top."""

  @abc.abstractmethod
  def loss(self, outputs: dict[str, jax.Array], batch) -> tuple[jax.Array, dict]:
    """(mean loss over real targets, metrics) for one batch."""

  def num_outputs(self, spec) -> int:
    """The output layer's width (FLOPs)."""
    return spec.num_labels

  @abc.abstractmethod
  def normalize(self, raw: dict[str, Any], spec, where: str) -> dict[str, Any] | None:
    """One tfds record -> an example of plain Python values (None: skip it)."""

  @abc.abstractmethod
  def encode(self, examples, spec, tokenizer, max_seq_len: int, settings: dict):
    """Examples -> (model input arrays with targets, metadata, counts)."""

  def host_outputs(self, outputs: dict) -> dict:
    """The model's outputs as the decoder takes them."""
    return outputs

  @abc.abstractmethod
  def decode(self, task_data, outputs: dict) -> list[dict[str, Any]]:
    """Outputs over a whole split (rows in order) -> one prediction per example."""

  @abc.abstractmethod
  def score(self, task_data, decoded: list[dict[str, Any]]) -> dict[str, float]:
    """The task's metrics (fractions in [0, 1]) over a whole split's predictions."""

  @abc.abstractmethod
  def record(self, index: int, example: dict, decoded: dict, spec) -> dict[str, Any]:
    """One line of predictions.jsonl: the input, the prediction and the gold answer."""

  # --- jaxbert predict: new inputs (jaxbert/data/prediction_inputs.py reads them)
  input_formats: tuple[str, ...] = ()

  @abc.abstractmethod
  def read_rows(self, path: str, fmt: str, task, pretokenized: bool) -> list[dict]:
    """An input file's rows (as `split_row` gives a split's examples)."""

  @abc.abstractmethod
  def split_row(self, example: dict) -> dict:
    """A loaded split's example as an input row."""

  @abc.abstractmethod
  def blank_example(self, row: dict) -> dict:
    """An input row as an example without a gold answer, for `encode`."""

  @abc.abstractmethod
  def predict_record(self, index: int, row: dict, decoded: dict, spec,
                     columns: list[str]) -> dict[str, Any]:
    """One line of `jaxbert predict`'s output."""


def text(x) -> str:
  """tfds text (bytes; str or 0-d arrays under tfds.testing.mock_data) -> str."""
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def output(outputs: dict, key: str, shape: tuple):
  """outputs[key] as numpy, checked against `shape` (None = any)."""
  if key not in outputs:
    raise ValueError(f"outputs lack {key!r} (have {sorted(outputs)})")
  x = np.asarray(outputs[key])
  if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
    raise ValueError(f"outputs[{key!r}] has shape {x.shape}, expected {shape} (None = any)")
  return x


_HEADS: dict[str, Head] = {}


def register(head: Head) -> Head:
  _HEADS[head.kind] = head
  return head


def get(kind: str) -> Head:
  _load()
  if kind not in _HEADS:
    raise UserError(f"unknown task kind {kind!r}; known: {sorted(_HEADS)}")
  return _HEADS[kind]


def kinds() -> list[str]:
  _load()
  return sorted(_HEADS)


def _load():
  # Imported on first use: the head modules import the data modules, which import us.
  from jaxbert.heads import sentence, span_qa, tokens  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
