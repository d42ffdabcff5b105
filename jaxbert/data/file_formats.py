"""Parsers of the user's task files, one split file each, into a `LocalSource`.

Options are `config.data.options.<name>` (and errors name them so):

- "tsv" / "csv" (`.tsv`, `.csv`): a header row naming the columns, then one
  example per row. The text is column `text` (with `text_pair` beside it for a
  pair task), else a known pair of columns (sentence1/sentence2, question/sentence,
  question1/question2, premise/hypothesis), else `sentence`; `text_column` and
  `text_pair_column` name others (`text_pair_column=""`: single texts). A table
  holding another text column besides the chosen one is refused rather than read as
  single texts. `label_column` (default `label`); a file without it is unlabeled (a
  test set). `kind="regression"` makes the label a float. Other columns are ignored.
  Quoting (`quoting`): "auto" (default) reads CSV files with the csv module's rules
  (a field wrapped in quotes, inner quotes doubled) and TSV files so when every quote
  mark in the file belongs to such a field (what pandas and csv writers produce);
  a TSV whose quote marks sit inside unquoted text (GLUE's own files) is read as
  plain text, quote marks kept, unless it also has CSV-quoted fields: then the first
  stray quote is reported. "csv" always decodes quoting, "none" never does.
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
import re
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
  columns: tuple[str, ...] = ()  # a table's text columns, as its header names them


def option_key(name: str) -> str:
  """How a local-file option is set: its full config key."""
  return f"config.data.options.{name}"


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


QUOTINGS = ("auto", "csv", "none")
# Column pairs whose names say which text comes first (GLUE's and the tfds tasks' names).
TEXT_PAIRS = (("text", "text_pair"), ("sentence1", "sentence2"), ("question", "sentence"),
              ("question1", "question2"), ("premise", "hypothesis"), ("text_a", "text_b"))
_TEXT_NAMES = {n for pair in TEXT_PAIRS for n in pair} | {"context", "passage"}


def _quoted_field(delim: str) -> re.Pattern:
  """A whole field in CSV quoting: wrapped in quotes, inner quotes doubled."""
  d = re.escape(delim)
  return re.compile(rf'(?:^|(?<={d}))"(?:[^"]|"")*"(?={d}|\r?$)', re.M)


def _decode_quotes(text: str, file: str, fmt: str, quoting: str) -> bool:
  """Whether the table's fields are read with CSV quoting (see the module docstring)."""
  if quoting not in QUOTINGS:
    raise UserError(f"{option_key('quoting')}={quoting!r} is not one of {list(QUOTINGS)}")
  if quoting != "auto" or fmt == "csv":
    return quoting != "none"
  if '"' not in text:
    return False
  pattern = _quoted_field("\t")
  # The text with every quoted field blanked (same length, so positions still match).
  stray = pattern.sub(lambda m: " " * len(m.group()), text).find('"')
  if stray < 0:
    return True  # every quote mark belongs to a quoted field
  csv_style = next((m for m in pattern.finditer(text)
                    if re.search(r'""|\t|\n', m.group()[1:-1])), None)
  if csv_style is None:
    return False  # quote marks are text (GLUE's files); read them as they are
  line, first = (text.count("\n", 0, i) + 1 for i in (stray, csv_style.start()))
  raise UserError(f"{file}:{line}: a quote mark outside a quoted field, in a file that uses CSV "
                  f"quoting elsewhere (line {first}: a field wrapped in quotes with inner quotes "
                  "doubled); fix the field (wrap it in quotes, double its inner quotes), or set "
                  f"{option_key('quoting')}=none to keep every quote mark as text")


def _table_rows(file: str, fmt: str, quoting: str):
  """Yields the header, then (line number, row) per non-empty row."""
  text = _read_text(file)
  decode = _decode_quotes(text, file, fmt, quoting)
  delim = "\t" if fmt == "tsv" else ","
  lines = io.StringIO(text, newline="")
  if decode:
    reader = csv.reader(lines, delimiter=delim, strict=True)
  else:
    reader = csv.reader(lines, delimiter=delim, quoting=csv.QUOTE_NONE)
  sep = "tab-separated" if fmt == "tsv" else "comma-separated"
  try:
    header = next(reader, None)
    if header is None:
      raise UserError(f"{file}: empty file (a header row naming the columns is needed)")
    yield header
    for row in reader:
      if not row or row == [""]:
        continue
      if len(row) != len(header):
        raise UserError(f"{file}:{reader.line_num}: {len(row)} {sep} columns but the "
                        f"header has {len(header)}; fix that row (a stray "
                        f"{'tab' if fmt == 'tsv' else 'comma or quote'}?)")
      yield reader.line_num, row
  except csv.Error as e:
    raise UserError(f"{file}:{reader.line_num}: unbalanced CSV quoting ({e}): a field that "
                    "starts with a quote must end with one, inner quotes doubled; fix the "
                    f"row, or set {option_key('quoting')}=none to read quote marks as "
                    "text") from None


def text_columns(header: list[str], options: dict, file: str) -> tuple[str, ...]:
  """The table's text column(s): one name, or two for a pair (see the module docstring)."""
  text, pair = options.get("text_column"), options.get("text_pair_column")
  where = f"{file}:1: the header {header}"
  if text is None:
    found = [p for p in TEXT_PAIRS if p[0] in header and p[1] in header]
    if pair is None and len(found) > 1:
      raise UserError(f"{where} has several pairs of text columns {found}; set "
                      f"{option_key('text_column')} and {option_key('text_pair_column')}")
    if pair is None and found:
      return found[0]
    text = next((n for n in ("text", "sentence") if n in header), None)
    if text is None:
      raise UserError(f"{where} has no column 'text'; set {option_key('text_column')}=NAME "
                      f"(and {option_key('text_pair_column')}=NAME for pairs of texts)")
  if text not in header:
    raise UserError(f"{where} has no column {text!r} ({option_key('text_column')}); set it "
                    "to the column holding the text")
  if pair == "":
    return (text,)
  if pair is not None:
    if pair not in header:
      raise UserError(f"{where} has no column {pair!r} ({option_key('text_pair_column')}); "
                      "set it to the column holding the second text, or to '' for single "
                      "texts")
    return text, pair
  partner = dict(TEXT_PAIRS).get(text)
  if partner in header:
    return text, partner
  label = options.get("label_column", "label")
  others = [n for n in header if n not in (text, label) and n.lower() in _TEXT_NAMES]
  if others:
    raise UserError(f"{where} has the text column {others[0]!r} besides "
                    f"{option_key('text_column')}={text!r}; set "
                    f"{option_key('text_pair_column')}={others[0]} for pairs of texts, or "
                    f"{option_key('text_pair_column')}='' to read single texts")
  return (text,)


def _parse_table(file, fmt, split, options, label_names) -> LocalSource:
  kind = options.get("kind", "classification")
  if kind not in ("classification", "regression"):
    raise UserError(f"{option_key('kind')}={kind!r}: a {fmt} task is 'classification' or "
                    "'regression'")
  rows = _table_rows(file, fmt, options.get("quoting", "auto"))
  header = next(rows)
  columns = text_columns(header, options, file)
  index = [header.index(c) for c in columns]
  label_name = options.get("label_column", "label")
  label_at = header.index(label_name) if label_name in header else None
  known = set(label_names or ())
  examples = []
  for line, row in rows:
    label = None if label_at is None else row[label_at]
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
                        f"({option_key('kind')}='regression')") from None
    elif label_names is None:
      value = label  # collecting the label set
    elif label in known:
      value = label
    else:
      raise UserError(f"{file}:{line}: label {label!r} is not in the label set "
                      f"{list(label_names)}; fix the file or list it in "
                      f"{option_key('labels')}=[...]")
    texts = [row[i] for i in index]
    examples.append({"text": texts[0], "text_pair": texts[1] if len(texts) > 1 else "",
                     "label": value})
  return LocalSource(file, fmt, split, kind, examples, tuple(label_names or ()),
                     has_pair=len(columns) == 2, columns=columns)


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
      raise UserError(f"{file}:{lineno}: {option_key('token_column')}={token_col} / "
                      f"{option_key('tag_column')}={tag_col} do not exist in a row of {width} "
                      "columns") from None
    if known is not None and tag not in known:
      raise UserError(f"{file}:{lineno}: tag {tag!r} is not in the label set "
                      f"{list(label_names)}; fix the file or list it in "
                      f"{option_key('labels')}=[...]")
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
