"""Pre-training step benchmark: jaxbert against Hugging Face PyTorch, in one process.

    .venv/bin/python tools/bench.py --preset small --batch 32 --seq-len 128 --peer hf-torch
    .venv/bin/python tools/bench.py --preset mini --batch 64 \
        --variants default,prng=rbg,dropout=0,attn_dropout=0,remat=1
    .venv/bin/python tools/bench.py --preset mini --store runs/mini/corpus/KEY/train \
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
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert.data import packing as packing_lib
from jaxbert.data.docstore import DocumentStore
from jaxbert.data.pretraining import PretrainDataConfig, PretrainingExamples, batch_examples
from jaxbert.model import BertForPreTraining, preset
from jaxbert.optim import make_optimizer
from jaxbert.heads.mlm_nsp import mlm_nsp_loss
from jaxbert.step import Shardings, build_step, new_state

# --variants entries are "default" or KEY=VALUE pairs joined by "+", e.g. "prng=rbg+remat=1".
VARIANT_KEYS = {
    "dropout": "hidden and attention dropout rate (BERT: 0.1)",
    "hidden_dropout": "dropout after embeddings and each sub-block",
    "attn_dropout": "dropout on attention probabilities; 0 takes jax.nn.dot_product_attention",
    "prng": "threefry2x32 (default), rbg or unsafe_rbg: the dropout key's implementation",
    "remat": "1: recompute each layer in the backward pass",
    "dtype": "float32 or bfloat16 computation (parameters stay float32)",
    "donate": "0: do not donate the train state to the step",
    "act": "gelu (erf, BERT), gelu_tanh or relu",
}

_PAD, _UNK, _CLS, _SEP, _MASK = 0, 1, 2, 3, 4  # special ids of the synthetic corpus


# ----------------------------------------------------------------------------- data


def synthetic_store(vocab_size: int, num_docs: int = 2000, seed: int = 0) -> DocumentStore:
  """Documents of 1-40 sentences of 3-40 random pieces (ids past the specials)."""
  rng = np.random.default_rng(seed)
  sents_per_doc = rng.integers(1, 41, num_docs)
  sent_len = rng.integers(3, 41, int(sents_per_doc.sum()))
  tokens = rng.integers(5, vocab_size, int(sent_len.sum())).astype(np.int32)
  sent_start = np.concatenate([[0], np.cumsum(sent_len)]).astype(np.int64)
  doc_start = np.concatenate([[0], np.cumsum(sents_per_doc)]).astype(np.int64)
  return DocumentStore(tokens, sent_start, doc_start)


def make_examples(args) -> PretrainingExamples:
  """Pre-training examples from --store (with --tokenizer) or a synthetic corpus."""
  cfg = PretrainDataConfig(max_seq_len=args.seq_len, max_predictions_per_seq=args.predictions)
  if args.store:
    from jaxbert import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    if not args.tokenizer:
      sys.exit("--store needs --tokenizer (the directory of the store's tokenizer)")
    tok = tok_lib.load_tokenizer(args.tokenizer)
    if tok.vocab_size > args.vocab_size:
      sys.exit(f"--vocab-size {args.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    return PretrainingExamples.from_tokenizer(DocumentStore.load(args.store), cfg, tok)
  return PretrainingExamples(synthetic_store(args.vocab_size), cfg, vocab_size=args.vocab_size,
                             pad_id=_PAD, unk_id=_UNK, cls_id=_CLS, sep_id=_SEP, mask_id=_MASK)


def make_batches(examples, batch: int, count: int) -> list[dict[str, np.ndarray]]:
  """`count` consecutive batches of the example stream (the trainer's StepBatches order)."""
  return [batch_examples([examples.example(*examples.locate(s * batch + j)) for j in range(batch)])
          for s in range(count)]


# ----------------------------------------------------------------------------- runners


@dataclasses.dataclass
class Runner:
  """A built train step: `step(batch)` runs one step and waits for it."""

  name: str
  step: Callable[[dict[str, np.ndarray]], float]
  batches: list[dict[str, np.ndarray]]
  compile_s: float
  memory: str
  exec_flops_per_batch: float
  times: list[float] = dataclasses.field(default_factory=list)
  losses: list[float] = dataclasses.field(default_factory=list)
  rounds: list[float] = dataclasses.field(default_factory=list)  # median step time per round
  compiled: object = None  # jaxbert's jax.stages.Compiled (tools/profile_step.py reads its HLO)


def parse_variant(spec: str) -> dict[str, str]:
  if spec == "default":
    return {}
  out = {}
  for item in spec.split("+"):
    key, sep, value = item.partition("=")
    if not sep or key not in VARIANT_KEYS:
      sys.exit(f"--variants entry {spec!r}: {item!r} is not KEY=VALUE with KEY one of "
               f"{sorted(VARIANT_KEYS)}")
    out[key] = value
  return out


def model_config(args, variant: dict[str, str]):
  drop = float(variant.get("dropout", args.dropout))
  return preset(args.preset, vocab_size=args.vocab_size,
                hidden_dropout=float(variant.get("hidden_dropout", drop)),
                attention_dropout=float(variant.get("attn_dropout", drop)),
                dtype=variant.get("dtype", args.dtype),
                hidden_act=variant.get("act", "gelu"),
                remat=variant.get("remat", "0") == "1")


class RssPeak:
  """Samples this process's resident memory in a thread; `rise()` is peak minus start."""

  def __init__(self):
    self.start = self.peak = self._rss()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  @staticmethod
  def _rss() -> int:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  def _run(self):
    while not self._stop.wait(0.005):
      self.peak = max(self.peak, self._rss())

  def rise(self) -> int:
    self._stop.set()
    self._thread.join()
    return max(self.peak, self._rss()) - self.start


def jax_runner(args, spec: str, batches, predictions: int) -> Runner:
  """jaxbert's train step, built as `jaxbert.train.train` builds it."""
  variant = parse_variant(spec)
  cfg = model_config(args, variant)
  model = BertForPreTraining(cfg)

  def loss_fn(params, batch, rng):  # PretrainTask.loss_fn
    outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return mlm_nsp_loss(outputs, batch)

  mesh = shd.make_mesh(-1, 1)
  example = jax.tree.map(jnp.asarray, batches[0])
  init_params = lambda: model.init({"params": jax.random.key(0)}, example)["params"]
  optim = {"lr": 1e-4, "warmup_steps": 10}
  tx, _ = make_optimizer(optim, jax.eval_shape(init_params), 10_000)
  init_state = lambda: new_state(init_params(), tx)
  sh = Shardings.for_state(mesh, jax.eval_shape(init_state))
  step_fn = build_step(loss_fn, tx, sh, donate=variant.get("donate", "1") == "1")
  holder = {"state": jax.jit(init_state, out_shardings=sh.state)()}
  rng = jax.device_put(jax.random.key(1, impl=variant.get("prng", "threefry2x32")), sh.replicated)
  batch_sh = sh.batch

  t = time.perf_counter()
  compiled = step_fn.lower(holder["state"], shd.global_batch(batches[0], batch_sh), rng).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  memory = "n/a"
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    memory = f"{peak / 2**20:.0f} MB xla"

  def step(batch):
    holder["state"], metrics = compiled(holder["state"], shd.global_batch(batch, batch_sh), rng)
    return float(metrics["loss"])  # waits for the step

  b, t_len = batches[0]["input_ids"].shape
  exec_flops = b * flops_lib.pretraining_flops_per_sequence(cfg, t_len, predictions)
  return Runner(f"jaxbert[{spec}]", step, batches, compile_s, memory, exec_flops,
                compiled=compiled)


def hf_runner(args, mode: str, batches, device: str) -> Runner:
  """transformers.BertForPreTraining with AdamW: a train step as HF users write it."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = model_config(args, {})
  hf_cfg = transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      hidden_act="gelu", hidden_dropout_prob=cfg.hidden_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout,
      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
      layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.initializer_range)
  rss = RssPeak() if device == "cpu" else None
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(hf_cfg).to(device).train()
  # jaxbert's decay mask: no weight decay on LayerNorm parameters and biases.
  decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
  no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
  fused = {"fused": True} if device == "cuda" else {}
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-4, betas=(0.9, 0.999), eps=1e-6, **fused)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
  forward = torch.compile(model) if mode == "compile" else model
  params = list(model.parameters())
  amp = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def to_torch(batch):
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows, cols = np.nonzero(batch["masked_weights"] > 0)
    labels[rows, batch["masked_positions"][rows, cols]] = batch["masked_ids"][rows, cols]
    out = {k: torch.from_numpy(batch[k].astype(np.int64))
           for k in ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label")}
    out["labels"] = torch.from_numpy(labels)
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}

  def step(batch):
    inputs = to_torch(batch)
    with amp:
      loss = forward(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())  # waits for the step

  # Compile time: the first two steps minus two steady ones (eager: their warm-up).
  t = time.perf_counter()
  for batch in batches[:2]:
    step(batch)
  first = time.perf_counter() - t
  t = time.perf_counter()
  for batch in batches[:2]:
    step(batch)
  steady = time.perf_counter() - t
  if device == "cuda":
    memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB cuda"
  else:
    memory = f"{rss.rise() / 2**20:.0f} MB rss+"
  b, t_len = batches[0]["input_ids"].shape
  exec_flops = b * flops_lib.pretraining_flops_per_sequence(cfg, t_len, t_len)
  return Runner(f"hf-{mode}", step, batches, max(first - steady, 0.0), memory, exec_flops)


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
