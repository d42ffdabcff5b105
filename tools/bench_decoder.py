"""Decoder pre-training step benchmark: jaxbert's causal-LM train step against transformers
GPT2LMHeadModel / LlamaForCausalLM, eager and torch.compile, in the same process,
alternating rounds.

    python -m tools.bench_decoder [--presets gpt2,smollm2-135m] [--seq-len 256] [--batch 4]
    python -m tools.bench_decoder --smoke      # a check of the tool itself

jaxbert: the step `jaxbert pretrain` builds for a decoder (jaxbert.step.build_step on the
causal-LM head and loss of jaxbert/heads/causal_lm.py, AdamW with the decoder pre-training
defaults), at random initialisation. Rows are full packed rows of random token ids (one
document per row), so both sides compute on every position. transformers: the same
architecture built from the preset, AdamW, labels = inputs (it shifts them itself); under
torch.autocast for bfloat16. The preset's dropout on both sides. Prints tokens/s, MFU
against the measured matmul peak of the dtype (jaxbert.flops.measure_matmul_peak; FLOPs
of jaxbert.decoder.flops_per_token, the same count for every runner) and jaxbert's ratio to
each peer. The first step of each runner (its compile) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert import decoder as decoder_lib
from jaxbert import defaults
from jaxbert import flops as flops_lib
from jaxbert import sharding as shd
from jaxbert.heads.causal_lm import CausalLM, causal_lm_loss
from jaxbert.optim import make_optimizer
from jaxbert.step import Shardings, build_step, new_state
from tools.bench_runners import RssPeak


def jax_runner(cfg, batches, steps_total: int):
  """The trainer's step (build_step on the causal-LM task's model and loss, the decoder
  pre-training optimizer defaults) on packed rows; returns (step, compile s, memory)."""
  model = CausalLM(cfg)

  def loss_fn(params, batch, rng):
    outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return causal_lm_loss(outputs, batch)

  mesh = shd.make_mesh(-1, 1)
  example = jax.tree.map(jnp.asarray, batches[0])
  init = lambda: model.init({"params": jax.random.key(0)}, example)["params"]
  optim = defaults.decoder_pretrain_config().optim
  tx, _ = make_optimizer(optim, jax.eval_shape(init), steps_total)
  make_state = lambda: new_state(init(), tx)
  sh = Shardings.for_state(mesh, jax.eval_shape(make_state))
  step_fn = build_step(loss_fn, tx, sh)
  holder = {"state": jax.jit(make_state, out_shardings=sh.state)()}
  rng = jax.device_put(jax.random.key(1), sh.replicated)
  t = time.perf_counter()
  compiled = step_fn.compile(holder["state"], shd.global_batch(batches[0], sh.batch), rng)
  compile_s = time.perf_counter() - t
  peak = compiled.peak_bytes()  # XLA's buffer plan (jaxbert.step.Step.peak_bytes)
  memory = "n/a"
  if peak is not None:
    memory = f"{peak / 2**20:.0f} MB xla"

  def step(batch):
    holder["state"], metrics = compiled(holder["state"], shd.global_batch(batch, sh.batch), rng)
    return float(metrics["loss"])  # waits for the step

  step(batches[0])
  return step, compile_s, memory


def packed_rows(vocab: int, batch: int, seq_len: int, rng) -> dict[str, np.ndarray]:
  """Full rows as the causal-LM task packs them (jaxbert/data/clm_data.py), one
  random document per row: inputs ids[:-1], targets ids[1:]."""
  ids = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
  ones = np.ones((batch, seq_len), np.int32)
  return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_weights": ones.astype(np.float32),
          "segment_ids": ones, "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                                            (batch, seq_len)).copy(),
          "attention_mask": ones}


def hf_runner(cfg, mode: str, batches):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if cfg.arch == "gpt2":
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
        resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate, attn_pdrop=cfg.dropout_rate,
        layer_norm_epsilon=cfg.norm_eps)
    model = transformers.GPT2LMHeadModel(hf_cfg)
  else:
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_dropout=cfg.dropout_rate)
    model = transformers.LlamaForCausalLM(hf_cfg)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rss = RssPeak() if device == "cpu" else None
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  model.to(device).train()
  # jaxbert's decoder pre-training optimizer: AdamW (b2 0.95, decay 0.1 but not on biases
  # and norms), gradients clipped at norm 1; warm-up as a scheduler step.
  named = list(model.named_parameters())
  plain = lambda n: n.endswith("bias") or "norm" in n.lower() or ".ln_" in n
  fused = {"fused": True} if device == "cuda" else {}
  opt = torch.optim.AdamW(
      [{"params": [p for n, p in named if not plain(n)], "weight_decay": 0.1},
       {"params": [p for n, p in named if plain(n)], "weight_decay": 0.0}],
      lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **fused)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
  params = [p for _, p in named]
  forward = torch.compile(model) if mode == "compile" else model
  amp = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def step(batch):
    # The same T inputs; transformers shifts the labels itself (T - 1 targets).
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    with amp:
      loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  # Compile time: the first step minus a steady one (eager: its warm-up).
  t = time.perf_counter()
  step(batches[0])
  first = time.perf_counter() - t
  t = time.perf_counter()
  step(batches[0])
  steady = time.perf_counter() - t
  memory = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB cuda" if device == "cuda"
            else f"{rss.rise() / 2**20:.0f} MB rss+")
  return step, max(first - steady, 0.0), memory


def bench_preset(name: str, dtype: str, peak: float, args) -> dict:
  """Every runner on one preset, in rounds (the order rotating), same batches."""
  cfg = decoder_lib.decoder_preset(name, dtype=dtype)
  rng = np.random.default_rng(0)
  batches = [packed_rows(cfg.vocab_size, args.batch, args.seq_len, rng) for _ in range(args.steps)]
  runners = {"jaxbert": jax_runner(cfg, batches, args.steps * args.rounds + 1)}
  for mode in filter(None, args.peer_modes.split(",")):
    runners[f"hf-{mode}"] = hf_runner(cfg, mode, batches)
  names = list(runners)
  times = {k: [] for k in names}
  for r in range(args.rounds):
    for k in names[r % len(names):] + names[:r % len(names)]:
      t = time.perf_counter()
      for b in batches:
        runners[k][0](b)
      times[k].append((time.perf_counter() - t) / len(batches))
  tokens = args.batch * args.seq_len
  flops = tokens * decoder_lib.flops_per_token(cfg, args.seq_len)
  rows = {k: {"tokens_per_s": tokens / float(np.median(v)), "mfu": flops / float(np.median(v)) / peak,
              "compile_s": runners[k][1], "memory": runners[k][2], "step_s": v}
          for k, v in times.items()}
  # Speed-up: the median of per-round ratios (a load change hits both runners of a round).
  ratios = {f"jaxbert / {k}": float(np.median(np.asarray(times[k]) / np.asarray(times["jaxbert"])))
            for k in names if k != "jaxbert"}
  for k, row in rows.items():
    print(f"{name} {dtype} {k}: {row['tokens_per_s']:,.0f} tokens/s, step s "
          + ", ".join(f"{x:.2f}" for x in row["step_s"]), flush=True)
  return {"preset": name, "device": jax.devices()[0].device_kind,
          "seq_len": args.seq_len, "batch": args.batch, "dtype": dtype,
          "peak_flops": peak, "runners": rows, "ratios": ratios}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--presets", default=None, help="default gpt2,smollm2-135m "
                 "(--smoke: gpt-tiny,llama-tiny)")
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16, comma-separated")
  p.add_argument("--steps", type=int, default=4, help="timed steps per runner per round")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--peer-modes", default="eager,compile")
  p.add_argument("--smoke", action="store_true",
                 help="gpt-tiny and llama-tiny, T=32, 2 steps, 1 round, eager peer only")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args(argv)
  if args.smoke:
    args.presets = args.presets or "gpt-tiny,llama-tiny"
    args.seq_len, args.batch, args.steps, args.rounds = 32, 8, 2, 1
    args.peer_modes = "eager" if "eager" in args.peer_modes else ""
  args.presets = args.presets or "gpt2,smollm2-135m"
  for name in args.presets.split(","):
    if not decoder_lib.is_decoder_preset(name):
      p.error(f"--presets: {name!r} is not a decoder preset; choose from {list(decoder_lib.PRESETS)}")
  for dtype in args.dtypes.split(","):
    if dtype not in ("float32", "bfloat16"):
      p.error(f"--dtypes: {dtype!r} is neither float32 nor bfloat16")
  results = []
  for dtype in args.dtypes.split(","):
    peak = flops_lib.measure_matmul_peak(jnp.dtype(dtype))
    for name in args.presets.split(","):
      results.append(bench_preset(name, dtype, peak, args))
  print(f"\n{jax.devices()[0].device_kind}; T={args.seq_len}, batch {args.batch}, "
        f"{args.steps} steps x {args.rounds} rounds per runner")
  print("| preset | dtype | runner | tokens/s | MFU | peak GFLOP/s | compile s | memory "
        "| jaxbert speed-up |")
  print("|---|---|---|---:|---:|---:|---:|---|---:|")
  for r in results:
    for k, row in r["runners"].items():
      ratio = f"{r['ratios'][f'jaxbert / {k}']:.2f}x" if k != "jaxbert" else ""
      print(f"| {r['preset']} | {r['dtype']} | {k} | {row['tokens_per_s']:,.0f} | "
            f"{100 * row['mfu']:.1f} % | {r['peak_flops'] / 1e9:,.0f} | {row['compile_s']:.1f} | "
            f"{row['memory']} | {ratio} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
