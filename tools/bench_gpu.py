"""One call on a GPU machine: jaxbert against Hugging Face PyTorch (eager and torch.compile),
both model families, bfloat16.

    python tools/bench_gpu.py --out runs/bench_gpu.md
    python tools/bench_gpu.py --smoke          # tiny shapes on CPU: a check of the script

Each (preset, sequence length, batch) of --configs runs in its own process (so every run
starts with the whole device): an encoder preset (base, large, ...) through
`python -m tools.bench --peer hf-torch` (the pre-training step against BertForPreTraining),
a decoder preset (gpt2, smollm2-135m, ...) through `python -m tools.bench_decoder` (the
causal-LM step against GPT2LMHeadModel / LlamaForCausalLM). Both alternate jaxbert with
the peers in rounds and measure MFU against the bfloat16 matmul peak (bf16 x bf16 -> f32)
they measure on the device. One table: tokens/s, MFU, compile time, memory, and jaxbert's
speed ratio against each peer. The default configs are issue 24's: BERT-large at 128
pieces and GPT-2 124M at 1,024 tokens first (the targets), then base at 128 and 512 and
large at 512.

Installs nothing and reaches no network; needs jax with CUDA, torch and transformers, as
the lent H100/H200 image has. JAX preallocates most of the GPU by default, which would
starve PyTorch in the same process: the runs get XLA_PYTHON_CLIENT_PREALLOCATE=false. The
runs import jaxbert from this checkout (PYTHONPATH), so it need not be installed there; a
device image without ml_collections (pure Python) gets it from .whl/site/, which
`--prepare` fills from this machine's .venv (carry `.whl` to the device). No configuration
starts after --budget-s seconds, so a run fits a device machine's per-command limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SITE = os.path.join(REPO, ".whl", "site")
# (preset, sequence length, batch): the base and large at 128 and 512 pieces.
DEFAULT_CONFIGS = "large:128:64,gpt2:1024:16,base:128:64,base:512:16,large:512:16"
SMOKE_CONFIGS = "tiny:32:8,gpt-tiny:32:8"


def is_decoder(preset: str) -> bool:
  sys.path.insert(0, REPO)
  from jaxbert import decoder  # pylint: disable=g-import-not-at-top
  return decoder.is_decoder_preset(preset)


def run_one(preset: str, seq_len: int, batch: int, args) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    if is_decoder(preset):
      cmd = [sys.executable, "-m", "tools.bench_decoder", "--presets", preset,
             "--seq-len", str(seq_len), "--batch", str(batch), "--dtypes", args.dtype,
             "--steps", str(args.decoder_steps), "--rounds", str(args.rounds), "--json", out,
             "--peer-modes", args.peer_modes]
    else:
      cmd = [sys.executable, "-m", "tools.bench", "--preset", preset,
             "--seq-len", str(seq_len), "--batch", str(batch), "--dtype", args.dtype,
             "--steps", str(args.steps), "--rounds", str(args.rounds), "--json", out]
      cmd += args.encoder_extra
      if args.peer_modes:
        cmd += ["--peer", "hf-torch", "--peer-modes", args.peer_modes]
    path = [REPO] + ([SITE] if os.path.isdir(SITE) else []) + [os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(p for p in path if p))
    print("$ " + " ".join(cmd), flush=True)
    try:
      proc = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True,
                            cwd=REPO)
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {args.timeout} s"}
    sys.stdout.write(proc.stdout[-3000:])
    if proc.returncode != 0:
      return {"error": f"exit {proc.returncode}: " + proc.stderr.strip().splitlines()[-1][:200]}
    with open(out) as f:
      result = json.load(f)
    if isinstance(result, list):  # tools.bench_decoder: one entry per preset, runners by name
      (r,) = result
      result = {"peak_flops": r["peak_flops"], "ratios": r["ratios"], "device": r["device"],
                "runners": [dict(row, name=k) for k, row in r["runners"].items()]}
    return result


def prepare() -> int:
  import ml_collections  # pylint: disable=g-import-not-at-top
  shutil.rmtree(SITE, ignore_errors=True)
  shutil.copytree(os.path.dirname(ml_collections.__file__), os.path.join(SITE, "ml_collections"))
  print(f"prepared {SITE}: {sorted(os.listdir(SITE))}")
  return 0


def table(results: list[tuple[str, dict]]) -> str:
  devices = sorted({r["device"] for _, r in results if r.get("device")})
  lines = [f"device: {', '.join(devices) or 'unknown'}", "",
           "| config | runner | tokens/s | MFU | compile s | memory | jaxbert speed-up |",
           "|---|---|---:|---:|---:|---|---:|"]
  for name, r in results:
    if "error" in r:
      lines.append(f"| {name} | {r['error']} | | | | | |")
      continue
    peak = f"{r['peak_flops'] / 1e12:.3g}"
    for run in r["runners"]:
      ratio = ""
      if run["name"].startswith("hf-"):
        jax_name = next(x["name"] for x in r["runners"] if x["name"].startswith("jaxbert"))
        key = f"{jax_name} / {run['name']}"
        ratio = f"{r['ratios'].get(key, float('nan')):.2f}x"
      lines.append(f"| {name} (peak {peak} TFLOP/s) | {run['name']} | "
                   f"{run['tokens_per_s']:,.0f} | {100 * run['mfu']:.1f} % | "
                   f"{run['compile_s']:.1f} | {run['memory']} | {ratio} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", default=DEFAULT_CONFIGS, help="preset:seq_len:batch, comma-separated")
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=10, help="timed steps per encoder runner (>= 10)")
  p.add_argument("--decoder-steps", type=int, default=5,
                 help="timed steps per decoder runner per round")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--peer-modes", default="eager,compile",
                 help="hf-torch modes; empty: jaxbert alone")
  p.add_argument("--timeout", type=int, default=None,
                 help="seconds per configuration (default 400; --smoke: 900, for a loaded CPU)")
  p.add_argument("--out", default="", help="also write the table (Markdown) here")
  p.add_argument("--budget-s", type=float, default=540,
                 help="start no configuration after this many seconds")
  p.add_argument("--smoke", action="store_true",
                 help=f"{SMOKE_CONFIGS} on whatever device there is, eager peer only, few "
                      "steps: checks the script end to end (about a minute on CPU)")
  p.add_argument("--prepare", action="store_true",
                 help="copy ml_collections from this environment into .whl/site and exit")
  args = p.parse_args(argv)
  if args.prepare:
    return prepare()
  args.encoder_extra = []
  if args.smoke:
    args.configs, args.steps, args.decoder_steps, args.rounds = SMOKE_CONFIGS, 10, 2, 2
    args.peer_modes = "eager"
    args.encoder_extra = ["--vocab-size", "512", "--no-loader"]
  args.timeout = args.timeout or (900 if args.smoke else 400)
  configs = []
  for spec in args.configs.split(","):
    try:
      preset, seq_len, batch = spec.split(":")
      configs.append((preset, int(seq_len), int(batch)))
    except ValueError:
      p.error(f"--configs entry {spec!r} is not preset:seq_len:batch")
  start, results = time.monotonic(), []
  for preset, seq_len, batch in configs:
    name = f"{preset} T={seq_len} b={batch} {args.dtype}"
    if time.monotonic() - start > args.budget_s:
      results.append((name, {"error": f"not run: budget of {args.budget_s:g} s spent"}))
    else:
      results.append((name, run_one(preset, seq_len, batch, args)))
  text = table(results)
  print("\n" + text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 1 if any("error" in r for _, r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
