"""What pre-training buys: a pre-training run's encoder against random initialisation.

    .venv/bin/python -m experiments.pretrain_gain --init runs/mini --root runs/ft
    .venv/bin/python -m experiments.pretrain_gain --init runs/mini --root runs/ft --reinit pooler

For each recipe below, two `jaxbert sweep`s with identical settings (task, training
subset, sequence length, epochs, batch, learning rates, key stream): one starts from
the encoder of the pre-training workdir --init, the other from random initialisation
with the same architecture (its config.json) and tokenizer (its tokenizer/ folder).
Each command is printed before it runs; a sweep whose workdir is finished is not run
again (a sweep resumes). `--reinit` re-initialises parts of the pre-trained encoder
(`config.reinit`) on the pre-trained side only. `--lrs` replaces the recipes' learning
rates, `--epochs` their training length, `--set KEY=VALUE` (repeatable) adds
`--config.KEY=VALUE` to both sides, and `--seeds` trains each setting once per seed
(fine-tuning scores of small models move by a point or two with the seed alone).
Printed, and written to ROOT/gain.md: each learning rate's validation score from both
starts (the median over seeds, with min and max), and the best median of one against
the best of the other.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys

from experiments.finetune_table import DATA_DIR, run_jaxbert, show

# name -> (config file, training split or "" for the config's, epochs, learning rates,
# further flags).
RECIPES = {
    "sst2_16k": ("sst2", "train[:16000]", 1, [3e-4, 1e-3], ()),
    "sst2_2k": ("sst2", "train[:2000]", 3, [3e-4, 1e-3], ()),
    "conll": ("conll2003", "", 1, [3e-4], ()),
    # A probe of the features rather than fine-tuning: the encoder (pooler included)
    # frozen, only the classifier on the pooled output trains. Not run by default.
    "sst2_16k_frozen": ("sst2", "train[:16000]", 1, [1e-3, 3e-3],
                        ("--config.optim.freeze=encoder",)),
}
DEFAULT_RECIPES = ("sst2_16k", "sst2_2k", "conll")
COMMON = ["--config.data.max_seq_len=64", "--config.train.prng_impl=rbg",
          f"--config.data.data_dir={DATA_DIR}"]
METRIC = {"sst2": "accuracy", "conll2003": "f1"}


def recipe_settings(recipe: str, epochs: float | None = None, settings: tuple[str, ...] = ()):
  """(config, split, epochs, flags) of a recipe with the command line's overrides."""
  config, split, recipe_epochs, _, flags = RECIPES[recipe]
  return config, split, epochs or recipe_epochs, (*flags, *(f"--config.{s}" for s in settings))


def command(recipe: str, workdir: str, start: list[str], lrs: list[float] | None = None,
            seeds: list[int] | None = None, epochs: float | None = None,
            settings: tuple[str, ...] = ()) -> list[str]:
  """The `jaxbert sweep` of one recipe from one start; lrs/epochs=None: the recipe's own."""
  config, split, epochs, flags = recipe_settings(recipe, epochs, settings)
  recipe_lrs = RECIPES[recipe][3]
  cmd = ["jaxbert", "sweep", "--config", f"configs/finetune/{config}.py", "--workdir", workdir,
         *start, *COMMON, *flags]
  if split:
    cmd.append(f"--config.data.train_split={split}")
  cmd += [f"--config.train.epochs={epochs:g}",
          f"--config.sweep.space.optim.lr=[{','.join(f'{lr:g}' for lr in lrs or recipe_lrs)}]"]
  if seeds:
    cmd.append(f"--config.sweep.space.train.seed=[{','.join(map(str, seeds))}]")
  return cmd


def scores(workdir: str, metric: str) -> dict[float, list[float]]:
  """lr -> validation scores (one per seed) from a finished sweep's results.csv."""
  got: dict[float, list[float]] = {}
  with open(os.path.join(workdir, "results.csv")) as f:
    for r in csv.DictReader(f):
      got.setdefault(float(r["optim.lr"]), []).append(float(r[metric]))
  return got


def cell(values: list[float]) -> str:
  """A median in percent, with min-max when there are several seeds."""
  med = 100 * statistics.median(values)
  if len(values) == 1:
    return f"{med:.2f}"
  return f"{med:.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def random_start(init: str) -> list[str]:
  """Flags for random initialisation with the architecture and tokenizer of `init`."""
  config_file, tokenizer = os.path.join(init, "config.json"), os.path.join(init, "tokenizer")
  if not (os.path.isfile(config_file) and os.path.isdir(tokenizer)):
    sys.exit(f"--init={init} is not a pre-training workdir (it needs config.json and "
             "tokenizer/); point it at the --workdir of a `jaxbert pretrain` run")
  with open(config_file) as f:
    model = json.load(f)["model"]
  if not model.get("preset") or model.get("override_preset_sizes"):
    sys.exit(f"{config_file}: the run does not use a plain model preset, which this tool "
             "copies to the random side; compare by hand with --config.model.* flags")
  return ["--config.init=", f"--config.tokenizer.path={tokenizer}",
          f"--config.model.preset={model['preset']}"]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--init", required=True, help="a `jaxbert pretrain` workdir")
  p.add_argument("--root", required=True, help="the sweeps' workdirs are made under it")
  p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                 help=f"comma-separated, of {', '.join(RECIPES)}")
  p.add_argument("--reinit", default="", help="config.reinit for the pre-trained side")
  p.add_argument("--lrs", default="", help="learning rates for every recipe, e.g. 1e-4,3e-4")
  p.add_argument("--epochs", type=float, default=None,
                 help="training epochs for every recipe (default: each recipe's own)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config setting for both sides, e.g. head.pooling=mean (repeatable)")
  p.add_argument("--seeds", default="", help="fine-tuning seeds, e.g. 0,1,2 (default: 0 only)")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args()
  try:
    lrs = [float(x) for x in args.lrs.split(",") if x] or None
    seeds = [int(x) for x in args.seeds.split(",") if x] or None
  except ValueError as e:
    p.error(f"--lrs takes numbers and --seeds integers, comma-separated: {e}")
  bad = [x for x in args.set if "=" not in x or x.startswith("config.")]
  if bad:
    p.error(f"--set takes KEY=VALUE with KEY as after --config. (head.pooling=mean), not {bad}")
  if args.epochs is not None and args.epochs <= 0:
    p.error(f"--epochs must be positive, not {args.epochs:g}")
  recipes = [r for r in args.recipes.split(",") if r]
  unknown = sorted(set(recipes) - set(RECIPES))
  if unknown:
    p.error(f"unknown recipe(s) {unknown}; known: {sorted(RECIPES)}")
  starts = {"pretrained": [f"--config.init={args.init}"]
                          + ([f"--config.reinit={args.reinit}"] if args.reinit else []),
            "random": random_start(args.init)}
  suffix = {"pretrained": "_reinit_" + args.reinit.replace(",", "_").replace(":", "")
                          if args.reinit else "", "random": ""}
  rows = []
  for recipe in recipes:
    config, split, epochs, flags = recipe_settings(recipe, args.epochs, tuple(args.set))
    got = {}
    for side in ("pretrained", "random"):
      workdir = os.path.join(args.root, f"{recipe}_{side}{suffix[side]}")
      if args.dry_run or not os.path.exists(os.path.join(workdir, "results.csv")):
        cmd = command(recipe, workdir, starts[side], lrs, seeds, args.epochs, tuple(args.set))
        show(cmd)
        if args.dry_run:
          continue
        if run_jaxbert(cmd) != 0:
          print(f"{recipe} ({side}) failed; its sweep resumes when this is run again",
                file=sys.stderr)
          return 1
      got[side] = scores(workdir, METRIC[config])
    if args.dry_run:
      continue
    what = (f"{config} {split or 'train'}, {epochs:g} epoch(s){''.join(' ' + f for f in flags)}, "
            f"{METRIC[config]}")
    for lr in sorted(got["random"]):
      rows.append(f"| {what} | {lr:g} | {cell(got['pretrained'][lr])} | "
                  f"{cell(got['random'][lr])} | |")
      what = ""
    best = {side: max(statistics.median(s) for s in v.values()) for side, v in got.items()}
    rows.append(f"| | best | {100 * best['pretrained']:.2f} | {100 * best['random']:.2f} | "
                f"**{100 * (best['pretrained'] - best['random']):+.2f}** |")
  head = f"from `{args.init}`" + (f" (reinit {args.reinit})" if args.reinit else "")
  table = "\n".join([f"| recipe | lr | {head} | from random init | gain |",
                     "|---|---:|---:|---:|---:|", *rows])
  if args.dry_run:
    return 0
  print(table)
  os.makedirs(args.root, exist_ok=True)
  name = "gain" + suffix["pretrained"] + ".md"
  with open(os.path.join(args.root, name), "w") as f:
    f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
