"""Pre-training step benchmark: jaxbert against Hugging Face PyTorch, in one process.

    .venv/bin/python -m tools.bench --preset small --batch 32 --seq-len 128 --peer hf-torch
    .venv/bin/python -m tools.bench --preset mini --batch 64 \
        --variants default,prng=rbg,dropout=0,attn_dropout=0,remat=1
    .venv/bin/python -m tools.bench --preset mini --store runs/mini/corpus/KEY/train \
        --tokenizer runs/mini/tokenizer --packing

What runs. Each runner is one pre-training train step, built once and then timed:
  jaxbert     the trainer's step (`jaxbert.step.build_step`: the train step with
              its non-finite guard) with `mlm_nsp_loss`, the optimizer of
              `jaxbert.optim.make_optimizer` (AdamW, clipping, weight-decay mask,
              warm-up schedule), the trainer's shardings and donation of the
              state: the code path of `jaxbert pretrain`. One runner per
              --variants entry (see VARIANT_KEYS).
  hf-eager    transformers.BertForPreTraining, same sizes, dropout, batch and
  hf-compile  masked positions (labels -100 elsewhere), torch.optim.AdamW with the
              same decay mask, clipping and schedule; eager, and under torch.compile.
              HF computes masked-LM logits at every position and keeps those of
              the labelled ones; jaxbert runs the vocabulary matmul at the P
              masked positions only.
Both sides start every step from numpy batches, as the trainers do.

How it measures. The matmul peak (the larger of jnp.dot and torch.mm on square
matrices, in the run's dtype; with --dtype bfloat16, jnp.dot of bfloat16 operands
accumulating in float32, as the model multiplies) is measured first. Runners then
run in rounds, a block of steps each, in rotating order, so machine drift hits all
alike; step time is the median over all timed steps (--steps, at least 10), and a ratio
between two runners is the median of their per-round ratios. MFU is model FLOPs
per second over the measured peak, with the FLOPs of `jaxbert.flops`
(2 per multiply-add, backward = 2 x forward, MLM decoder at the P masked
positions) for every runner, so MFU ratios equal speed ratios; "exec" adds the
FLOPs a runner actually executes (HF: the decoder at all T positions).
Peak memory: jaxbert's is XLA's buffer plan of the compiled step (arguments +
temporaries + outputs not aliased); torch's is max_memory_allocated on CUDA and
the rise of resident memory during its first steps on CPU. `maxrss` is the
process's high-water mark.

The loader check times `jaxbert.pretrain.StepBatches` (one process) and prints
its examples/s against what the fastest jaxbert step consumes. --packing
reports the packing efficiency of `jaxbert.data.packing` on the store's length
distribution and adds a jaxbert runner fed packed rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import flops as flops_lib
from jaxbert.data import packing as packing_lib
from tools.bench_runners import (VARIANT_KEYS, Runner, hf_runner, jax_runner, make_batches,
                                 make_examples, model_config)


# ----------------------------------------------------------------------------- measuring


def matmul_peak(dtype: str, with_torch: bool, device: str) -> tuple[float, dict[str, float]]:
  """The larger of the jax and torch square-matmul rates, and each one."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  rates = {"jax": flops_lib.measure_matmul_peak(jnp.dtype(dtype), n=n)}
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, dtype=tdt, device=device) / math.sqrt(n)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(6):
      a @ a
      sync()
      t = time.perf_counter()
      for _ in range(4):
        a @ a
      sync()
      best = min(best, (time.perf_counter() - t) / 4)
    rates["torch"] = 2 * n ** 3 / best
  return max(rates.values()), rates


def run_rounds(runners: list[Runner], steps: int, rounds: int,
               between: Callable[[], None] = lambda: None) -> None:
  """Times `steps` steps of every runner, in `rounds` blocks of rotating order.

  `between` runs after every round (the peak is re-measured there).
  """
  per_round = max(1, math.ceil(steps / rounds))
  counters = {id(r): 0 for r in runners}
  for k in range(rounds):
    order = runners[k % len(runners):] + runners[:k % len(runners)]
    for r in order:
      block = []
      for _ in range(per_round):
        batch = r.batches[counters[id(r)] % len(r.batches)]
        counters[id(r)] += 1
        t = time.perf_counter()
        r.losses.append(r.step(batch))
        block.append(time.perf_counter() - t)
      r.times.extend(block)
      r.rounds.append(statistics.median(block))
    between()


def paired_ratio(a: Runner, b: Runner) -> float:
  """Speed of a over b: the median of per-round step-time ratios b / a."""
  return statistics.median(tb / ta for ta, tb in zip(a.rounds, b.rounds))


def loader_rate(examples, batch: int, seconds: float = 3.0) -> tuple[float, float]:
  """(examples/s of StepBatches in this process, seconds to plan the first epoch)."""
  from jaxbert.pretrain import StepBatches  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  examples.num_examples(0)  # the epoch plan, paid once per epoch
  plan_s = time.perf_counter() - t
  # Within epoch 0, so that no further epoch is planned inside the timing.
  steps = max(1, examples.num_examples(0) // batch - 1)
  source = StepBatches(examples, batch, start=0, length=steps)
  source[0]
  n, t = 1, time.perf_counter()
  while time.perf_counter() - t < seconds and n < steps:
    source[n]
    n += 1
  return (n - 1) * batch / (time.perf_counter() - t), plan_s


# ----------------------------------------------------------------------------- main


def add_step_arguments(p: argparse.ArgumentParser) -> None:
  """The options that define the benchmarked step (also tools/profile_step.py's)."""
  p.add_argument("--preset", default="small", help="mini, small, base, large, ... (model.py)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--predictions", type=int, default=0,
                 help="masked positions per row (default: 20 at T=128, 80 at T=512, as BERT)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--vocab-size", type=int, default=30522, help="default: bert-base-uncased's")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--store", default="", help="a DocumentStore directory (else synthetic text)")
  p.add_argument("--tokenizer", default="", help="the store's tokenizer directory")


def resolve_step_arguments(args: argparse.Namespace) -> None:
  """Fills in defaults that depend on other options."""
  if not args.predictions:  # BERT's max_predictions_per_seq
    args.predictions = {128: 20, 512: 80}.get(args.seq_len, math.ceil(0.15 * args.seq_len))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="variant keys:\n" + "\n".join(
                                  f"  {k:15s} {v}" for k, v in VARIANT_KEYS.items()))
  add_step_arguments(p)
  p.add_argument("--steps", type=int, default=20, help="timed steps per runner (>= 10)")
  p.add_argument("--rounds", type=int, default=5, help="alternation rounds")
  p.add_argument("--variants", default="default",
                 help="comma-separated jaxbert variants (see below)")
  p.add_argument("--peer", default="none", choices=("none", "hf-torch"))
  p.add_argument("--peer-modes", default="eager,compile", help="hf-torch modes to run")
  p.add_argument("--packing", action="store_true",
                 help="report packing efficiency and time a jaxbert runner on packed rows")
  p.add_argument("--max-segments", type=int, default=4, help="examples per packed row, at most")
  p.add_argument("--no-loader", action="store_true", help="skip the loader throughput check")
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  args = p.parse_args(argv)
  if args.steps < 10:
    p.error("--steps must be >= 10 (the median of at least 10 steps)")
  resolve_step_arguments(args)
  device = "cpu"
  if args.peer == "hf-torch":
    import torch  # pylint: disable=g-import-not-at-top
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} cpus", end="")
  if args.peer == "hf-torch":
    import torch, transformers  # pylint: disable=g-import-not-at-top,multiple-import
    print(f"; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}", end="")
  print()
  peak, rates = matmul_peak(args.dtype, args.peer == "hf-torch", device)
  peak_kind = flops_lib.peak_label(args.dtype)
  print(f"matmul peak ({peak_kind}): {peak / 1e9:.1f} GFLOP/s  ("
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items()) + ")")

  examples = make_examples(args)
  batches = make_batches(examples, args.batch, 4)
  real_frac = float(np.mean([b["attention_mask"].mean() for b in batches]))
  print(f"{args.preset} b={args.batch} T={args.seq_len} P={args.predictions} {args.dtype} "
        f"vocab={args.vocab_size} dropout={args.dropout}; data: "
        f"{'store ' + args.store if args.store else 'synthetic'}, "
        f"{100 * real_frac:.1f} % real tokens")

  runners: list[Runner] = []
  for spec in args.variants.split(","):
    runners.append(jax_runner(args, spec, batches, args.predictions))
    print(f"  built {runners[-1].name}: compile {runners[-1].compile_s:.1f} s", flush=True)
  if args.packing:
    packed = packing_lib.PackedExamples(examples, max_segments=args.max_segments)
    stats = packing_lib.packing_stats(packed, epoch=0)
    print(f"packing (epoch 0, {stats['examples']} examples, T={args.seq_len}, <= "
          f"{args.max_segments} per row): real-token share {100 * stats['unpacked_efficiency']:.1f} % "
          f"unpacked -> {100 * stats['packed_efficiency']:.1f} % packed "
          f"({stats['rows']} rows, {stats['examples'] / stats['rows']:.2f} examples per row)")
    pbatches = make_batches(packed, args.batch, 4)
    r = jax_runner(args, args.variants.split(",")[0], pbatches, packed.max_predictions)
    r.name = f"jaxbert[{args.variants.split(',')[0]}, packed]"
    runners.append(r)
    print(f"  built {r.name}: compile {r.compile_s:.1f} s", flush=True)
  if args.peer == "hf-torch":
    for mode in args.peer_modes.split(","):
      runners.append(hf_runner(args, mode, batches, device))
      print(f"  built {runners[-1].name}: compile {runners[-1].compile_s:.1f} s", flush=True)

  # Warm-up outside the timed rounds (caches, allocator, first-call paths).
  for r in runners:
    for batch in r.batches[:2]:
      r.step(batch)
  # On a shared machine the start may be a busy moment: the peak is the best rate seen at
  # the start and after every round.
  def remeasure():
    nonlocal peak
    again, again_rates = matmul_peak(args.dtype, args.peer == "hf-torch", device)
    peak = max(peak, again)
    for k, v in again_rates.items():
      rates[k] = max(rates[k], v)
  run_rounds(runners, args.steps, args.rounds, remeasure)
  print(f"matmul peak ({peak_kind}), best of the start and {args.rounds} rounds: "
        f"{peak / 1e9:.1f} GFLOP/s")

  model_flops = args.batch * flops_lib.pretraining_flops_per_sequence(
      model_config(args, {}), args.seq_len, args.predictions)
  print(f"\nmodel FLOPs per step {model_flops / 1e9:.1f} G (forward + backward, MLM at "
        f"{args.predictions} positions); median of {len(runners[0].times)} steps per runner, "
        f"{args.rounds} alternating rounds; MFU and exec % against the {peak_kind} peak "
        f"{peak / 1e9:.1f} GFLOP/s")
  hdr = (f"{'runner':34s} {'tok/s':>8s} {'real tok/s':>10s} {'step ms':>8s} {'IQR ms':>7s} "
         f"{'compile s':>9s} {'MFU %':>6s} {'exec %':>6s} {'memory':>14s} {'loss':>6s}")
  print(hdr)
  print("-" * len(hdr))
  for r in runners:
    med = statistics.median(r.times)
    q = statistics.quantiles(r.times, n=4)
    b, t_len = r.batches[0]["input_ids"].shape
    real = float(np.mean([(x["attention_mask"] > 0).sum() for x in r.batches]))
    print(f"{r.name:34s} {b * t_len / med:8.0f} {real / med:10.0f} {1e3 * med:8.1f} "
          f"{1e3 * (q[2] - q[0]):7.1f} {r.compile_s:9.1f} {100 * model_flops / med / peak:6.1f} "
          f"{100 * r.exec_flops_per_batch / med / peak:6.1f} {r.memory:>14s} "
          f"{statistics.mean(r.losses):6.2f}")
  print(f"process maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB")
  results = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len,
             "dtype": args.dtype, "predictions": args.predictions, "vocab_size": args.vocab_size,
             "device": jax.devices()[0].device_kind, "peak_flops": peak, "peak_dtype": peak_kind,
             "peak_by_library": rates,
             "model_flops_per_step": model_flops, "runners": []}
  for r in runners:
    med = statistics.median(r.times)
    b, t_len = r.batches[0]["input_ids"].shape
    results["runners"].append({
        "name": r.name, "tokens_per_s": b * t_len / med, "step_ms": 1e3 * med,
        "compile_s": r.compile_s, "mfu": model_flops / med / peak, "memory": r.memory,
        "mean_loss": statistics.mean(r.losses)})

  base = runners[0]
  if len(runners) > 1:
    print("\nspeed ratios (median of per-round ratios; > 1: the row is faster):")
    for r in runners[1:]:
      print(f"  {r.name:34s} / {base.name}: {paired_ratio(r, base):.3f}")
    results["ratios"] = {}
    for r in runners:
      if r.name.startswith("jaxbert"):
        for peer in runners:
          if peer.name.startswith("hf-"):
            ratio = paired_ratio(r, peer)
            results["ratios"][f"{r.name} / {peer.name}"] = ratio
            print(f"  {r.name:34s} / {peer.name}: {ratio:.3f}")

  if not args.no_loader:
    rate, plan_s = loader_rate(examples, args.batch)
    fastest = min(statistics.median(r.times) for r in runners if r.name.startswith("jaxbert"))
    need = args.batch / fastest
    print(f"\nloader: StepBatches makes {rate:.0f} examples/s in one process (epoch plan "
          f"{plan_s:.1f} s, once per epoch); the fastest jaxbert step consumes {need:.0f}/s: "
          f"{100 * need / rate:.1f} % of one loader core")
    results["loader_examples_per_s"] = rate
    results["step_examples_per_s"] = need
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
