"""The user's own task files, read through tfds builders like the named tasks.

A local task is a directory with one file per split, named `<split>.<ext>`
(`train.tsv`, `dev.tsv`, `test.tsv`, ...), or a single file that serves every split
name. The split "validation" (fine-tuning's default evaluation split) is the file
`validation.*`, else `dev.*`, else `valid.*` (CoNLL-2003's name); "dev" likewise.
Formats (from the extension, or the `format` option): tsv / csv (`.tsv`, `.csv`),
conll (`.conll`, `.txt`) and squad (`.json`); `jaxbert.data.file_formats` describes
each layout and parses it.

Label set: the `labels=[...]` option (config.data.options.labels), in that order; otherwise every label that
the split named "train" uses, sorted (so train and eval runs agree). Without
either, loading fails and asks for `labels`.

Each parsed split is written once as array_record under
`<data_dir>/jaxbert_local_<format>/<hash>/`, the hash covering the file bytes,
the options and the label set, so an edited file is prepared again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxbert.data.file_formats import PARSERS, LocalSource, option_key
from jaxbert.errors import UserError
from jaxbert.progress import QuietPreparation, quiet_tfds_when_logging

# The file names a split may have, first found wins: fine-tuning evaluates on
# "validation" by default, which a task folder usually calls dev (GLUE) or valid (CoNLL).
SPLIT_FILES = {"validation": ("validation", "dev", "valid"),
               "dev": ("dev", "validation", "valid")}
_EXTENSIONS = {".tsv": "tsv", ".csv": "csv", ".json": "squad", ".conll": "conll",
               ".txt": "conll"}
FORMATS = ("tsv", "csv", "conll", "squad")
# Options each format understands (anything else goes back to the caller).
FORMAT_OPTIONS = {
    "tsv": ("format", "labels", "kind", "text_column", "text_pair_column", "label_column",
            "quoting"),
    "csv": ("format", "labels", "kind", "text_column", "text_pair_column", "label_column",
            "quoting"),
    "conll": ("format", "labels", "token_column", "tag_column"),
    "squad": ("format",),
}


# ---------------------------------------------------------------------------
# Finding the file of a split.


def resolve_file(path: str, split_base: str, fmt: str | None) -> tuple[str, str]:
  """(file, format) holding split `split_base` of the local task at `path`."""
  if fmt is not None and fmt not in FORMATS:
    raise UserError(f"{option_key('format')}={fmt!r} is not one of {list(FORMATS)}")
  if os.path.isfile(path):
    return path, fmt or _format_of(path)
  if not os.path.isdir(path):
    raise UserError(f"{path}: no such file or directory (a task name or a local "
                    "task directory/file was expected)")
  exts = [e for e, f in _EXTENSIONS.items() if fmt is None or f == fmt]
  for name in SPLIT_FILES.get(split_base, (split_base,)):
    found = [os.path.join(path, name + e) for e in exts
             if os.path.isfile(os.path.join(path, name + e))]
    if found:
      break
  if not found:
    present = sorted(n for n in os.listdir(path)
                     if os.path.splitext(n)[1] in _EXTENSIONS)
    names = "|".join(SPLIT_FILES.get(split_base, (split_base,)))
    raise UserError(f"{path}: no file for split {split_base!r} (looked for "
                    f"{{{names}}}{{{','.join(exts)}}}); files there: {present}")
  if len(found) > 1:
    raise UserError(f"{path}: several files for split {split_base!r} ({found}); "
                    f"choose one with {option_key('format')}=...")
  return found[0], fmt or _format_of(found[0])


def _format_of(file: str) -> str:
  ext = os.path.splitext(file)[1].lower()
  if ext not in _EXTENSIONS:
    raise UserError(f"{file}: cannot tell the format from the extension {ext!r}; "
                    f"set {option_key('format')}= one of {list(FORMATS)}")
  return _EXTENSIONS[ext]


# ---------------------------------------------------------------------------
# tfds builders over the parsed examples.


class _LocalBuilder(QuietPreparation, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes one parsed split file as array_record; examples keep file order."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source: LocalSource, **kwargs):
    self._source = source
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Unshuffled: examples (and written predictions) keep the file's order.
    return tfds.core.DatasetInfo(builder=self, description=self._source.path,
                                 features=self._features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self._source.split: self._generate_examples()}

  def _generate_examples(self):
    for i, example in enumerate(self._source.examples):
      yield i, example


class JaxbertLocalText(_LocalBuilder, skip_registration=True):
  """Text (pair) classification or regression rows from TSV/CSV."""

  def _features(self):
    src = self._source
    label = (tfds.features.Scalar(np.float32) if src.kind == "regression"
             else tfds.features.ClassLabel(names=list(src.label_names)))
    return tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                       "text_pair": tfds.features.Text(),
                                       "label": label})


class JaxbertLocalConll(_LocalBuilder, skip_registration=True):
  """Sentences of words with IOB2 tags, like tfds conll2003."""

  def _features(self):
    names = list(self._source.label_names)
    return tfds.features.FeaturesDict({
        "tokens": tfds.features.Sequence(tfds.features.Text()),
        "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=names))})


class JaxbertLocalSquad(_LocalBuilder, skip_registration=True):
  """SQuAD questions, like tfds squad/v2.0."""

  def _features(self):
    text = tfds.features.Text
    return tfds.features.FeaturesDict({
        "id": text(), "title": text(), "context": text(), "question": text(),
        "is_impossible": tfds.features.Scalar(np.bool_),
        "answers": tfds.features.Sequence(
            {"text": text(), "answer_start": tfds.features.Scalar(np.int32)})})


_BUILDERS = {"tsv": JaxbertLocalText, "csv": JaxbertLocalText, "conll": JaxbertLocalConll,
             "squad": JaxbertLocalSquad}


def _label_set(path, fmt, options) -> tuple[str, ...] | None:
  """The configured labels, else those of the train file (sorted); None if n/a."""
  if fmt == "squad" or options.get("kind") == "regression":
    return None
  if "labels" in options:
    labels = tuple(str(x) for x in options["labels"])
    if len(set(labels)) != len(labels) or not labels:
      raise UserError(f"{option_key('labels')}={list(labels)}: must be a non-empty list "
                      "without repeats")
    return labels
  try:
    train_file, _ = resolve_file(path, "train", fmt)
  except UserError:
    raise UserError(f"{path}: no train file to collect the label set from; set "
                    f"{option_key('labels')}=[...] (in the order the model's outputs "
                    "use)") from None
  train = PARSERS[fmt](train_file, fmt, "train", options, None)
  if fmt == "conll":
    found = {t for ex in train.examples for t in ex["ner"]}
  else:
    found = {ex["label"] for ex in train.examples if ex["label"] != -1}
  if not found:
    raise UserError(f"{train_file}: has no labels to collect (no column "
                    f"{options.get('label_column', 'label')!r}: set "
                    f"{option_key('label_column')}=NAME, or {option_key('labels')}=[...])")
  return tuple(sorted(found))


def prepare_local(path: str, split_base: str, data_dir: str | None,
                  options: dict[str, Any]) -> tuple[tfds.core.DatasetBuilder, LocalSource]:
  """Parses split `split_base` of the local task at `path` and writes it for tfds.

  Returns the prepared builder (read it with `builder.as_data_source(split)`)
  and the parsed source (its kind, label set, whether it has a text pair).
  """
  if not re.fullmatch(r"\w+", split_base):
    raise UserError(f"split {split_base!r}: local split names are file names made of "
                    "letters, digits and '_' (train, dev, test, ...)")
  file, fmt = resolve_file(path, split_base, options.get("format"))
  unknown = sorted(set(options) - set(FORMAT_OPTIONS[fmt]))
  if unknown:
    raise UserError(f"config.data.options {unknown} do not apply to {fmt} files; known: "
                    f"{list(FORMAT_OPTIONS[fmt])}")
  labels = _label_set(path, fmt, options)
  source = PARSERS[fmt](file, fmt, split_base, options, labels)
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    digest.update(f.read())
  digest.update(json.dumps([fmt, split_base, sorted(options.items()), labels],
                           default=str).encode())
  config = tfds.core.BuilderConfig(name=digest.hexdigest()[:20],
                                   description=os.path.abspath(file))
  builder = _BUILDERS[fmt](source=source, config=config, data_dir=data_dir)
  if not builder.is_prepared():
    quiet_tfds_when_logging()
    builder.download_and_prepare(file_format="array_record")
  return builder, source
