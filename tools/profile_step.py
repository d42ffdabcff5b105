"""Where a pre-training step's time goes: a jax.profiler trace of the benchmark's step.

    .venv/bin/python tools/profile_step.py --preset small --batch 32
    .venv/bin/python tools/profile_step.py --preset mini --batch 64 --variants dropout=0 --top 12

Builds jaxbert's train step exactly as tools/bench.py does (same data, optimizer,
shardings and donation), runs two warm-up steps, traces --steps more, and sums the
time of every XLA op the trace records. Ops are grouped by what their fused
computation holds: GEMM (any dot, with whatever XLA fused around it), copy/transpose,
reduction, elementwise; the costliest ops of each group are listed by the model path
they come from (layer numbers folded together). On XLA:CPU one op runs at a time, on
all threads, so the ops' sum is close to the wall time; both are printed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
from jax.profiler import ProfileData

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # pylint: disable=wrong-import-position

_INSTRUCTION = re.compile(r"%([\w.\-]+) = (\w+\[[\d,]*\])\S* ([\w\-]+)\((.*)")
_OPCODE = re.compile(r"= \w+\[[\d,]*\]\S* ([a-z\-]+)\(")
_TRIVIAL = {"parameter", "bitcast", "constant", "broadcast", "tuple", "get-tuple-element"}


def op_table(hlo: str) -> dict[str, tuple[str, str, str]]:
  """Entry-computation op name -> (group, shape, model path) from compiled HLO text."""
  bodies = {m.group(1): m.group(2)
            for m in re.finditer(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S)}
  table = {}
  for m in _INSTRUCTION.finditer(hlo[hlo.index("\nENTRY"):]):
    name, shape, opcode, rest = m.groups()
    called = re.search(r"calls=%([\w.\-]+)", rest)
    inner = set(_OPCODE.findall(bodies.get(called.group(1), ""))) if called else set()
    inner = (inner | {opcode}) - _TRIVIAL - {"fusion"}
    if "dot" in inner or "convolution" in inner:
      group = "GEMM"
    elif inner & {"copy", "transpose"}:
      group = "copy/transpose"
    elif inner & {"reduce", "reduce-window"}:
      group = "reduction"
    else:
      group = "elementwise"
    path = re.search(r'op_name="([^"]+)"', rest)
    path = path.group(1) if path else ""
    path = re.sub(r"layer_\d+", "layer_N", path.replace("jit(train_step)/", ""))
    table[name] = (group, shape, path)
  return table


def trace_op_times(step, batches, steps: int) -> tuple[collections.Counter, float]:
  """(op name -> total ns over `steps` steps, wall seconds of those steps)."""
  with tempfile.TemporaryDirectory() as out:
    jax.profiler.start_trace(out)
    t = time.perf_counter()
    for i in range(steps):
      step(batches[i % len(batches)])
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(f"{out}/**/*.xplane.pb", recursive=True)[0])
    times = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          times[event.name] += event.duration_ns
  return times, wall


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="small")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--vocab-size", type=int, default=30522)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--variants", default="default", help="one tools/bench.py --variants entry")
  p.add_argument("--steps", type=int, default=3, help="traced steps")
  p.add_argument("--top", type=int, default=6, help="ops listed per group")
  args = p.parse_args(argv)
  args.predictions = {128: 20, 512: 80}.get(args.seq_len, -(-15 * args.seq_len // 100))
  args.store, args.tokenizer, args.packing = "", "", False

  batches = bench.make_batches(bench.make_examples(args), args.batch, 4)
  runner = bench.jax_runner(args, args.variants, batches, args.predictions)
  for batch in batches[:2]:
    runner.step(batch)
  table = op_table(runner.compiled.as_text())
  times, wall = trace_op_times(runner.step, batches, args.steps)

  groups, by_path = collections.Counter(), collections.defaultdict(collections.Counter)
  for name, ns in times.items():
    if name not in table:  # the executor's own spans, host-side events
      continue
    group, shape, path = table[name]
    groups[group] += ns
    by_path[group][f"{path}  {shape}"] += ns
  total = sum(groups.values())
  per_step = lambda ns: ns / 1e6 / args.steps
  print(f"{runner.name}, {args.preset} b={args.batch} T={args.seq_len} {args.dtype}: "
        f"wall {1e3 * wall / args.steps:.1f} ms/step, XLA ops {per_step(total):.1f} ms/step "
        f"({args.steps} traced steps)")
  for group, ns in groups.most_common():
    print(f"{100 * ns / total:5.1f} %  {per_step(ns):7.1f} ms  {group}")
    for key, k_ns in by_path[group].most_common(args.top):
      print(f"         {per_step(k_ns):7.1f} ms  {key}")


if __name__ == "__main__":
  main()
