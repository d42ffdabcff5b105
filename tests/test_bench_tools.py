"""tools/bench.py and tools/profile_step.py run end to end on a tiny model."""

import json

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
