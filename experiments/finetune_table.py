"""Fine-tune one checkpoint on every task of configs/finetune/ and print a results table.

    .venv/bin/python -m experiments.finetune_table --init runs/minilm --root runs/minilm_tasks
    .venv/bin/python -m experiments.finetune_table --init runs/minilm --root runs/minilm_tasks \
        --tasks sst2,mrpc

Each task is one `jaxbert finetune` command (printed before it runs, so it can be
copied), with the settings of RECIPES below on top of configs/finetune/<task>.py;
they keep this 2-core machine's time within reach (subsets, shorter sequences,
fewer epochs) and are listed in the table. A task whose workdir already holds
results.json is not run again (delete the folder to redo it). Printed, and written
to ROOT/table.md: each task's validation metrics, the training time (the sum of
the logged training intervals in metrics.jsonl, compile included) and the wall
time of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# task -> (config file, overrides). The full-data recipe is the config file itself.
RECIPES = {
    "sst2": ("sst2", ["--config.data.train_split=train[:16000]", "--config.data.max_seq_len=64",
                      "--config.train.epochs=1"]),
    "mrpc": ("mrpc", []),
    "stsb": ("stsb", ["--config.data.max_seq_len=64"]),
    "cola": ("cola", ["--config.data.max_seq_len=64", "--config.train.epochs=2"]),
    "conll2003": ("conll2003", ["--config.data.max_seq_len=64", "--config.train.epochs=1"]),
    "squad": ("squad", ["--config.data.max_seq_len=256", "--config.train.epochs=0.5"]),
}
# On every task, as in the README table's runs: the `rbg` key stream (it was the cheaper
# dropout generator before jaxbert/dropout.py; kept so these commands reproduce the table).
# The tfds tasks' data: $JAXBERT_DATA_DIR, else this project's shared copy beside the repo.
DATA_DIR = os.environ.get("JAXBERT_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared",
                                                              "data", "tfds")
COMMON = ["--config.train.prng_impl=rbg", f"--config.data.data_dir={DATA_DIR}"]
# What the table shows per task (the first is the task's main metric).
SHOWN = {"sst2": ["accuracy"], "mrpc": ["f1", "accuracy"], "stsb": ["spearman", "pearson"],
         "cola": ["mcc"], "conll2003": ["f1", "precision", "recall"],
         "squad": ["f1", "exact_match"]}


def train_seconds(workdir: str) -> float:
  """Sum of the logged training intervals (steps / steps_per_s) in metrics.jsonl."""
  total, prev = 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "steps_per_s" in r:
        total += (r["step"] - prev) / r["steps_per_s"]
        prev = r["step"]
  return total


def command(task: str, init: str, workdir: str, extra: list[str]) -> list[str]:
  config, overrides = RECIPES[task]
  return ["jaxbert", "finetune", "--config", f"configs/finetune/{config}.py",
          "--workdir", workdir, f"--config.init={init}", *overrides, *COMMON, *extra]


def show(cmd: list[str]) -> None:
  """Prints a jaxbert command as it can be pasted into a shell."""
  print("$ " + " ".join(f"'{c}'" if "[" in c else c for c in cmd), flush=True)


def run_jaxbert(cmd: list[str]) -> int:
  """Runs `jaxbert ...` from this Python's environment in the repository root."""
  bin_dir = os.path.dirname(sys.executable)
  return subprocess.call([os.path.join(bin_dir, cmd[0]), *cmd[1:]], cwd=REPO)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--init", required=True, help="checkpoint to start from (bundle or workdir)")
  p.add_argument("--root", required=True, help="one workdir per task is made under it")
  p.add_argument("--tasks", default=",".join(RECIPES))
  p.add_argument("--extra", default="", help="more --config overrides for every task")
  args = p.parse_args()
  tasks = [t for t in args.tasks.split(",") if t]
  unknown = sorted(set(tasks) - set(RECIPES))
  if unknown:
    p.error(f"unknown task(s) {unknown}; known: {sorted(RECIPES)}")
  rows = []
  for task in tasks:
    workdir = os.path.join(args.root, task)
    cmd = command(task, args.init, workdir, args.extra.split())
    results = os.path.join(workdir, "results.json")
    wall_file = os.path.join(workdir, "wall_seconds.txt")
    if not os.path.exists(results):
      show(cmd)
      t0 = time.perf_counter()
      rc = run_jaxbert(cmd)
      if rc != 0:
        print(f"{task}: exit status {rc}", file=sys.stderr)
        continue
      with open(wall_file, "w") as f:
        f.write(f"{time.perf_counter() - t0:.1f}\n")
    with open(results) as f:
      metrics = json.load(f)["metrics"]
    wall = float(open(wall_file).read()) if os.path.exists(wall_file) else float("nan")
    shown = ", ".join(f"{k} {100 * metrics[k]:.2f}" for k in SHOWN[task] if k in metrics)
    rows.append(f"| {task} | {shown} | {train_seconds(workdir) / 60:.1f} | {wall / 60:.1f} | "
                f"{' '.join(RECIPES[task][1] + COMMON)} |")
  table = "\n".join(["| task | validation | train min | total min | settings |",
                     "|---|---|---|---|---|", *rows])
  print(table)
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "table.md"), "w") as f:
    f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
