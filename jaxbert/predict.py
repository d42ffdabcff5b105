"""`jaxbert predict`: a fine-tuned run labels new text, decoded as its evaluation decodes.

Inputs by task kind (the format from the extension, or `input_format`):
  classification / regression: a TSV/CSV with the task's text column(s) (the columns the
    run read: `text`/`text_pair` or its `text_column`/`text_pair_column` options for a
    local task, e.g. `sentence1`/`sentence2` for glue/mrpc), or a text file with one text
    per line (a pair as `first<TAB>second`);
  NER: a text file, one sentence per line, split into words at spaces and punctuation
    (`pretokenized`: at whitespace only), or a CoNLL file (word first on each line; a
    .txt file in that layout, tags last, is read as CoNLL);
  QA: SQuAD JSON, or JSON lines with "question" and "context" (and optionally "id").
Or `split`: a split of the run's own task (tfds or its local files: "validation", "test"),
read exactly as the run's evaluation reads its split.
Each example is encoded by the same functions as the run's data (`jaxbert.data.encoding`,
`jaxbert.data.qa`), run through the jitted model in fixed-shape batches (the run's
max_seq_len and batch size, so the numbers equal those its evaluation computed) and
decoded by `scoring.decode_predictions`, the evaluation's decoding. One JSON line per
example, in input order, goes to the output file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np

from jaxbert import finetune
from jaxbert.data import encoding, qa, scoring
from jaxbert.data.file_formats import PARSERS
from jaxbert.data.tasks import TaskData
from jaxbert.embed import read_lines
from jaxbert.errors import UserError
from jaxbert.metrics import iob2_entities
from jaxbert.progress import progress_bar
from jaxbert.run_task import RunTask, load_run_split, run_task, run_workdir

log = logging.getLogger("jaxbert")

INPUT_FORMATS = ("tsv", "csv", "text", "conll", "squad", "jsonl")
_BY_EXTENSION = {".tsv": "tsv", ".csv": "csv", ".conll": "conll", ".json": "squad",
                 ".jsonl": "jsonl"}
_FITS = {"classification": ("tsv", "csv", "text"), "regression": ("tsv", "csv", "text"),
         "token_classification": ("text", "conll"), "qa": ("squad", "jsonl")}
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # words and single punctuation marks
_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclasses.dataclass
class PredictReport:
  output: str
  task: str
  kind: str
  num_examples: int
  truncated: int
  counts: dict

  def __str__(self) -> str:
    s = f"wrote {self.num_examples} {self.kind} predictions ({self.task}) to {self.output}"
    return s + (f"; {self.truncated} inputs were truncated" if self.truncated else "")


def _looks_like_conll(path: str) -> bool:
  """Word-per-line columns ending in IOB tags (or -DOCSTART-), rather than sentences."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = [line.split() for line in f.read(1 << 16).splitlines() if line.strip()][:50]
  except OSError:
    return False
  return bool(lines) and (lines[0][0] == "-DOCSTART-" or all(
      len(cols) >= 2 and re.fullmatch(r"O|[BIES]-\S+", cols[-1]) for cols in lines))


def input_format(path: str, fmt: str | None, kind: str) -> str:
  """The input's format: `fmt`, else from the extension (text otherwise), checked against the
  task kind."""
  if fmt is not None and fmt not in INPUT_FORMATS:
    raise UserError(f"--format {fmt!r} is not one of {list(INPUT_FORMATS)}")
  if fmt is None and kind == "token_classification" and _looks_like_conll(path):
    fmt = "conll"  # e.g. CoNLL-2003's own valid.txt
  fmt = fmt or _BY_EXTENSION.get(os.path.splitext(path)[1].lower(), "text")
  if fmt not in _FITS[kind]:
    raise UserError(f"--input {path}: a {fmt} file does not fit this {kind} task; give "
                    f"one of: {', '.join(_FITS[kind])} (see jaxbert predict --help)")
  return fmt


# --- reading inputs -----------------------------------------------------------------

def _header(path: str, fmt: str) -> list[str]:
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    first = f.readline().rstrip("\r\n")
  return [c.strip().strip('"') for c in first.split("\t" if fmt == "tsv" else ",")]


def text_columns(task: RunTask) -> list[str]:
  """The names of the task's text columns: a local task's column options (text, text_pair
  by default), a tfds task's field names (as in the GLUE files)."""
  opts = task.file_options
  names = ([opts.get("text_column", "text"), opts.get("text_pair_column", "text_pair")]
           if task.local else list(task.spec.text_fields))
  return names[:len(task.spec.text_fields)]


def _table(path: str, fmt: str, task: RunTask) -> list[dict]:
  """Rows of a TSV/CSV, read by the run's own table parser, as {"texts": (...)}."""
  names = text_columns(task)
  header = _header(path, fmt)
  missing = [n for n in names if n not in header]
  if missing:
    raise UserError(f"{path}:1: no column {missing[0]!r} in the header {header}; this task "
                    f"reads its text from the column(s) {names}, as the run did; rename the "
                    "header, or give one text per line in a .txt file")
  options = {"text_column": names[0], "label_column": "\0"}  # labels are not read
  if len(names) == 2:
    options["text_pair_column"] = names[1]
  rows = PARSERS[fmt](path, fmt, "predict", options, None).examples
  return [{"texts": tuple([r["text"], r["text_pair"]][:len(names)])} for r in rows]


def _text_lines(path: str, task: RunTask) -> list[dict]:
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


def _sentences(path: str, fmt: str, task: RunTask, pretokenized: bool) -> list[dict]:
  """NER inputs: {"tokens", "text", "spans"}, spans being each word's characters in text."""
  if fmt == "conll":
    opts = {k: task.file_options[k] for k in ("token_column", "tag_column")
            if k in task.file_options}
    sentences = [ex["tokens"] for ex in PARSERS["conll"](path, "conll", "predict", opts,
                                                         None).examples]
    return [_joined(words) for words in sentences]
  else:
    lines, _ = read_lines(path)
  out = []
  for line in lines:
    found = re.finditer(r"\S+" if pretokenized else _WORD, line)
    spans = [(m.start(), m.end()) for m in found]
    out.append({"tokens": [line[a:b] for a, b in spans], "text": line, "spans": spans})
  return out


def _joined(words: list[str]) -> dict:
  """A sentence given as words, as its text with single spaces between them."""
  spans, at = [], 0
  for w in words:
    spans.append((at, at + len(w)))
    at += len(w) + 1
  return {"tokens": list(words), "text": " ".join(words), "spans": spans}


def split_rows(data: TaskData) -> list[dict]:
  """The examples of a split of the run's task, as `read_inputs` gives a file's."""
  kind = data.spec.kind
  if kind in ("classification", "regression"):
    return [{"texts": ex["texts"]} for ex in data.examples]
  if kind == "token_classification":
    return [_joined(ex["tokens"]) for ex in data.examples]
  return data.examples


def _questions(path: str, fmt: str) -> list[dict]:
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


def read_inputs(path: str, fmt: str, task: RunTask, pretokenized: bool = False) -> list[dict]:
  if not os.path.isfile(path):
    raise UserError(f"--input {path}: no such file")
  kind = task.spec.kind
  if kind in ("classification", "regression"):
    rows = _table(path, fmt, task) if fmt in ("tsv", "csv") else _text_lines(path, task)
  elif kind == "token_classification":
    rows = _sentences(path, fmt, task, pretokenized)
  else:
    rows = _questions(path, fmt)
  if not rows:
    raise UserError(f"--input {path} holds no examples")
  return rows


# --- encoding, running, decoding ----------------------------------------------------------

def encode(task: RunTask, tokenizer, rows: list[dict]) -> TaskData:
  """The rows as a TaskData, encoded as `tasks.load_task` encodes the task's splits."""
  spec, t = task.spec, task.max_seq_len
  counts, metadata = {"examples": len(rows)}, {}
  if spec.kind in ("classification", "regression"):
    examples = [{"texts": r["texts"]} for r in rows]
    arrays, counts["truncated"] = encoding.encode_texts([r["texts"] for r in rows], tokenizer, t)
  elif spec.kind == "token_classification":
    examples = [{"tokens": r["tokens"], "tags": [0] * len(r["tokens"])} for r in rows]
    arrays, more = encoding.encode_words(examples, tokenizer, t)
    counts.update(more)
  else:
    examples = rows
    arrays, metadata, more = qa.prepare_qa(rows, tokenizer, t,
                                           doc_stride=int(task.options["doc_stride"]),
                                           max_query_len=int(task.options["max_query_len"]))
    counts.update(more)
  return TaskData(spec=spec, split="predict", max_seq_len=t, arrays=arrays, examples=examples,
                  metadata=metadata, counts=counts, options=task.options)


def model_outputs(model, params, data: TaskData, batch_size: int,
                  progress: bool = True) -> dict[str, np.ndarray]:
  """The model's outputs for every row of `data`, in order, as evaluation collects them
  (fixed-shape batches, the last one padded by repeating its last row)."""
  fn = jax.jit(lambda p, batch: model.apply({"params": p}, batch, deterministic=True))
  n = data.num_features
  params = jax.device_put(params)
  chunks, pending = [], None
  for start in progress_bar(range(0, n, batch_size), total=-(-n // batch_size), desc="predict",
                            unit="batch", enabled=progress):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    result = fn(params, {k: data.arrays[k][idx] for k in _INPUTS})
    if pending is not None:  # fetched after the next batch is dispatched
      chunks.append(jax.tree.map(np.asarray, pending))
    pending = result
  chunks.append(jax.tree.map(np.asarray, pending))
  outputs = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}
  if data.spec.kind == "regression":
    outputs = {"predictions": outputs["logits"][:, 0]}
  return outputs


def _records(data: TaskData, rows: list[dict], decoded: list[dict],
             columns: list[str]) -> list[dict]:
  spec, out = data.spec, []
  for i, (row, d) in enumerate(zip(rows, decoded)):
    if spec.kind in ("classification", "regression"):
      rec = {"index": i, **dict(zip(columns, row["texts"]))}
      if spec.kind == "classification":
        rec["prediction"] = spec.label_names[d["prediction"]]
        rec["probabilities"] = dict(zip(spec.label_names, d["probabilities"]))
      else:
        rec["prediction"] = d["prediction"]
    elif spec.kind == "token_classification":
      entities = [{"type": kind, "text": row["text"][row["spans"][a][0]:row["spans"][b][1]],
                   "start": row["spans"][a][0], "end": row["spans"][b][1]}
                  for kind, a, b in iob2_entities(d["prediction"])]
      rec = {"index": i, "text": row["text"], "tokens": row["tokens"], "tags": d["prediction"],
             "entities": entities}
    else:
      rec = {"id": row["id"], "question": row["question"], "answer": d["prediction"],
             "start": d["start"], "end": d["end"], "score": d["score"]}
      if spec.version_2:
        rec["null_score"] = d["null_score"]
    out.append(rec)
  return out


def predict_file(checkpoint: str, input_file: str | None, output_file: str, *,
                 split: str | None = None, input_fmt: str | None = None,
                 batch_size: int | None = None, pretokenized: bool = False,
                 progress: bool = True) -> PredictReport:
  """Writes the fine-tuned `checkpoint`'s prediction for every example of `input_file`, or
  of split `split` of the run's own task (read as its evaluation reads a split)."""
  from jaxbert.handover import read_checkpoint  # pylint: disable=g-import-not-at-top
  if not os.path.exists(checkpoint):
    raise UserError(f"--checkpoint {checkpoint}: no such file or directory")
  workdir = run_workdir(checkpoint)
  if workdir is None:
    raise UserError(f"--checkpoint {checkpoint}: give a fine-tuning run's workdir or one of its "
                    "checkpoints/<step> folders")
  ckpt = read_checkpoint(checkpoint, "--checkpoint")
  if batch_size is not None and batch_size < 1:
    raise UserError(f"--batch-size must be positive, got {batch_size}")
  if (input_file is None) == (split is None):
    raise UserError("give either --input FILE or --split NAME (a split of the run's task)")
  task = run_task(workdir, ckpt.tokenizer)
  if split is not None:
    data = load_run_split(workdir, task.config, split, ckpt.tokenizer)
    rows = split_rows(data)
    if not rows:
      raise UserError(f"split {split!r} of {task.name} holds no examples")
  else:
    fmt = input_format(input_file, input_fmt, task.spec.kind)
    rows = read_inputs(input_file, fmt, task, pretokenized)
    data = encode(task, ckpt.tokenizer, rows)
  model = finetune.build_model(ckpt.config, task.spec, task.pooling)
  head = ckpt.params.get("classifier") or ckpt.params.get("qa_outputs") or {}
  width = np.shape(head.get("bias", ()))[0] if head else 0
  if spec_width(task) != width:
    raise UserError(f"--checkpoint {checkpoint}: its head has {width} outputs but the task "
                    f"{task.name} has {spec_width(task)}; was the task's data changed since?")
  outputs = model_outputs(model, ckpt.params, data, batch_size or task.batch_size, progress)
  records = _records(data, rows, scoring.decode_predictions(data, outputs), text_columns(task))
  truncated = int(data.counts.get("truncated", 0) + data.counts.get("questions_truncated", 0))
  if data.counts.get("truncated"):
    log.warning("%s: %d inputs were longer than the run's max_seq_len=%d pieces and were "
                "truncated", input_file or split, data.counts["truncated"], task.max_seq_len)
  if data.counts.get("questions_truncated"):
    log.warning("%s: %d questions were longer than the run's max_query_len=%s pieces and were "
                "cut", input_file or split, data.counts["questions_truncated"],
                task.options.get("max_query_len"))
  output_file = os.path.abspath(output_file)
  os.makedirs(os.path.dirname(output_file), exist_ok=True)
  tmp = output_file + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  os.replace(tmp, output_file)
  return PredictReport(output=output_file, task=task.name, kind=task.spec.kind,
                       num_examples=len(records), truncated=truncated, counts=data.counts)


def spec_width(task: RunTask) -> int:
  """The head's output width for the task (classes, 1 for regression, 2 for QA)."""
  return {"regression": 1, "qa": 2}.get(task.spec.kind, task.spec.num_labels)
