"""Fine-tuning tasks: what they are, their data as fixed-shape arrays, their scores.

`load_task` reads one split of a task (a tfds dataset by name, or the user's own
files, see `jaxbert.data.local_files`) and encodes it into numpy arrays of
sequence length T (`jaxbert.data.encoding`):

- classification / regression: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`,
  the longer text cut first when the pair does not fit (as the original BERT);
  `label` (N,) int32 (-1 = unlabeled) or float32 (nan = unlabeled).
- token_classification (NER): every word encoded by itself; its tag sits on
  its first piece (`token_labels`, `token_label_weights` = 1), other pieces
  and padding have weight 0. Words that do not fit are counted, and predicted
  as "O" when decoding.
- qa (SQuAD): overlapping context windows, see `jaxbert.data.qa`.

`jaxbert.data.scoring` turns model outputs for the whole split into predictions,
the task's metrics and a predictions file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxbert import heads
from jaxbert.data import local_files
from jaxbert.data import qa
from jaxbert.defaults import DATA_DIR_ENV
from jaxbert.errors import UserError

KINDS = ("classification", "regression", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a task is: its inputs, labels and how it is scored.

  num_labels is the classifier width: classes, 1 for regression, tags for
  NER, 2 (start, end) for QA. `metrics` names the scores `evaluate` reports;
  `main_metric` is the one to select checkpoints by.
  """

  name: str
  kind: str
  num_labels: int
  label_names: tuple[str, ...]
  text_fields: tuple[str, ...]
  label_field: str
  main_metric: str
  higher_is_better: bool
  metrics: tuple[str, ...]
  train_split: str = "train"
  eval_split: str = "validation"
  version_2: bool = False  # SQuAD v2.0: questions may have no answer
  columns: tuple[str, ...] = ()  # a local table's text columns, as its header names them


@dataclasses.dataclass(frozen=True)
class _Entry:
  kind: str
  text_fields: tuple[str, ...]
  label_field: str
  metrics: tuple[str, ...]
  eval_split: str = "validation"
  version_2: bool = False


_PAIR = ("sentence1", "sentence2")
# The first metric is the main one (what the BERT paper reports for the task).
TFDS_TASKS = {
    "glue/cola": _Entry("classification", ("sentence",), "label", ("mcc", "accuracy")),
    "glue/sst2": _Entry("classification", ("sentence",), "label", ("accuracy",)),
    "glue/mrpc": _Entry("classification", _PAIR, "label", ("f1", "accuracy")),
    "glue/qqp": _Entry("classification", ("question1", "question2"), "label",
                       ("f1", "accuracy")),
    "glue/stsb": _Entry("regression", _PAIR, "label", ("spearman", "pearson")),
    "glue/mnli": _Entry("classification", ("premise", "hypothesis"), "label",
                        ("accuracy",), eval_split="validation_matched"),
    "glue/qnli": _Entry("classification", ("question", "sentence"), "label", ("accuracy",)),
    "glue/rte": _Entry("classification", _PAIR, "label", ("accuracy",)),
    "glue/wnli": _Entry("classification", _PAIR, "label", ("accuracy",)),
    "conll2003": _Entry("token_classification", ("tokens",), "ner",
                        ("f1", "precision", "recall"), eval_split="dev"),
    "squad/v1.1": _Entry("qa", ("question", "context"), "answers", ("f1", "exact_match")),
    "squad/v2.0": _Entry("qa", ("question", "context"), "answers", ("f1", "exact_match"),
                         version_2=True),
}

@dataclasses.dataclass
class TaskData:
  """One encoded split.

  arrays: the model inputs and targets, one row per feature (an example, or
    a QA window); see the module docstring.
  examples: the split's examples, decoded to Python values, in order.
  metadata: what decoding needs besides the arrays (QA windows).
  counts: examples, features, truncation and skip counts.
  options: the QA decoding options in effect.
  """

  spec: TaskSpec
  split: str
  max_seq_len: int
  arrays: dict[str, np.ndarray]
  examples: list[dict[str, Any]]
  metadata: dict[str, Any]
  counts: dict[str, int]
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_features(self) -> int:
    return int(self.arrays["input_ids"].shape[0])


# ---------------------------------------------------------------------------
# Reading examples.


def _read_all(source) -> list[dict[str, Any]]:
  n = len(source)
  try:
    return [r for lo in range(0, n, 4096)
            for r in source.__getitems__(list(range(lo, min(n, lo + 4096))))]
  except TypeError:  # tfds.testing.mock_data's sources cannot read in batches
    return [source[i] for i in range(n)]


def _names(feature) -> tuple[str, ...]:
  if isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  return tuple(feature.names) if isinstance(feature, tfds.features.ClassLabel) else ()


def _make_spec(name, kind, label_names, text_fields, label_field, metric_names,
               eval_split="validation", version_2=False) -> TaskSpec:
  num_labels = {"regression": 1, "qa": 2}.get(kind, len(label_names))
  return TaskSpec(name=name, kind=kind, num_labels=num_labels, label_names=label_names,
                  text_fields=tuple(text_fields), label_field=label_field,
                  main_metric=metric_names[0], higher_is_better=True,
                  metrics=tuple(metric_names), eval_split=eval_split, version_2=version_2)


def tfds_task_spec(name: str, data_dir: str | None = None) -> TaskSpec:
  """The spec of a registered tfds task, label names from the dataset's features."""
  if name not in TFDS_TASKS:
    raise UserError(f"unknown task {name!r}; known: {sorted(TFDS_TASKS)} (or give the "
                    "path of a local task directory or file)")
  entry = TFDS_TASKS[name]
  features = tfds.builder(name, data_dir=data_dir).info.features
  labels = _names(features[entry.label_field]) if entry.kind != "qa" else ()
  return _make_spec(name, entry.kind, labels, entry.text_fields, entry.label_field,
                    entry.metrics, entry.eval_split, entry.version_2)


def _tfds_source(name: str, split: str, data_dir: str | None):
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except ValueError as e:  # unknown split or bad slice
    builder = tfds.builder(name, data_dir=data_dir)
    raise UserError(f"split {split!r} of {name}: {e} (splits: "
                    f"{sorted(builder.info.splits)})") from None
  except Exception as e:
    if not tfds.builder(name, data_dir=data_dir).is_prepared():
      raise UserError(f"tfds dataset {name} is not prepared in data_dir={data_dir!r}; "
                      "prepare it with file_format='array_record' or point data_dir at "
                      "a directory holding it") from None
    raise UserError(f"cannot read {name} split {split!r}: {e}") from e


def _local_spec(path: str, src: local_files.LocalSource) -> TaskSpec:
  fields = ("text", "text_pair") if src.has_pair else ("text",)
  if src.kind == "classification":
    names = ("accuracy", "f1", "mcc") if len(src.label_names) == 2 else ("accuracy", "mcc")
    spec = _make_spec(path, src.kind, src.label_names, fields, "label", names)
    return dataclasses.replace(spec, columns=src.columns)
  if src.kind == "regression":
    spec = _make_spec(path, src.kind, (), fields, "label", ("spearman", "pearson"))
    return dataclasses.replace(spec, columns=src.columns)
  if src.kind == "token_classification":
    return _make_spec(path, src.kind, src.label_names, ("tokens",), "ner",
                      ("f1", "precision", "recall"))
  return _make_spec(path, "qa", (), ("question", "context"), "answers",
                    ("f1", "exact_match"), version_2=src.version_2)


# ---------------------------------------------------------------------------
# Where a task's data is.


def tfds_data_dir(task: str, data_dir: str) -> str:
  """The checked tfds data_dir of the tfds task `task`: config.data.data_dir, whose default
  is $JAXBERT_DATA_DIR. Named by key and variable when unset or missing."""
  if not data_dir:
    raise UserError(f"config.data.data_dir is empty: the tfds task {task} is read from a folder "
                    f"of prepared tfds datasets; set --config.data.data_dir=DIR or the "
                    f"environment variable {DATA_DIR_ENV}=DIR (or give your own files: "
                    "--config.data.task=path/to/folder)")
  origin = f" (from {DATA_DIR_ENV})" if data_dir == os.environ.get(DATA_DIR_ENV) else ""
  if not os.path.isdir(data_dir):
    raise UserError(f"config.data.data_dir={data_dir}{origin}: no such directory")
  if not os.path.isdir(os.path.join(data_dir, task)):
    raise UserError(f"config.data.data_dir={data_dir}{origin} holds no prepared {task} (no "
                    f"{os.path.join(data_dir, task)} folder); prepare it there with `tfds build "
                    f"{task} --data_dir {data_dir} --file_format array_record`, or point "
                    "data_dir at a folder that holds it")
  return data_dir


def task_data_dir(task: str, data_dir: str, workdir: str) -> str:
  """Where `load_task` reads a tfds task (its checked data_dir) or prepares local files
  (always WORKDIR/tfds: never into a data_dir others read)."""
  if task in TFDS_TASKS:
    return tfds_data_dir(task, data_dir)
  if not os.path.exists(task):
    raise UserError(f"config.data.task={task}: no such file or directory, nor a tfds task "
                    f"(known: {', '.join(sorted(TFDS_TASKS))})")
  return os.path.join(workdir, "tfds")


# ---------------------------------------------------------------------------
# Loading.


def load_task(name_or_path: str, *, split: str, tokenizer, max_seq_len: int,
              data_dir: str | None = None, **options) -> TaskData:
  """Reads and encodes one split of a task.

  name_or_path: a name in `TFDS_TASKS` (read from `data_dir` with
    tfds.data_source), else a local task directory or file (see
    `jaxbert.data.local_files`; its prepared array_record goes to `data_dir`,
    tfds's default directory when None). A registered name wins over a
    same-named directory: write `./conll2003` for the directory.
  split: a tfds split string; slices such as "train[:10%]" work.
  options: QA only: doc_stride (128), max_query_len (64), max_answer_len (30),
    n_best_size (20), null_score_threshold (0.0, v2.0), article_split ((lo, hi):
    keep the questions of the articles in that range of the split, see
    `qa.article_split_indices`; train on (0.0, 0.8) and evaluate on (0.8, 1.0)
    of squad/v1.1 "validation" to share no context). Local files: the options
    of `local_files` (format, labels, kind, column names).
  """
  if max_seq_len < 4:
    raise UserError(f"max_seq_len={max_seq_len} is too small (at least 4)")
  # Options of a kind of head (QA's windows and decoding, its defaults in Head.options);
  # the rest describe local files.
  owners = {k: kind for kind in heads.kinds() for k in heads.get(kind).options}
  head_options = {k: options.pop(k) for k in list(options) if k in owners}
  if name_or_path in TFDS_TASKS:
    if options:
      raise UserError(f"config.data.options {sorted(options)} do not apply to the tfds "
                      f"task {name_or_path}")
    spec = tfds_task_spec(name_or_path, data_dir)
    source = _tfds_source(name_or_path, split, data_dir)
    where = f"{name_or_path} {split}"
  else:
    match = re.fullmatch(r"(\w+)(\[[^\]]*\])?", split)
    if not match:
      raise UserError(f"split {split!r}: a local split is a file name, optionally "
                      "sliced, e.g. 'train' or 'train[:10%]'")
    builder, src = local_files.prepare_local(name_or_path, match.group(1), data_dir,
                                             options)
    spec = _local_spec(name_or_path, src)
    try:
      source = builder.as_data_source(split=split)
    except ValueError as e:
      raise UserError(f"split {split!r} of {src.path}: {e}") from None
    where = src.path
  head = heads.get(spec.kind)
  foreign = sorted(set(head_options) - set(head.options))
  if foreign:
    raise UserError(f"options {foreign} apply to {heads.get(owners[foreign[0]]).title} tasks "
                    f"only, not to {spec.name} ({spec.kind})")
  raws = _read_all(source)
  examples = [head.normalize(r, spec, f"{where} example {i}") for i, r in enumerate(raws)]
  counts = {"empty_skipped": sum(ex is None for ex in examples)}
  examples = [ex for ex in examples if ex is not None]
  settings = dict(head.options, **head_options)
  if settings.get("article_split") is not None:
    keep = qa.article_split_indices([ex["title"] for ex in examples],
                                    settings["article_split"])
    examples = [examples[i] for i in keep]
    counts["articles"] = len({ex["title"] for ex in examples})
  counts["examples"] = len(examples)
  arrays, metadata, more = head.encode(examples, spec, tokenizer, max_seq_len, settings)
  counts.update(more)
  return TaskData(spec=spec, split=split, max_seq_len=max_seq_len, arrays=arrays,
                  examples=examples, metadata=metadata, counts=counts, options=settings)
