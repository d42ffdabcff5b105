"""Where a pre-training step's time goes: a jax.profiler trace of the benchmark's step.

    .venv/bin/python -m tools.profile_step --preset small --batch 32
    .venv/bin/python -m tools.profile_step --preset mini --batch 64 --variants dropout=0 --top 12

Builds jaxbert's train step exactly as tools/bench.py does (same data, optimizer,
shardings and donation), runs two warm-up steps, traces --steps more, and sums the
time of every XLA op the trace records. Ops are grouped by what their fused
computation holds: GEMM (any dot, with whatever XLA fused around it), copy/transpose,
reduction, elementwise; the costliest ops of each group are listed by the model path
they come from (layer numbers folded together). Time is wall time: each moment goes to
the ops running then (see `attribute` for the ops XLA hands to its thread pool), so
the groups add up to the traced wall time less idle moments; both are printed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile
import time

import jax
from jax.profiler import ProfileData

from tools import bench

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
    path = re.sub(r"layer_\d+", "layer_N", path.split(")/", 1)[-1] if path.startswith("jit(") else path)
    table[name] = (group, shape, path)
  return table


def _events(step, batches, steps: int):
  """Trace `steps` steps: ([(start, end, op name)] as recorded, {op: [end marks]}, wall s)."""
  with tempfile.TemporaryDirectory() as out:
    jax.profiler.start_trace(out)
    t = time.perf_counter()
    for i in range(steps):
      step(batches[i % len(batches)])
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(f"{out}/**/*.xplane.pb", recursive=True)[0])
    spans, marks = [], collections.defaultdict(list)
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name.startswith("end: "):
            marks[event.name[5:]].append(event.start_ns)
          else:
            spans.append((event.start_ns, event.start_ns + event.duration_ns, event.name))
  return spans, marks, wall


def attribute(spans, marks, ops) -> collections.Counter:
  """Wall time per op (ns) from trace events: [(start, end, name)] and {name: [end marks]}.

  XLA:CPU runs ops on the calling thread (their event spans the work) or hands them to
  its thread pool (plain dots, mostly: the event spans only the launch, and an
  "end: NAME" event marks completion, queueing included). Each moment of the trace goes
  to the synchronous ops running then, shared equally; moments with none go to the
  handed-off ops in flight. Work that a handed-off op does while a synchronous one runs
  is counted in the latter, which it slows down. Only ops named in `ops` count.
  """
  spans = [sp for sp in spans if sp[2] in ops]
  by_name = collections.defaultdict(list)
  for sp in sorted(spans):
    by_name[sp[2]].append(sp)
  in_flight = []  # (launch, completion, name) of handed-off ops
  for name, own in by_name.items():
    done = sorted(marks.get(name, []))
    for start, end, _ in own:
      later = next((m for m in done if m >= start), None)
      if later is not None:
        done.remove(later)
        if later > end + 1_000_000:  # completed over 1 ms after its event: handed off
          in_flight.append((start, later, name))
  handed_off = {(a, n) for a, _, n in in_flight}
  synchronous = [sp for sp in spans if (sp[0], sp[2]) not in handed_off]
  cuts = sorted({t for a, b, _ in spans + in_flight for t in (a, b)})
  times = collections.Counter()
  for a, b in zip(cuts, cuts[1:]):
    running = [n for s, e, n in synchronous if s <= a and e >= b]
    running = running or [n for s, e, n in in_flight if s <= a and e >= b]
    for n in running:
      times[n] += (b - a) / len(running)
  return times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  bench.add_step_arguments(p)
  p.add_argument("--variants", default="default", help="one tools/bench.py --variants entry")
  p.add_argument("--steps", type=int, default=3, help="traced steps")
  p.add_argument("--top", type=int, default=6, help="ops listed per group")
  args = p.parse_args(argv)
  bench.resolve_step_arguments(args)

  batches = bench.make_batches(bench.make_examples(args), args.batch, 4)
  runner = bench.jax_runner(args, args.variants, batches, args.predictions)
  for batch in batches[:2]:
    runner.step(batch)
  # The step's two programs (jaxbert.step.Step); an op name both use is not attributed.
  grad_table, apply_table = (op_table(t) for t in runner.compiled.as_texts())
  table = {**{k: v for k, v in grad_table.items() if k not in apply_table},
           **{k: v for k, v in apply_table.items() if k not in grad_table}}
  spans, marks, wall = _events(runner.step, batches, args.steps)
  times = attribute(spans, marks, table)

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
        f"wall {1e3 * wall / args.steps:.1f} ms/step, of which XLA ops {per_step(total):.1f} ms "
        f"({args.steps} traced steps)")
  for group, ns in groups.most_common():
    print(f"{100 * ns / total:5.1f} %  {per_step(ns):7.1f} ms  {group}")
    for key, k_ns in by_path[group].most_common(args.top):
      print(f"         {per_step(k_ns):7.1f} ms  {key}")


if __name__ == "__main__":
  main()
