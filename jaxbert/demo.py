"""`jaxbert demo`: pre-train a small BERT on the standard library's docstrings, then fine-tune.

Needs no network and no data: everything comes from the Python installation running it.

  1. Corpus. Every standard-library module's docstrings (read from its source with
     `ast`, nothing imported) become one document: the module docstring, then each
     class's and function's, one paragraph per line, a blank line between documents
     (the original BERT layout). Written to WORKDIR/corpus.txt.
  2. Pre-training. A BERT-Tiny-sized model with its own sentencepiece tokenizer,
     MLM + NSP, through the same `run()` as `jaxbert pretrain` (WORKDIR/pretrain).
  3. Task. Which area of the library (networking, concurrency, testing, ...) does a
     docstring paragraph come from? Split by module: the dev modules are in neither
     the training examples nor the pre-training corpus. WORKDIR/task/{train,dev}.tsv.
  4. Fine-tuning, twice, with identical settings: from the pre-trained encoder
     (WORKDIR/finetune_pretrained) and from random initialisation with the same
     architecture and tokenizer (WORKDIR/finetune_random).
  5. A table comparing the two on the dev modules.

`--config.KEY=VALUE` overrides apply to the pre-training config only (e.g.
`--config.train.steps=500`); the fine-tuning runs copy its model group. Running the
demo again with the same workdir reuses every finished step.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
import sysconfig
import time

import numpy as np

from jaxbert.config import ConfigDict, apply_overrides
from jaxbert.errors import UserError

# Folders of the standard library that are not its documented modules (tests, the IDLE
# and Tk GUIs, vendored or private data, build configuration).
_SKIPPED_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "distutils",
    "ensurepip", "site-packages", "dist-packages", "pydoc_data", "encodings", "__pycache__",
    "__phello__"})

# The task's classes: an area of the library and the top-level modules that make it up.
AREAS = {
    "internet": ("email", "http", "urllib", "xml", "xmlrpc", "html", "smtplib", "smtpd",
                 "imaplib", "poplib", "ftplib", "nntplib", "mailbox", "mailcap", "mimetypes",
                 "wsgiref", "cgi", "cgitb", "socket", "ssl", "socketserver", "telnetlib",
                 "ipaddress", "webbrowser", "uu", "quopri", "base64", "binhex"),
    "concurrency": ("asyncio", "concurrent", "multiprocessing", "threading", "queue",
                    "subprocess", "sched", "selectors", "_threading_local", "asyncore",
                    "asynchat", "signal"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "traceback", "cProfile",
                "profile", "pstats", "timeit", "tracemalloc", "tabnanny", "faulthandler"),
    "files": ("os", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "zipfile", "tarfile",
              "gzip", "bz2", "lzma", "filecmp", "fileinput", "stat", "genericpath", "posixpath",
              "ntpath", "_pyio", "io", "csv", "configparser", "netrc", "plistlib", "shelve",
              "dbm", "wave", "aifc", "sunau", "chunk", "zipapp"),
    "numbers": ("_pydecimal", "decimal", "fractions", "statistics", "random", "numbers",
                "datetime", "_strptime", "calendar", "zoneinfo", "colorsys"),
    "language": ("ast", "dis", "inspect", "importlib", "pkgutil", "tokenize", "typing",
                 "types", "dataclasses", "abc", "functools", "code", "codeop", "compileall",
                 "py_compile", "symtable", "pyclbr", "modulefinder", "runpy", "keyword",
                 "token", "opcode", "enum", "copy", "copyreg", "contextlib", "operator",
                 "weakref", "_collections_abc", "collections"),
}
_AREA_OF = {top: area for area, tops in AREAS.items() for top in tops}


@dataclasses.dataclass
class ModuleDocs:
  """One module's docstring paragraphs, in source order."""

  name: str  # dotted, e.g. "email.message"
  paragraphs: list[str]

  @property
  def area(self) -> str | None:
    return _AREA_OF.get(self.name.split(".")[0])


def _paragraphs(docstring: str) -> list[str]:
  """A docstring's paragraphs, each on one line; doctest examples are left out."""
  out = []
  for block in re.split(r"\n\s*\n", docstring):
    lines = [line.strip() for line in block.splitlines()]
    if any(line.startswith(">>>") for line in lines):
      continue
    text = " ".join(" ".join(lines).split())
    if text:
      out.append(text)
  return out


_DEFS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST):
  """The docstrings of `node` and of every class and function inside it, in source order."""
  doc = ast.get_docstring(node) if isinstance(node, _DEFS) else None
  if doc:
    yield doc
  for child in ast.iter_child_nodes(node):
    if not isinstance(child, ast.expr):  # statements (if/try bodies too) may define things
      yield from _docstrings(child)


def stdlib_modules(root: str | None = None) -> list[ModuleDocs]:
  """The documented modules under `root` (the running Python's stdlib), sorted by name."""
  root = root or sysconfig.get_paths()["stdlib"]
  modules = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith((".", "config-"))]
    for filename in files:
      if not filename.endswith(".py") or filename.startswith("test_"):
        continue
      path = os.path.join(folder, filename)
      name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
      name = name.removesuffix(".__init__")
      try:
        with open(path, "rb") as f:
          tree = ast.parse(f.read())
      except (SyntaxError, ValueError, OSError):
        continue  # a broken or unreadable file is simply not part of the corpus
      paragraphs = [p for doc in _docstrings(tree) for p in _paragraphs(doc)]
      if paragraphs:
        modules.append(ModuleDocs(name, paragraphs))
  if not modules:
    raise UserError(f"found no Python sources with docstrings under {root}; the demo builds "
                    "its corpus from the standard library's .py files")
  return sorted(modules, key=lambda m: m.name)


def _stable_order(name: str) -> str:
  """A pseudo-random but fixed sort key (independent of PYTHONHASHSEED)."""
  return hashlib.sha256(name.encode()).hexdigest()


def dev_modules(modules: list[ModuleDocs], dev_fraction: float = 0.25) -> set[str]:
  """Whole modules held out per area, about `dev_fraction` of each area's paragraphs."""
  held = set()
  for area in AREAS:
    members = sorted((m for m in modules if m.area == area), key=lambda m: _stable_order(m.name))
    target = dev_fraction * sum(len(m.paragraphs) for m in members)
    count = 0
    for m in members:
      if count >= target:
        break
      held.add(m.name)
      count += len(m.paragraphs)
  return held


def corpus_text(modules: list[ModuleDocs], held_out: set[str]) -> str:
  """The pre-training corpus: one document per module not held out."""
  docs = ["\n".join(m.paragraphs) for m in modules if m.name not in held_out]
  return "\n\n".join(docs) + "\n"


def task_examples(modules: list[ModuleDocs], held_out: set[str], *, min_words: int = 6,
                  train_per_class: int = 300, dev_per_class: int = 150,
                  seed: int = 0) -> dict[str, list[tuple[str, str]]]:
  """{"train": [(text, area)], "dev": [...]}: paragraphs labelled with their module's area.

  A paragraph that occurs in more than one module (copied docstrings) is left out, so
  no dev text is ever seen in training; each class is capped to keep the set balanced.
  """
  owners: dict[str, set[str]] = {}
  for m in modules:
    for p in m.paragraphs:
      owners.setdefault(p, set()).add(m.name)
  by_split = {"train": {a: [] for a in AREAS}, "dev": {a: [] for a in AREAS}}
  for m in modules:
    if m.area is None:
      continue
    split = "dev" if m.name in held_out else "train"
    for p in dict.fromkeys(m.paragraphs):  # unique, in order
      if len(owners[p]) == 1 and len(p.split()) >= min_words:
        by_split[split][m.area].append(p)
  out = {}
  rng = np.random.default_rng(seed)
  for split, cap in (("train", train_per_class), ("dev", dev_per_class)):
    rows = []
    for area, texts in by_split[split].items():
      pick = sorted(rng.permutation(len(texts))[:cap]) if len(texts) > cap else range(len(texts))
      rows.extend((texts[i], area) for i in pick)
    order = rng.permutation(len(rows))
    out[split] = [rows[i] for i in order]
  return out


def _write_if_changed(path: str, text: str) -> None:
  """Writes `text` atomically unless the file already holds exactly that."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == text:
        return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_data(workdir: str) -> dict[str, object]:
  """Writes WORKDIR/corpus.txt and WORKDIR/task/{train,dev}.tsv; returns their counts."""
  modules = stdlib_modules()
  held = dev_modules(modules)
  corpus = corpus_text(modules, held)
  _write_if_changed(os.path.join(workdir, "corpus.txt"), corpus)
  examples = task_examples(modules, held)
  for split, rows in examples.items():
    lines = ["text\tlabel"] + [f"{text.replace(chr(9), ' ')}\t{label}" for text, label in rows]
    _write_if_changed(os.path.join(workdir, "task", f"{split}.tsv"), "\n".join(lines) + "\n")
  return {"modules": len(modules), "corpus_documents": len(modules) - len(held),
          "corpus_words": len(corpus.split()), "dev_modules": len(held),
          "train_examples": len(examples["train"]), "dev_examples": len(examples["dev"])}


# ---------------------------------------------------------------------------
# Configs.


def pretrain_settings(corpus: str, overrides: list[str]) -> ConfigDict:
  """BERT-Tiny (2 layers, 128 wide) on the docstring corpus, a few minutes on 2 CPU cores."""
  from jaxbert.defaults import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config("tiny")
  c.name = "demo-pretrain"
  c.data.update(corpus=corpus, max_seq_len=128, max_predictions_per_seq=20,
                heldout_fraction=0.02, num_workers=0, eval_examples=256)
  c.tokenizer.update(vocab_size=3000, train_sentences=100_000)
  c.optim.update(lr=1e-3, warmup_fraction=0.05)
  c.train.update(steps=2000, batch_size=32, log_every=50, eval_every=500, checkpoint_every=500,
                 keep_checkpoints=1)
  return apply_overrides(c, overrides)


def finetune_settings(task_dir: str, model: ConfigDict, *, init: str = "",
                      tokenizer: str = "") -> ConfigDict:
  """The fine-tuning run; both runs share everything but `init`/`tokenizer.path`."""
  from jaxbert.defaults import finetune_config  # pylint: disable=g-import-not-at-top
  c = finetune_config(task_dir)
  c.name = "demo-finetune-" + ("pretrained" if init else "random")
  c.init = init
  c.tokenizer.path = tokenizer
  c.model = ConfigDict(model.to_dict())  # the architecture, for random initialisation
  c.model.update(hidden_dropout=0.1, attention_dropout=0.1)
  c.data.update(train_split="train", eval_split="dev", max_seq_len=64)
  c.data.options.labels = list(AREAS)
  c.optim.update(lr=3e-4, warmup_fraction=0.1)
  c.train.update(batch_size=32, epochs=4.0, log_every=20, checkpoint_every=10**9,
                 keep_checkpoints=1)
  return c


# ---------------------------------------------------------------------------
# Reporting.


def train_seconds(workdir: str) -> float:
  """Seconds the training loop took, from metrics.jsonl (survives resumption)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return float("nan")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  total, prev = 0.0, 0
  for r in sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"]):
    total += (r["step"] - prev) / r["steps_per_s"]
    prev = r["step"]
  return total


def macro_f1(predictions_path: str) -> float:
  """Mean over classes of per-class F1, from a run's predictions.jsonl."""
  with open(predictions_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  scores = []
  for label in sorted({r["label"] for r in rows}):
    tp = sum(r["prediction"] == label == r["label"] for r in rows)
    fp = sum(r["prediction"] == label != r["label"] for r in rows)
    fn = sum(r["label"] == label != r["prediction"] for r in rows)
    scores.append(2 * tp / max(2 * tp + fp + fn, 1))
  return float(np.mean(scores))


def _last_eval(workdir: str) -> dict[str, float]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    evals = [json.loads(line) for line in f if line.strip() and '"eval"' in line]
  return evals[-1] if evals else {}


def _stage(title: str) -> None:
  print(f"\n=== {title}", flush=True)


def main(workdir: str, overrides: list[str]) -> int:
  """Runs (or resumes) the whole demo in `workdir`; prints the comparison table."""
  from jaxbert.run import run  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  pre_cfg = pretrain_settings(os.path.join(workdir, "corpus.txt"), overrides)

  _stage("1/4 corpus and task from the standard library's docstrings")
  counts = write_data(workdir)
  print(f"{counts['modules']} modules; pre-training corpus: {counts['corpus_documents']} "
        f"documents, {counts['corpus_words']:,} words ({workdir}/corpus.txt)\n"
        f"task: {len(AREAS)} classes ({', '.join(AREAS)}), {counts['train_examples']} train / "
        f"{counts['dev_examples']} dev paragraphs; the {counts['dev_modules']} dev modules are "
        f"left out of the corpus ({workdir}/task)", flush=True)

  pre_dir = os.path.join(workdir, "pretrain")
  _stage(f"2/4 pre-training BERT-{pre_cfg.model.preset} (MLM + NSP), "
         f"{pre_cfg.train.steps} steps of {pre_cfg.train.batch_size} -> {pre_dir}")
  if overrides:
    print("with " + " ".join(overrides))
  run(pre_cfg, pre_dir)
  pre_eval = _last_eval(pre_dir)

  task_dir = os.path.join(workdir, "task")
  runs = {
      "from pre-trained encoder": (os.path.join(workdir, "finetune_pretrained"),
                                   finetune_settings(task_dir, pre_cfg.model, init=pre_dir)),
      "from random init": (os.path.join(workdir, "finetune_random"),
                           finetune_settings(task_dir, pre_cfg.model,
                                             tokenizer=os.path.join(pre_dir, "tokenizer"))),
  }
  results = {}
  for i, (label, (ft_dir, cfg)) in enumerate(runs.items()):
    _stage(f"{3 + i}/4 fine-tuning {label} -> {ft_dir}")
    run(cfg, ft_dir)
    with open(os.path.join(ft_dir, "results.json")) as f:
      metrics = json.load(f)["metrics"]
    results[label] = {"accuracy": metrics["accuracy"],
                      "macro_f1": macro_f1(os.path.join(ft_dir, "predictions.jsonl")),
                      "train_seconds": train_seconds(ft_dir), "workdir": ft_dir}

  summary = {"data": counts, "pretrain": {"workdir": pre_dir, "eval": pre_eval,
                                          "train_seconds": train_seconds(pre_dir)},
             "finetune": results}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)

  print(f"\nPre-training: {train_seconds(pre_dir):.0f} s; held-out MLM accuracy "
        f"{pre_eval.get('mlm_accuracy', float('nan')):.3f} (most frequent piece: "
        f"{pre_eval.get('mlm_majority_baseline', float('nan')):.3f}), NSP accuracy "
        f"{pre_eval.get('nsp_accuracy', float('nan')):.3f}")
  print(f"\nDev modules never seen in training ({counts['dev_examples']} paragraphs, "
        f"{len(AREAS)} classes, chance {1 / len(AREAS):.3f}):\n")
  print(f"  {'fine-tuned':<26}{'accuracy':>10}{'macro-F1':>10}{'train time':>12}")
  for label, r in results.items():
    print(f"  {label:<26}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}"
          f"{r['train_seconds']:>11.0f}s")
  print(f"\nOutputs under {workdir}:\n"
        f"  corpus.txt, task/{{train,dev}}.tsv   the data\n"
        f"  pretrain/                          tokenizer/, checkpoints/, metrics.jsonl, "
        f"tensorboard/\n"
        f"  finetune_pretrained/, finetune_random/\n"
        f"                                     results.json, predictions.jsonl, metrics.jsonl, "
        f"checkpoints/\n"
        f"  summary.json                       this table\n"
        f"Demo wall time this invocation: {time.perf_counter() - start:.0f} s")
  return 0
