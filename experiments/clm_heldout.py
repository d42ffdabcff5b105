"""Held-out perplexity of a causal-LM pre-training run against the unigram perplexity of
the same held-out text (issue 22's check for the 30-minute gpt-mini run, docs/results.md).

    python -m experiments.clm_heldout --workdir W

Reads W's config.json, rebuilds the task from W's caches (tokenizer, tokenized corpus),
restores W's newest checkpoint (a run stopped by SIGTERM included) and evaluates it on
every held-out row the run evaluates (jaxbert/clm.py), and independently fits an add-one
smoothed unigram on the training documents (same tokenizer) and scores the same held-out
targets with it. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import numpy as np

from jaxbert import clm
from jaxbert import sharding as shd
from jaxbert.checkpoint import checkpoint_manager, restore_latest
from jaxbert.config import ConfigDict
from jaxbert.data import clm_data
from jaxbert.optim import make_optimizer
from jaxbert.step import Shardings, make_predict, new_state


def heldout(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ConfigDict(json.load(f))
  mesh = shd.make_mesh(1, 1, jax.devices()[:1])
  task = clm.build_task(config, workdir, mesh)
  example = jax.tree.map(np.asarray, task.example_batch())
  init = lambda key: task.model.init({"params": key}, example)["params"]
  tx, _ = make_optimizer(config.optim, jax.eval_shape(init, jax.random.key(0)), config.train.steps)
  abstract = jax.eval_shape(lambda key: new_state(init(key), tx), jax.random.key(0))
  sh = Shardings.for_state(mesh, abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, sh.state)
  mngr = checkpoint_manager(workdir, config)
  state = restore_latest(mngr, target)
  mngr.close()
  if state is None:
    raise SystemExit(f"{workdir} has no checkpoint")
  metrics = task.evaluate(state.params, make_predict(task.model, mesh, sh.state.params))
  # The unigram again, from the stores themselves: same held-out targets, same tokenizer.
  train_store, _ = clm.pretrain.prepare_stores(
      config, workdir, task.tokenizer, build=clm_data.build_store,
      fingerprint="clm:" + clm.dtok.fingerprint(task.tokenizer))
  logp = clm_data.unigram_log_probs(train_store, task.model_cfg.vocab_size, task.train_rows.eod_id)
  targets = clm_data.targets_of(task.eval_rows, range(task.num_eval_rows))
  unigram = math.exp(-float(logp[targets].mean()))
  return {"step": int(state.step), "heldout_tokens": int(len(targets)),
          "heldout_bytes": task.eval_bytes, "perplexity": metrics["perplexity"],
          "bits_per_byte": metrics["bits_per_byte"], "lm_loss": metrics["lm_loss"],
          "unigram_perplexity": unigram, "ratio": metrics["perplexity"] / unigram}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  print(json.dumps(heldout(os.path.abspath(p.parse_args().workdir))))


if __name__ == "__main__":
  main()
