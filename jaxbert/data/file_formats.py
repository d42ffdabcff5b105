"""Parsers of the user's task files, one split file each, into a `LocalSource`.

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
  (`is_impossible`, or no answers) are recognised by themselves. Every answer's
  text must be the context's text at its `answer_start`.

Every error names the file and line (or JSON path) and says how to fix it. Bytes
that are not UTF-8 are replaced and counted, not fatal; a file that is clearly not
text (NUL bytes, mostly undecodable) is refused. An empty label is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

from jaxbert.data import utf8
from jaxbert.errors import UserError


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


def _read_text(file: str) -> str:
  """The file as text; bytes that are not UTF-8 are replaced by U+FFFD and counted."""
  try:
    with open(file, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise UserError(f"{file}: no such file") from None
  problem = utf8.binary_problem(file)
  if problem:
    raise UserError(f"{file} is not a text file: {problem}")
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
    if label is not None and not label.strip():
      raise UserError(f"{file}:{line}: the label is empty; give every row a label (a file "
                      "without a label column is read as unlabeled)")
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


def _check_answer(context: str, text: str, start: int, file: str, where: str,
                  qid: str) -> None:
  """UserError unless `text` is the context at `start`: training would otherwise point
  at a span the data did not give."""
  if text and start >= 0 and context[start:start + len(text)] == text:
    return
  found = context[start:start + len(text)] if start >= 0 else ""
  raise UserError(f"{file}: {where} of question id {qid!r}: answer text {text!r} is not at "
                  f"answer_start={start} (the context, {len(context)} characters, has "
                  f"{found!r} there); fix answer_start (a character offset into the "
                  "context) or the text")


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
        for n, (text, start) in enumerate(zip(texts, starts)):
          if not impossible:
            _check_answer(context, text, start, file, f"{qwhere}.answers[{n}]", qid)
        version_2 |= impossible
        examples.append({"id": qid, "title": str(title), "context": context,
                         "question": question, "is_impossible": impossible,
                         "answers": {"text": [] if impossible else texts,
                                     "answer_start": [] if impossible else starts}})
  return LocalSource(file, fmt, split, "qa", examples, version_2=version_2)


PARSERS = {"tsv": _parse_table, "csv": _parse_table, "conll": _parse_conll,
            "squad": _parse_squad}
