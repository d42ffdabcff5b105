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

import jax
import numpy as np

from jaxbert import finetune
from jaxbert import heads
from jaxbert.data import prediction_inputs as inputs
from jaxbert.data import scoring
from jaxbert.data.tasks import TaskData
from jaxbert.errors import UserError
from jaxbert.progress import progress_bar
from jaxbert.run_task import RunTask, load_run_split, run_task, run_workdir

log = logging.getLogger("jaxbert")

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


# --- encoding, running, decoding ----------------------------------------------------------

def read_inputs(path: str, fmt: str, task: RunTask, pretokenized: bool = False) -> list[dict]:
  """The rows of an input file, read as the task's head reads its formats."""
  if not os.path.isfile(path):
    raise UserError(f"--input {path}: no such file")
  rows = heads.get(task.spec.kind).read_rows(path, fmt, task, pretokenized)
  if not rows:
    raise UserError(f"--input {path} holds no examples")
  return rows


def encode(task: RunTask, tokenizer, rows: list[dict]) -> TaskData:
  """The rows as a TaskData, encoded as `tasks.load_task` encodes the task's splits."""
  head = heads.get(task.spec.kind)
  examples = [head.blank_example(r) for r in rows]
  arrays, metadata, more = head.encode(examples, task.spec, tokenizer, task.max_seq_len,
                                       task.options)
  return TaskData(spec=task.spec, split="predict", max_seq_len=task.max_seq_len, arrays=arrays,
                  examples=examples, metadata=metadata,
                  counts={"examples": len(rows), **more}, options=task.options)


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
  return heads.get(data.spec.kind).host_outputs(outputs)


def _records(data: TaskData, rows: list[dict], decoded: list[dict],
             columns: list[str]) -> list[dict]:
  head = heads.get(data.spec.kind)
  return [head.predict_record(i, row, d, data.spec, columns)
          for i, (row, d) in enumerate(zip(rows, decoded))]


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
  from jaxbert.defaults import is_instruct  # pylint: disable=g-import-not-at-top
  from jaxbert.run_task import read_run_config  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(workdir, "config.json")) and is_instruct(read_run_config(workdir)):
    raise UserError(f"--checkpoint {checkpoint} is an instruction-tuned decoder; it answers "
                    f"prompts: jaxbert generate --checkpoint {checkpoint} --input FILE")
  ckpt = read_checkpoint(checkpoint, "--checkpoint")
  if batch_size is not None and batch_size < 1:
    raise UserError(f"--batch-size must be positive, got {batch_size}")
  if (input_file is None) == (split is None):
    raise UserError("give either --input FILE or --split NAME (a split of the run's task)")
  task = run_task(workdir, ckpt.tokenizer)
  if split is not None:
    data = load_run_split(workdir, task.config, split, ckpt.tokenizer)
    rows = [heads.get(data.spec.kind).split_row(ex) for ex in data.examples]
    if not rows:
      raise UserError(f"split {split!r} of {task.name} holds no examples")
  else:
    fmt = inputs.input_format(input_file, input_fmt, heads.get(task.spec.kind))
    rows = read_inputs(input_file, fmt, task, pretokenized)
    data = encode(task, ckpt.tokenizer, rows)
  model = finetune.build_model(ckpt.config, task.spec, task.pooling)
  head = ckpt.params.get("classifier") or ckpt.params.get("qa_outputs") or {}
  width = np.shape(head.get("bias", ()))[0] if head else 0
  if spec_width(task) != width:
    raise UserError(f"--checkpoint {checkpoint}: its head has {width} outputs but the task "
                    f"{task.name} has {spec_width(task)}; was the task's data changed since?")
  outputs = model_outputs(model, ckpt.params, data, batch_size or task.batch_size, progress)
  records = _records(data, rows, scoring.decode_predictions(data, outputs),
                     inputs.text_columns(task))
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
  return heads.get(task.spec.kind).num_outputs(task.spec)
