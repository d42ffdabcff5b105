"""Reading the inputs of `jaxbert predict`: tables and text lines for sentence tasks,
sentences (text lines or CoNLL) for NER, SQuAD JSON or JSON lines for QA. Each task's
head (jaxbert/heads/) says which formats fit it and which reader makes its rows."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING

from jaxbert.data.file_formats import PARSERS
from jaxbert.embed import read_lines
from jaxbert.errors import UserError

if TYPE_CHECKING:
  from jaxbert.run_task import RunTask

log = logging.getLogger("jaxbert")

INPUT_FORMATS = ("tsv", "csv", "text", "conll", "squad", "jsonl")
_BY_EXTENSION = {".tsv": "tsv", ".csv": "csv", ".conll": "conll", ".json": "squad",
                 ".jsonl": "jsonl"}
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # words and single punctuation marks


def _looks_like_conll(path: str) -> bool:
  """Word-per-line columns ending in IOB tags (or -DOCSTART-), rather than sentences."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = [line.split() for line in f.read(1 << 16).splitlines() if line.strip()][:50]
  except OSError:
    return False
  return bool(lines) and (lines[0][0] == "-DOCSTART-" or all(
      len(cols) >= 2 and re.fullmatch(r"O|[BIES]-\S+", cols[-1]) for cols in lines))

def input_format(path: str, fmt: str | None, head) -> str:
  """The input's format: `fmt`, else from the extension (text otherwise), checked against the
  formats the task's head reads."""
  if fmt is not None and fmt not in INPUT_FORMATS:
    raise UserError(f"--format {fmt!r} is not one of {list(INPUT_FORMATS)}")
  if fmt is None and "conll" in head.input_formats and _looks_like_conll(path):
    fmt = "conll"  # e.g. CoNLL-2003's own valid.txt
  fmt = fmt or _BY_EXTENSION.get(os.path.splitext(path)[1].lower(), "text")
  if fmt not in head.input_formats:
    raise UserError(f"--input {path}: a {fmt} file does not fit this {head.kind} task; give "
                    f"one of: {', '.join(head.input_formats)} (see jaxbert predict --help)")
  return fmt

def _header(path: str, fmt: str) -> list[str]:
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    first = f.readline().rstrip("\r\n")
  return [c.strip().strip('"') for c in first.split("\t" if fmt == "tsv" else ",")]

def text_columns(task: RunTask) -> list[str]:
  """The names of the task's text columns: a local task's column options (text, text_pair
  by default), a tfds task's field names (as in the GLUE files)."""
  opts = task.file_options
  names = ((list(task.spec.columns) or [opts.get("text_column", "text"),
                                        opts.get("text_pair_column", "text_pair")])
           if task.local else list(task.spec.text_fields))
  return names[:len(task.spec.text_fields)]

def table_rows(path: str, fmt: str, task: RunTask) -> list[dict]:
  """Rows of a TSV/CSV, read by the run's own table parser, as {"texts": (...)}."""
  names = text_columns(task)
  header = _header(path, fmt)
  missing = [n for n in names if n not in header]
  if missing:
    raise UserError(f"{path}:1: no column {missing[0]!r} in the header {header}; this task "
                    f"reads its text from the column(s) {names}, as the run did; rename the "
                    "header, or give one text per line in a .txt file")
  options = {"text_column": names[0], "label_column": "\0",  # labels are not read
             "text_pair_column": names[1] if len(names) == 2 else "",
             "quoting": task.file_options.get("quoting", "auto")}
  rows = PARSERS[fmt](path, fmt, "predict", options, None).examples
  return [{"texts": tuple([r["text"], r["text_pair"]][:len(names)])} for r in rows]

def text_line_rows(path: str, task: RunTask) -> list[dict]:
  lines, bad = read_lines(path)
  if bad:
    log.warning("%s: %d lines held bytes that are not UTF-8; they were replaced by U+FFFD",
                path, bad)
  fields = task.spec.text_fields
  if len(fields) == 1:
    return [{"texts": (line,)} for line in lines]
  out = []
  for n, line in enumerate(lines, start=1):
    if line.count("\t") != 1:
      raise UserError(f"{path}:{n}: this task reads text pairs ({', '.join(fields)}); write "
                      "each line as first<TAB>second (one tab), or give a TSV with a header")
    out.append({"texts": tuple(line.split("\t"))})
  return out

def sentence_rows(path: str, fmt: str, task: RunTask, pretokenized: bool) -> list[dict]:
  """NER inputs: {"tokens", "text", "spans"}, spans being each word's characters in text."""
  if fmt == "conll":
    opts = {k: task.file_options[k] for k in ("token_column", "tag_column")
            if k in task.file_options}
    sentences = [ex["tokens"] for ex in PARSERS["conll"](path, "conll", "predict", opts,
                                                         None).examples]
    return [joined(words) for words in sentences]
  else:
    lines, _ = read_lines(path)
  out = []
  for line in lines:
    found = re.finditer(r"\S+" if pretokenized else _WORD, line)
    spans = [(m.start(), m.end()) for m in found]
    out.append({"tokens": [line[a:b] for a, b in spans], "text": line, "spans": spans})
  return out

def joined(words: list[str]) -> dict:
  """A sentence given as words, as its text with single spaces between them."""
  spans, at = [], 0
  for w in words:
    spans.append((at, at + len(w)))
    at += len(w) + 1
  return {"tokens": list(words), "text": " ".join(words), "spans": spans}

def question_rows(path: str, fmt: str) -> list[dict]:
  if fmt == "squad":
    rows = PARSERS["squad"](path, "squad", "predict", {}, None).examples
  else:
    rows = []
    for n, line in enumerate(read_lines(path)[0], start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise UserError(f"{path}:{n}: not a JSON object ({e})") from None
      bad = [k for k in ("question", "context")
             if not isinstance(row, dict) or not isinstance(row.get(k), str)]
      if bad:
        raise UserError(f"{path}:{n}: needs the text field(s) {bad}; each line is "
                        '{"question": ..., "context": ..., "id": optional}')
      rows.append({"id": str(row.get("id", n)), "title": "", "question": row["question"],
                   "context": row["context"]})
  return [{"id": r["id"], "title": r.get("title", ""), "question": r["question"],
           "context": r["context"], "answers": [], "answer_starts": [], "is_impossible": False}
          for r in rows]
