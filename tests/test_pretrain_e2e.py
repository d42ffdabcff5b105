"""The real pre-training path, small: corpus -> tokenizer -> instances -> sharded steps."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import final_params, tiny_pretrain_config as tiny_config
from jaxbert import pretrain
from jaxbert.run import run


def test_run_writes_metrics_checkpoints_and_tokenizer(reference_run):
  workdir, metrics = reference_run
  assert {"mlm_accuracy", "nsp_accuracy", "mlm_majority_baseline"} <= set(metrics)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [l for l in lines if l["split"] == "train"]
  assert [l["step"] for l in train] == [2, 4, 6]
  assert all(np.isfinite(l["loss"]) and l["tokens_per_s"] > 0 and 0 < l["mfu"] < 1 for l in train)
  assert os.path.exists(os.path.join(workdir, "tokenizer", "spm.model"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  step, _ = final_params(workdir)
  assert step == 6


def test_interrupted_run_resumes_bitwise(reference_run, corpus_file, tmp_path, monkeypatch,
                                         caplog):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "interrupted")
  real = pretrain.PretrainTask.batches

  def dying_batches(self, start_step, stop_step):
    for i, b in enumerate(real(self, start_step, stop_step)):
      if start_step == 0 and i == 3:  # dies during step 4, after the step-2 checkpoint
        raise KeyboardInterrupt
      yield b

  monkeypatch.setattr(pretrain.PretrainTask, "batches", dying_batches)
  with pytest.raises(KeyboardInterrupt):
    run(tiny_config(corpus_file), workdir, devices=jax.devices()[:1])
  assert final_params(workdir)[0] == 2
  os.remove(os.path.join(workdir, "config.json"))  # resuming still works, with a warning
  with caplog.at_level(logging.WARNING, logger="jaxbert"):
    run(tiny_config(corpus_file), workdir, devices=jax.devices()[:1])
  assert "has checkpoints but no config.json" in caplog.text
  _, ref = final_params(ref_dir)
  step, got = final_params(workdir)
  assert step == 6
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg="/".join(k))


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (1, 8)])
def test_mesh_shapes_give_the_same_loss(reference_run, corpus_file, tmp_path, data, fsdp):
  ref_dir, _ = reference_run
  if len(jax.devices()) < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  config = tiny_config(corpus_file)
  config.mesh.update(data=data, fsdp=fsdp)
  workdir = str(tmp_path / f"mesh_{data}x{fsdp}")
  run(config, workdir)
  read = lambda d: [l["loss"] for l in map(json.loads, open(os.path.join(d, "metrics.jsonl")))
                    if l["split"] == "train"]
  np.testing.assert_allclose(read(workdir), read(ref_dir), rtol=2e-5)


def test_every_checkpoint_carries_the_tokenizer(reference_run, tmp_path, monkeypatch):
  import tempfile
  from jaxbert import handover
  from jaxbert.tokenizer import load_tokenizer
  workdir, _ = reference_run
  scratch = tmp_path / "tmp"  # where the checkpoint's tokenizer is unpacked, then removed
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  # A copy of the run without its tokenizer folder: the checkpoint's own copy is used.
  copy = tmp_path / "run"
  top_level = lambda d, names: ["tokenizer"] if os.path.samefile(d, workdir) else []
  shutil.copytree(workdir, copy, ignore=top_level)
  for step in os.listdir(copy / "checkpoints"):
    assert os.path.isdir(copy / "checkpoints" / step / "tokenizer")
  source = handover.open_source(str(copy / "checkpoints" / "6"))
  assert source.tokenizer.fingerprint() == load_tokenizer(
      os.path.join(workdir, "tokenizer")).fingerprint()
  assert os.listdir(scratch) == []


def test_packed_rows_train_and_log_their_efficiency(corpus_file, tmp_path, caplog):
  config = tiny_config(corpus_file, steps=4, eval_every=4)
  config.data.packing = 3
  with caplog.at_level(logging.INFO, logger="jaxbert"):
    metrics = run(config, str(tmp_path / "packed"), devices=jax.devices()[:1])
  assert "packing: up to 3 examples per row" in caplog.text
  lines = [json.loads(l) for l in open(tmp_path / "packed" / "metrics.jsonl")]
  train = [l for l in lines if l["split"] == "train"]
  assert [l["step"] for l in train] == [2, 4]
  assert all(np.isfinite(l["loss"]) and 0 <= l["nsp_accuracy"] <= 1 for l in train)
  # Held-out examples are evaluated one per row, as without packing.
  assert 0 <= metrics["mlm_accuracy"] <= 1 and 0 <= metrics["nsp_accuracy"] <= 1


def test_packing_must_be_a_count(corpus_file, tmp_path):
  from jaxbert.errors import UserError
  config = tiny_config(corpus_file)
  config.data.packing = -1  # the config's type check refuses a float or a string itself
  with pytest.raises(UserError, match="config.data.packing"):
    run(config, str(tmp_path / "bad"), devices=jax.devices()[:1])


def test_continued_pretraining_starts_from_every_parameter_of_the_run(reference_run, corpus_file,
                                                                     tmp_path, monkeypatch):
  from flax import traverse_util
  ref_dir, _ = reference_run
  handed = {}
  real = pretrain.PretrainTask.init_params

  def spy(self, params, shardings):
    params = real(self, params, shardings)
    handed.update(traverse_util.flatten_dict(jax.device_get(params)))
    return params

  monkeypatch.setattr(pretrain.PretrainTask, "init_params", spy)
  config = tiny_config(corpus_file, steps=4, eval_every=4)
  config.init = ref_dir
  config.model.hidden_dropout = 0.0  # dropout may differ from the first run's
  config.data.max_seq_len = 48       # a longer second phase, as BERT's
  workdir = tmp_path / "continued"
  run(config, str(workdir), devices=jax.devices()[:1])
  _, ref = final_params(ref_dir)
  assert set(handed) == set(ref)  # encoder, MLM and NSP heads
  for k in ref:
    np.testing.assert_array_equal(handed[k], ref[k], err_msg="/".join(k))
  report = json.loads((workdir / "handover.json").read_text())
  assert report["new"]["tensors"] == 0 and report["dropped"]["tensors"] == 0
  assert report["loaded"]["tensors"] == len(ref)
  train = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [l["step"] for l in train if l["split"] == "train"] == [2, 4]
  assert os.path.exists(workdir / "tokenizer" / "spm.model")


def test_continued_pretraining_draws_new_training_examples(reference_run, corpus_file, tmp_path):
  """Not the pairs and masks the source trained on; the same ones on every restart."""
  from jaxbert import sharding
  ref_dir, _ = reference_run
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  fresh = pretrain.build_task(tiny_config(corpus_file), str(tmp_path / "fresh"), mesh)
  config = tiny_config(corpus_file)
  config.init = ref_dir
  continued = [pretrain.build_task(config, str(tmp_path / "cont"), mesh) for _ in range(2)]
  examples = lambda task, which: [getattr(task, which).example(0, i) for i in range(8)]
  same = lambda a, b: all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
  assert not same(examples(fresh, "train_examples"), examples(continued[0], "train_examples"))
  assert same(examples(continued[0], "train_examples"), examples(continued[1], "train_examples"))
  assert same(examples(fresh, "eval_examples"), examples(continued[0], "eval_examples"))


def test_continued_pretraining_refuses_another_architecture_or_tokenizer(reference_run,
                                                                          corpus_file, tmp_path):
  from jaxbert.errors import UserError
  ref_dir, _ = reference_run
  config = tiny_config(corpus_file)
  config.init = ref_dir
  config.model.num_layers = 3
  with pytest.raises(UserError, match=r"num_layers=3 \(the checkpoint has 2\)"):
    run(config, str(tmp_path / "deeper"), devices=jax.devices()[:1])
  config = tiny_config(corpus_file)
  config.init = ref_dir
  config.tokenizer.path = os.path.join(ref_dir, "tokenizer")
  with pytest.raises(UserError, match="either config.init"):
    run(config, str(tmp_path / "two_tokenizers"), devices=jax.devices()[:1])
  assert not os.path.exists(tmp_path / "deeper" / "checkpoints")


def test_first_logged_window_times_the_steps_not_the_set_up(corpus_file, tmp_path, monkeypatch):
  """steps_per_s of the first window counts from the first step (its compile included),
  not from before the set-up (restoring, hand-over, measuring the matmul peak)."""
  import time
  from jaxbert import flops as flops_lib
  from jaxbert import train as train_lib
  marks = {}

  def slow_peak(*args, **kwargs):
    time.sleep(2.0)  # a set-up step that takes a while
    marks["set_up_done"] = time.perf_counter()
    return 1e12

  write = train_lib.MetricsLog.write

  def recording_write(self, step, split, values):
    if split == "train" and "first_window" not in marks:
      marks["first_window"] = (time.perf_counter(), step, values["steps_per_s"])
    return write(self, step, split, values)

  monkeypatch.setattr(flops_lib, "measure_matmul_peak", slow_peak)
  monkeypatch.setattr(train_lib.MetricsLog, "write", recording_write)
  run(tiny_config(corpus_file, steps=4, log_every=2, eval_every=4), str(tmp_path / "run"),
      devices=jax.devices()[:1])
  written, steps, steps_per_s = marks["first_window"]
  window_start = written - steps / steps_per_s
  assert window_start >= marks["set_up_done"] - 0.05, (window_start, marks["set_up_done"])
