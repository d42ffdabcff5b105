"""Is the one trainer's step (jaxbert.step.build_step) as fast as the step the trainer
assembled inline before the redesign? Same process, same data, alternating rounds.

    .venv/bin/python -m experiments.step_ab --preset small --batch 32 --rounds 5 --steps 5

"before" is the pre-redesign jaxbert/train.py construction, spelled out here:
jax.jit(partial(guarded_train_step, loss_fn, tx=skip_nonfinite(tx))) with the
trainer's shardings and donation; "after" is build_step. Prints whether the two
compiled HLO modules are identical, the median step times and their ratio.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from jaxbert import sharding as shd
from jaxbert.model import BertForPreTraining
from jaxbert.optim import make_optimizer
from jaxbert.heads.mlm_nsp import mlm_nsp_loss
from jaxbert.step import Shardings, build_step, guarded_train_step, new_state, skip_nonfinite
from tools import bench


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench.add_step_arguments(p)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=5, help="timed steps per runner per round")
  args = p.parse_args(argv)
  bench.resolve_step_arguments(args)
  cfg = bench.model_config(args, {})
  model = BertForPreTraining(cfg)
  batches = bench.make_batches(bench.make_examples(args), args.batch, args.steps)

  def loss_fn(params, batch, rng):
    outputs = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return mlm_nsp_loss(outputs, batch)

  mesh = shd.make_mesh(-1, 1)
  example = jax.tree.map(np.asarray, batches[0])
  init_params = lambda: model.init({"params": jax.random.key(0)}, example)["params"]
  tx, _ = make_optimizer({"lr": 1e-4, "warmup_steps": 10}, jax.eval_shape(init_params), 10_000)
  init_state = lambda: new_state(init_params(), tx)
  sh = Shardings.for_state(mesh, jax.eval_shape(init_state))
  steps = {
      "before": jax.jit(functools.partial(guarded_train_step, loss_fn=loss_fn,
                                          tx=skip_nonfinite(tx)),
                        in_shardings=(sh.state, sh.batch, sh.replicated),
                        out_shardings=(sh.state, sh.replicated), donate_argnums=(0,)),
      "after": build_step(loss_fn, tx, sh),
  }
  rng = jax.device_put(jax.random.key(1), sh.replicated)
  states, compiled = {}, {}
  for name, fn in steps.items():
    states[name] = jax.jit(init_state, out_shardings=sh.state)()
    compiled[name] = fn.lower(states[name], shd.global_batch(batches[0], sh.batch), rng).compile()
  same = compiled["before"].as_text() == compiled["after"].as_text()
  print(f"compiled HLO identical: {same}")
  times = {n: [] for n in steps}
  ratios = []
  for r in range(args.rounds):
    order = list(steps) if r % 2 == 0 else list(reversed(steps))
    medians = {}
    for name in order:
      ts = []
      for b in batches:
        t = time.perf_counter()
        states[name], metrics = compiled[name](states[name], shd.global_batch(b, sh.batch), rng)
        float(metrics["loss"])
        ts.append(time.perf_counter() - t)
      medians[name] = statistics.median(ts)
      times[name] += ts
    ratios.append(medians["before"] / medians["after"])
    print(f"round {r}: before {medians['before'] * 1e3:.0f} ms, after {medians['after'] * 1e3:.0f} ms")
  print(f"median step: before {statistics.median(times['before']) * 1e3:.0f} ms, after "
        f"{statistics.median(times['after']) * 1e3:.0f} ms; speed ratio after/before "
        f"(median of rounds) {statistics.median(ratios):.3f}")


if __name__ == "__main__":
  main()
