"""Sweep benchmark: trials side by side (one vmapped program) against one after another.

    .venv/bin/python -m experiments.bench_sweep                       # 4 trials of a mini BERT
    .venv/bin/python -m experiments.bench_sweep --lrs 1e-4,2e-4,3e-4,5e-4 --seeds 0,1 --steps 200
    .venv/bin/python -m experiments.bench_sweep --init runs/minilm --task glue/sst2 \
        --data-dir ../shared/data/tfds --train-split 'train[:2000]'

The same sweep (learning rates x seeds, `jaxbert.sweep.run_sweep`) runs twice in
fresh workdirs: with sweep.side_by_side on, then off. Each wall time is the whole
sweep as a user sees it: loading the task, compiling, training, evaluating and
checkpointing every trial. Printed: both wall times, their ratio (one by one /
side by side: above 1 means side by side is faster), the steady training rate in
trial-steps per second (from metrics.jsonl, leaving out the first logging window,
which holds the compilation), each trial's metrics in both modes and the largest
difference between them.

Without --init the model is a randomly initialised BERT of --preset (default
mini: 4 layers, 256 wide) on a synthetic two-class task (--train-examples /
--eval-examples sentences, a sentencepiece vocabulary trained on them); nothing
outside the repository is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import jax
import numpy as np

from jaxbert import sweep as sweep_lib
from jaxbert.defaults import finetune_config
from jaxbert.tokenizer import train_sentencepiece


def write_synthetic_task(folder: str, n_train: int, n_eval: int, seed: int = 0) -> list[str]:
  """A two-class TSV task (does the sentence name a 'red' thing?); returns its texts."""
  rng = np.random.default_rng(seed)
  syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go"]
  words = sorted({"".join(rng.choice(syll, rng.integers(1, 4))) for _ in range(300)})
  red, blue = words[:20], words[20:40]
  texts = []
  os.makedirs(folder, exist_ok=True)
  for split, n in (("train", n_train), ("dev", n_eval)):
    rows = ["text\tlabel"]
    for _ in range(n):
      label = int(rng.random() < 0.5)
      toks = list(rng.choice(words[40:], rng.integers(6, 30)))
      toks.insert(int(rng.integers(len(toks))), str(rng.choice(red if label else blue)))
      texts.append(" ".join(toks))
      rows.append(texts[-1] + "\t" + ("red" if label else "blue"))
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
      f.write("\n".join(rows) + "\n")
  return texts


def steady_steps_per_s(trial_dir: str) -> float:
  """Median steps/s over a trial's training log windows, the first (compiling) one left out."""
  with open(os.path.join(trial_dir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f if l.strip()]
  rates = [l["steps_per_s"] for l in lines if l["split"] == "train"]
  return float(np.median(rates[1:] or rates))


def sweep_config(args, task: str, tokenizer: str):
  c = finetune_config(task)
  if args.init:
    c.init = args.init
  else:
    c.model.preset = args.preset
    c.tokenizer.path = tokenizer
  c.data.update(train_split=args.train_split, eval_split=args.eval_split,
                max_seq_len=args.seq_len, data_dir=args.data_dir)
  c.train.update(batch_size=args.batch, epochs=0.0, steps=args.steps,
                 log_every=max(1, args.steps // 6),
                 eval_every=10**9, checkpoint_every=args.steps, progress=False)
  c.optim.update(warmup_fraction=0.1)
  c.sweep.space.optim.lr = [float(x) for x in args.lrs.split(",")]
  c.sweep.space.train.seed = [int(x) for x in args.seeds.split(",")]
  return c


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", default="", help="a pre-training run or import-hf bundle (default: random)")
  p.add_argument("--preset", default="mini")
  p.add_argument("--task", default="", help="a task name or folder (default: synthetic)")
  p.add_argument("--data-dir", default="")
  p.add_argument("--train-split", default="train")
  p.add_argument("--eval-split", default="", help="default: dev (synthetic), validation")
  p.add_argument("--train-examples", type=int, default=2048)
  p.add_argument("--eval-examples", type=int, default=512)
  p.add_argument("--lrs", default="1e-4,3e-4")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--workdir", default="", help="default: a temporary directory")
  args = p.parse_args()
  logging.getLogger("absl").setLevel(logging.ERROR)

  root = args.workdir or tempfile.mkdtemp(prefix="bench_sweep_")
  task, tokenizer = args.task, ""
  if not task:
    task = os.path.join(root, "task")
    texts = write_synthetic_task(task, args.train_examples, args.eval_examples)
    if not args.init:
      tokenizer = os.path.join(root, "tokenizer")
      train_sentencepiece(texts, tokenizer, vocab_size=1000, lowercase=True)
  elif not args.init:
    p.error("a named --task needs --init (its tokenizer)")
  args.eval_split = args.eval_split or ("validation" if args.task else "dev")
  config = sweep_config(args, task, tokenizer)
  n = len(sweep_lib.expand(config))
  print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  print(f"{n} trials ({args.lrs} x seeds {args.seeds}) of {args.steps} steps, batch "
        f"{args.batch} x {args.seq_len} tokens, model {args.init or args.preset}")

  results = {}
  for mode in ("side_by_side", "one_by_one"):
    config.sweep.side_by_side = mode == "side_by_side"
    workdir = os.path.join(root, mode)
    t0 = time.perf_counter()
    sweep_lib.run_sweep(config, workdir)
    wall = time.perf_counter() - t0
    records = {}
    for tid in sorted(os.listdir(os.path.join(workdir, "trials"))):
      with open(os.path.join(workdir, "trials", tid, "trial.json")) as f:
        records[tid] = json.load(f)
    results[mode] = (wall, records)
    rates = [steady_steps_per_s(os.path.join(workdir, "trials", tid)) for tid in records]
    # Side by side, every trial's rate is the group's: each group step advances all N.
    rate = sum(rates) if mode == "side_by_side" else len(rates) / sum(1 / r for r in rates)
    print(f"{mode:>13s}: {wall:8.1f} s wall, {rate:7.2f} trial-steps/s steady "
          f"(load avg {os.getloadavg()[0]:.1f})")

  (wall_s, side), (wall_o, one) = results["side_by_side"], results["one_by_one"]
  names = sorted(next(iter(side.values()))["metrics"])
  print(f"\nwall time ratio one_by_one / side_by_side: {wall_o / wall_s:.2f}x")
  print(f"\n{'trial':36s} " + " ".join(f"{m + ' (side)':>16s} {m + ' (one)':>16s}" for m in names))
  worst = 0.0
  for tid in side:
    a, b = side[tid]["metrics"], one[tid]["metrics"]
    worst = max([worst] + [abs(a[m] - b[m]) for m in names])
    print(f"{tid:36s} " + " ".join(f"{a[m]:16.6f} {b[m]:16.6f}" for m in names))
  print(f"\nlargest metric difference between the modes: {worst:.2e}")
  print(f"workdirs under {root}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
