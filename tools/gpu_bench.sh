#!/usr/bin/env bash
# jaxbert against Hugging Face PyTorch on one GPU, in one call: bfloat16 pre-training steps of
# the base and large presets at sequence lengths 128 and 512 (tools/bench.py with --peer hf-torch),
# then a table of tokens/s, MFU (against the measured bf16 matmul peak) and speed ratios.
#
#   tools/gpu_bench.sh --prepare     here, once: copies ml_collections (pure Python; the GPU
#                                    image lacks it) from .venv into .whl/site/ (git-ignored)
#   tools/gpu_bench.sh               on the GPU machine (carry .whl; about 9 minutes);
#                                    installs nothing. Results: $OUT (or /tmp/gpu_bench)/*.json
#                                    and table.md, ready for the benchmark notes.
#
# Environment: STEPS (timed steps per runner, default 10), BUDGET_S (stop starting new
# configurations after this many seconds, default 540), CONFIGS (override the list below).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  site=$(.venv/bin/python -c 'import ml_collections, os; print(os.path.dirname(os.path.dirname(ml_collections.__file__)))')
  rm -rf .whl/site && mkdir -p .whl/site && cp -r "$site/ml_collections" .whl/site/
  echo "prepared .whl/site: $(ls .whl/site)"
  exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in one process: JAX must not take 75 % of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
STEPS=${STEPS:-10}
BUDGET_S=${BUDGET_S:-540}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! $PY -c 'import jax, flax, optax, torch, transformers, ml_collections
import jaxbert.train, jaxbert.optim, jaxbert.pretrain
print("jax", jax.__version__, jax.devices()[0].device_kind, "| flax", flax.__version__,
      "| torch", torch.__version__, "| transformers", transformers.__version__)'; then
  echo "gpu_bench: an import failed (above); nothing was run" >&2
  exit 3
fi

# preset seq_len batch variants peer_modes: the target (large, 128) first, so a cut-off run
# still holds it.
CONFIGS=${CONFIGS:-"large 128 64 default,attn_dropout=0 eager,compile
base 128 128 default eager,compile
base 512 32 default eager,compile
large 512 16 default eager"}

start=$(date +%s)
while read -r preset seq batch variants modes; do
  [[ -z "$preset" ]] && continue
  if (( $(date +%s) - start > BUDGET_S )); then
    echo "gpu_bench: budget of ${BUDGET_S}s spent; skipping $preset T=$seq" >&2
    continue
  fi
  echo "=== $preset T=$seq b=$batch bf16 ($variants; hf $modes)"
  $PY tools/bench.py --preset "$preset" --seq-len "$seq" --batch "$batch" --dtype bfloat16 \
      --variants "$variants" --peer hf-torch --peer-modes "$modes" --steps "$STEPS" --rounds 2 \
      --no-loader --json "$OUT/${preset}_${seq}.json" 2>&1 | grep -v Warning
done <<< "$CONFIGS"

$PY - "$OUT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, sys
rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))]
if not rows:
  sys.exit("gpu_bench: no results")
print(f"\n{rows[0]['device']}, bfloat16; MFU = model FLOPs/s (jaxbert.flops, MLM at P positions) "
      "over the measured bf16 matmul peak\n")
print("| preset | T | batch | peak TFLOP/s | runner | tokens/s | step ms | MFU % | memory | compile s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
  for x in r["runners"]:
    print(f"| {r['preset']} | {r['seq_len']} | {r['batch']} | {r['peak_flops'] / 1e12:.0f} | "
          f"{x['name']} | {x['tokens_per_s']:.0f} | {x['step_ms']:.1f} | {100 * x['mfu']:.1f} | "
          f"{x['memory']} | {x['compile_s']:.0f} |")
print("\n| preset | T | ratio | value |\n|---|---|---|---|")
for r in rows:
  for k, v in r.get("ratios", {}).items():
    print(f"| {r['preset']} | {r['seq_len']} | {k} | {v:.2f} |")
EOF
