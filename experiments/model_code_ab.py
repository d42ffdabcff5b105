"""tools/bench.py with some variants on the model code of another commit: a same-run A/B.

    .venv/bin/python -m experiments.model_code_ab --before 448db6f -- \
        --preset small --batch 32 --seq-len 128 --dtype bfloat16 \
        --variants code=before,default,dtype=float32 --rounds 5 --steps 10

Variants with `code=before` build BertForPreTraining from jaxbert/{model,layers,dropout}.py
as they were at --before (copied under another package name into a temporary folder);
the others use the working tree. Everything else (data, optimizer, step, timing rounds,
table) is tools/bench.py's. Written for the bfloat16 float32-accumulation change
(docs/performance.md, "bfloat16 with float32 accumulation").
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

from tools import bench
from tools import bench_runners

_FILES = ("model", "layers", "dropout")


def load_before(commit: str, folder: Path):
  """The model module of `commit`, importable as jaxbert_before.model."""
  pkg = folder / "jaxbert_before"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  for name in _FILES:
    text = subprocess.run(["git", "show", f"{commit}:jaxbert/{name}.py"], check=True,
                          capture_output=True, text=True).stdout
    for other in _FILES:
      text = text.replace(f"from jaxbert.{other} import", f"from jaxbert_before.{other} import")
    (pkg / f"{name}.py").write_text(text)
  sys.path.insert(0, str(folder))
  return importlib.import_module("jaxbert_before.model")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--before", required=True, help="commit whose model code `code=before` runs")
  p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then tools/bench.py arguments")
  args = p.parse_args(argv)
  bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
  with tempfile.TemporaryDirectory() as tmp:
    before = load_before(args.before, Path(tmp))
    bench_runners.VARIANT_KEYS["code"] = f"before: the model code of {args.before}"
    chosen = {}
    model_config, current = bench_runners.model_config, bench_runners.BertForPreTraining

    def config_noting_code(bench_args_, variant):
      chosen["code"] = variant.get("code", "")
      return model_config(bench_args_, variant)

    # jax_runner builds its model right after model_config(args, variant).
    bench_runners.model_config = config_noting_code
    bench_runners.BertForPreTraining = lambda cfg: (
        before.BertForPreTraining(cfg) if chosen["code"] == "before" else current(cfg))
    print(f"code=before: jaxbert/{{{','.join(_FILES)}}}.py of {args.before}")
    bench.main(bench_args)


if __name__ == "__main__":
  main()
