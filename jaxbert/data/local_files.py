"""The user's own task files, read through tfds builders like the named tasks.

A local task is a directory with one file per split, named `<split>.<ext>`
(`train.tsv`, `dev.tsv`, ...), or a single file that serves every split name.
Formats (from the extension, or the `format` option):

- "tsv" / "csv" (`.tsv`, `.csv`): a header row naming the columns, then one
  example per row. Columns `text`, optional `text_pair`, `label` by default; the
  options `text_column`, `text_pair_column` and `label_column` rename them (for
  the GLUE SST-2 files: text_column="sentence"). Other columns are ignored. A
  file without the label column is unlabeled (a test set). `kind="regression"`
  makes the label a float.
- "conll" (`.conll`, `.txt`): one word per line with whitespace-separated
  columns, the word first and the NER tag (IOB2) last (`token_column`,
  `tag_column` choose others), a blank line between sentences, `-DOCSTART-`
  lines skipped.
- "squad" (`.json`): the SQuAD v1.1/v2.0 JSON layout. v2.0 questions
  (`is_impossible`, or no answers) are recognised by themselves.

Label set: the `labels=[...]` option, in that order; otherwise every label that
the split named "train" uses, sorted (so train and eval runs agree). Without
either, loading fails and asks for `labels`.

Each parsed split is written once as array_record under
`<data_dir>/jaxbert_local_<format>/<hash>/`, the hash covering the file bytes,
the options and the label set, so an edited file is prepared again.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxbert.data import utf8
from jaxbert.errors import UserError
from jaxbert.progress import quiet_tfds_when_logging

logger = logging.getLogger(__name__)

_EXTENSIONS = {".tsv": "tsv", ".csv": "csv", ".json": "squad", ".conll": "conll",
               ".txt": "conll"}
FORMATS = ("tsv", "csv", "conll", "squad")
# Options each format understands (anything else goes back to the caller).
FORMAT_OPTIONS = {
    "tsv": ("format", "labels", "kind", "text_column", "text_pair_column", "label_column"),
    "csv": ("format", "labels", "kind", "text_column", "text_pair_column", "label_column"),
    "conll": ("format", "labels", "token_column", "tag_column"),
    "squad": ("format",),
}


@dataclasses.dataclass
class LocalSource:
  """One parsed split file: its examples in file order and what they hold."""

  path: str
  format: str
  split: str
  kind: str  # classification | regression | token_classification | qa
  examples: list[dict[str, Any]]
  label_names: tuple[str, ...] = ()
  has_pair: bool = False
  version_2: bool = False


# ---------------------------------------------------------------------------
# Finding the file of a split.


def resolve_file(path: str, split_base: str, fmt: str | None) -> tuple[str, str]:
  """(file, format) holding split `split_base` of the local task at `path`."""
  if fmt is not None and fmt not in FORMATS:
    raise UserError(f"format={fmt!r} is not one of {list(FORMATS)}")
  if os.path.isfile(path):
    return path, fmt or _format_of(path)
  if not os.path.isdir(path):
    raise UserError(f"{path}: no such file or directory (a task name or a local "
                    "task directory/file was expected)")
  exts = [e for e, f in _EXTENSIONS.items() if fmt is None or f == fmt]
  found = [os.path.join(path, split_base + e) for e in exts
           if os.path.isfile(os.path.join(path, split_base + e))]
  if not found:
    present = sorted(n for n in os.listdir(path)
                     if os.path.splitext(n)[1] in _EXTENSIONS)
    raise UserError(f"{path}: no file for split {split_base!r} (looked for "
                    f"{split_base}{{{','.join(exts)}}}); files there: {present}")
  if len(found) > 1:
    raise UserError(f"{path}: several files for split {split_base!r} ({found}); "
                    "choose one with format=...")
  return found[0], fmt or _format_of(found[0])


def _format_of(file: str) -> str:
  ext = os.path.splitext(file)[1].lower()
  if ext not in _EXTENSIONS:
    raise UserError(f"{file}: cannot tell the format from the extension {ext!r}; "
                    f"give format= one of {list(FORMATS)}")
  return _EXTENSIONS[ext]


def _read_text(file: str) -> str:
  """The file as text; bytes that are not UTF-8 are replaced by U+FFFD and counted."""
  try:
    with open(file, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise UserError(f"{file}: no such file") from None
  # utf-8-sig: GLUE's MRPC files start with a byte order mark.
  text, bad = utf8.decode(raw, "utf-8-sig")
  utf8.warn_undecodable(file, bad)
  return text


# ---------------------------------------------------------------------------
# TSV / CSV.


def _table_rows(file: str, fmt: str, columns: dict[str, str], required: set[str]):
  """Yields the {role: column} found, then (line number, {role: value}) per row."""
  lines = io.StringIO(_read_text(file), newline="")
  if fmt == "tsv":
    # GLUE TSVs contain bare quotes inside sentences: no quoting for TSV.
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
  else:
    reader = csv.reader(lines)
  try:
    header = next(reader)
  except StopIteration:
    raise UserError(f"{file}: empty file (a header row naming the columns is "
                    "needed)") from None
  index = {}
  for role, name in columns.items():
    if name in header:
      index[role] = header.index(name)
    elif role in required:
      raise UserError(f"{file}:1: no column {name!r} in the header {header}; set "
                      f"{role}_column= to the right column name")
  yield index  # the caller learns which optional columns exist
  sep = "tab-separated" if fmt == "tsv" else "comma-separated"
  for row in reader:
    if not row or row == [""]:
      continue
    if len(row) != len(header):
      raise UserError(f"{file}:{reader.line_num}: {len(row)} {sep} columns but the "
                      f"header has {len(header)}; fix that row (a stray "
                      f"{'tab' if fmt == 'tsv' else 'comma or quote'}?)")
    yield reader.line_num, {role: row[i] for role, i in index.items()}


def _parse_table(file, fmt, split, options, label_names) -> LocalSource:
  kind = options.get("kind", "classification")
  if kind not in ("classification", "regression"):
    raise UserError(f"kind={kind!r}: a {fmt} task is 'classification' or 'regression'")
  columns = {"text": options.get("text_column", "text"),
             "text_pair": options.get("text_pair_column", "text_pair"),
             "label": options.get("label_column", "label")}
  # The label column may be absent (an unlabeled test file); an explicitly named
  # pair column may not.
  required = {"text"} | ({"text_pair"} if "text_pair_column" in options else set())
  rows = _table_rows(file, fmt, columns, required)
  index = next(rows)
  known = set(label_names or ())
  examples = []
  for line, row in rows:
    label = row.get("label")
    if label is None:
      value = float("nan") if kind == "regression" else -1
    elif kind == "regression":
      try:
        value = float(label)
      except ValueError:
        raise UserError(f"{file}:{line}: label {label!r} is not a number "
                        "(kind='regression')") from None
    elif label_names is None:
      value = label  # collecting the label set
    elif label in known:
      value = label
    else:
      raise UserError(f"{file}:{line}: label {label!r} is not in the label set "
                      f"{list(label_names)}; fix the file or list it in labels=[...]")
    examples.append({"text": row["text"], "text_pair": row.get("text_pair", ""),
                     "label": value})
  return LocalSource(file, fmt, split, kind, examples, tuple(label_names or ()),
                     has_pair="text_pair" in index)


# ---------------------------------------------------------------------------
# CoNLL columns.


def _parse_conll(file, fmt, split, options, label_names) -> LocalSource:
  token_col = int(options.get("token_column", 0))
  tag_col = int(options.get("tag_column", -1))
  known = set(label_names) if label_names is not None else None
  examples, tokens, tags, width = [], [], [], None
  # split("\n"), not splitlines(): words may hold characters that splitlines
  # treats as line breaks (U+2028, form feed).
  lines = _read_text(file).split("\n")
  for lineno, line in enumerate(lines + [""], start=1):
    cols = line.split()
    if cols and cols[0] == "-DOCSTART-":
      continue
    if not cols:
      if tokens:
        examples.append({"tokens": tokens, "ner": tags})
      tokens, tags = [], []
      continue
    width = width or len(cols)
    if len(cols) != width or width < 2:
      raise UserError(f"{file}:{lineno}: {len(cols)} columns where this file's rows have "
                      f"{width} (at least a word and a tag, whitespace-separated)")
    try:
      token, tag = cols[token_col], cols[tag_col]
    except IndexError:
      raise UserError(f"{file}:{lineno}: token_column={token_col} / tag_column="
                      f"{tag_col} do not exist in a row of {width} columns") from None
    if known is not None and tag not in known:
      raise UserError(f"{file}:{lineno}: tag {tag!r} is not in the label set "
                      f"{list(label_names)}; fix the file or list it in labels=[...]")
    tokens.append(token)
    tags.append(tag)
  return LocalSource(file, fmt, split, "token_classification", examples,
                     tuple(label_names or ()))


# ---------------------------------------------------------------------------
# SQuAD JSON.


def _field(obj, key, kind, file, where):
  if not isinstance(obj, dict) or key not in obj:
    raise UserError(f"{file}: {where} has no {key!r} (SQuAD JSON layout expected)")
  if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise UserError(f"{file}: {where}.{key} should be a {names}")
  return obj[key]


def _parse_squad(file, fmt, split, options, label_names) -> LocalSource:
  del options, label_names
  try:
    doc = json.loads(_read_text(file))
  except json.JSONDecodeError as e:
    raise UserError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
  examples, version_2 = [], False
  for a, article in enumerate(_field(doc, "data", list, file, "the top level")):
    where = f"data[{a}]"
    # Articles without a title still need a key for the article-level split.
    title = article.get("title", f"article {a}") if isinstance(article, dict) else ""
    for p, para in enumerate(_field(article, "paragraphs", list, file, where)):
      pwhere = f"{where}.paragraphs[{p}]"
      context = _field(para, "context", str, file, pwhere)
      for q, qa in enumerate(_field(para, "qas", list, file, pwhere)):
        qwhere = f"{pwhere}.qas[{q}]"
        question = _field(qa, "question", str, file, qwhere)
        qid = str(_field(qa, "id", (str, int), file, qwhere))
        answers = _field(qa, "answers", list, file, qwhere) if "answers" in qa else []
        texts, starts = [], []
        for n, ans in enumerate(answers):
          texts.append(_field(ans, "text", str, file, f"{qwhere}.answers[{n}]"))
          starts.append(_field(ans, "answer_start", int, file, f"{qwhere}.answers[{n}]"))
        impossible = bool(qa.get("is_impossible", False)) or not texts
        version_2 |= impossible
        examples.append({"id": qid, "title": str(title), "context": context,
                         "question": question, "is_impossible": impossible,
                         "answers": {"text": [] if impossible else texts,
                                     "answer_start": [] if impossible else starts}})
  return LocalSource(file, fmt, split, "qa", examples, version_2=version_2)


_PARSERS = {"tsv": _parse_table, "csv": _parse_table, "conll": _parse_conll,
            "squad": _parse_squad}


# ---------------------------------------------------------------------------
# tfds builders over the parsed examples.


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
      raise UserError(f"labels={list(labels)}: must be a non-empty list without repeats")
    return labels
  try:
    train_file, _ = resolve_file(path, "train", fmt)
  except UserError:
    raise UserError(f"{path}: no train file to collect the label set from; give "
                    "labels=[...] (in the order the model's outputs use)") from None
  train = _PARSERS[fmt](train_file, fmt, "train", options, None)
  if fmt == "conll":
    found = {t for ex in train.examples for t in ex["ner"]}
  else:
    found = {ex["label"] for ex in train.examples if ex["label"] != -1}
  if not found:
    raise UserError(f"{train_file}: has no labels to collect; give labels=[...]")
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
    raise UserError(f"options {unknown} do not apply to {fmt} files; known: "
                    f"{list(FORMAT_OPTIONS[fmt])}")
  labels = _label_set(path, fmt, options)
  source = _PARSERS[fmt](file, fmt, split_base, options, labels)
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
