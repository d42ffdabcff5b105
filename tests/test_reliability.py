"""Reliability: the NaN guard, sealed checkpoints, exact resume after kill -9 and SIGTERM.

Most runs are child processes of tools/kill_resume.py (the real `jaxbert` command with a
kill armed), sharing one JAX compilation cache (the `lab` fixture, tests/conftest.py);
the full kill set is that tool's job. Bad inputs: test_bad_inputs.py; runs of several
processes: test_multiprocess.py.
"""

import concurrent.futures
import json
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_pretrain_config
from jaxbert import checkpoint as ckpt_lib
from jaxbert import pretrain
from jaxbert import train as train_lib
from jaxbert.run import run
from reliability_lab import REPO, all_finite_arrays, copy_tree, kr, wait_for


# ----------------------------------------------------------------------------- NaN guard


def test_skip_nonfinite_skips_and_counts():
  tx = train_lib.skip_nonfinite(__import__("optax").adam(0.1))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  good = {"w": jnp.ones(3)}
  for grads, loss, in_a_row, total in (({"w": jnp.array([1.0, jnp.nan, 1.0])}, 1.0, 1, 1),
                                       (good, jnp.inf, 2, 2), (good, 1.0, 0, 2)):
    before = state.inner_state
    updates, state = tx.update(grads, state, params, loss=jnp.asarray(loss))
    assert (int(state.in_a_row), int(state.total)) == (in_a_row, total)
    if in_a_row:  # skipped: no update, no Adam moment touched
      assert not np.any(np.asarray(updates["w"]))
      for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(a, b)
    else:
      assert np.all(np.isfinite(updates["w"])) and np.any(np.asarray(updates["w"]))


def _poisoned_task(monkeypatch, bad_steps):
  """PretrainTask whose loss is NaN (gradients too) or inf (loss only) at `bad_steps`."""
  batches, loss_fn = pretrain.PretrainTask.batches, pretrain.PretrainTask.loss_fn
  example = pretrain.PretrainTask.example_batch

  def poison(batch, step):
    b = len(batch["input_ids"])
    nan = np.float32("nan") if step in bad_steps and step % 2 == 0 else 0
    inf = np.float32("inf") if step in bad_steps and step % 2 == 1 else 0
    return dict(batch, poison_mul=np.full(b, nan, np.float32), poison_add=np.full(b, inf, np.float32))

  monkeypatch.setattr(pretrain.PretrainTask, "example_batch", lambda self: poison(example(self), -1))
  monkeypatch.setattr(pretrain.PretrainTask, "batches", lambda self, start, stop: (
      poison(b, s) for s, b in enumerate(batches(self, start, stop), start)))

  def poisoned_loss(self, params, batch, rng):
    loss, metrics = loss_fn(self, params, batch, rng)
    # NaN * loss: NaN gradients; + inf: a non-finite loss with finite gradients.
    return loss * (1 + batch["poison_mul"].sum()) + batch["poison_add"].sum(), metrics

  monkeypatch.setattr(pretrain.PretrainTask, "loss_fn", poisoned_loss)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(reference_run, corpus_file,
                                                               tmp_path, monkeypatch):
  ref_dir, _ = reference_run
  config = tiny_pretrain_config(corpus_file, steps=8, keep_checkpoints=10, peak_flops=1e12,
                                max_nonfinite=3)
  config.tokenizer.path = os.path.join(ref_dir, "tokenizer")
  _poisoned_task(monkeypatch, bad_steps={2, 3})  # the updates of steps 3 and 4 (1-based)
  workdir = str(tmp_path / "skips")
  run(config, workdir, devices=jax.devices()[:1])
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  counts = {l["step"]: (l["nonfinite_in_a_row"], l["nonfinite_skipped"])
            for l in lines if l["split"] == "train"}
  assert counts == {2: (0, 0), 4: (2, 2), 6: (0, 2), 8: (0, 2)}
  at2, at4 = kr.final_state(workdir, 2)[1], kr.final_state(workdir, 4)[1]
  kept = [k for k in at2 if k.startswith("['params']") or "['inner_state']" in k]
  assert len(kept) > 100
  for k in kept:  # skipped: parameters and Adam moments exactly as before
    np.testing.assert_array_equal(at2[k], at4[k], err_msg=k)

  # Non-finite from the 3rd step on: three in a row stop the run; no checkpoint holds a NaN.
  _poisoned_task(monkeypatch, bad_steps=set(range(2, 8)))
  workdir = str(tmp_path / "diverged")
  with pytest.raises(train_lib.TrainingDiverged, match=r"step 5: the last 3 steps .* "
                     r"\(train.max_nonfinite=3\)"):
    run(config, workdir, devices=jax.devices()[:1])
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [2, 4]
  for step in steps:
    assert all_finite_arrays(kr.final_state(workdir, step)[1])


# ----------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoints_are_reported_and_skipped(lab, tmp_path):
  ref_dir = lab["pretrain_ref"]
  workdir = copy_tree(ref_dir, tmp_path / "damaged")
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) == [6, 9, 12]
  data = lambda step: max((os.path.join(r, n) for r, _, ns in os.walk(os.path.join(ckpt, step,
                                                                                    "default"))
                           for n in ns), key=os.path.getsize)
  with open(data("12"), "r+b") as f:  # one flipped byte: Orbax alone would read it back
    f.seek(os.path.getsize(data("12")) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  with open(data("9"), "r+b") as f:  # a truncated file
    f.truncate(os.path.getsize(data("9")) // 2)
  out = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert "checkpoints/12 is damaged" in out.stderr and "sha256 mismatch" in out.stderr
  assert "checkpoints/9 is damaged" in out.stderr and "were written" in out.stderr
  assert kr.resumed_step(out.stderr) == 6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_damaged"))) == ["12", "9"]
  step, state = kr.final_state(workdir)
  ref_step, ref = kr.final_state(ref_dir)
  assert step == ref_step == 12 and not kr.differing_leaves(state, ref)


def test_loading_a_checkpoint_never_unpickles(lab, monkeypatch):
  import pickle

  def refuse(*args, **kwargs):
    raise AssertionError("pickle used while loading a checkpoint")

  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  from jaxbert import handover
  step_dir = os.path.join(lab["pretrain_ref"], "checkpoints", "12")
  assert ckpt_lib._saved_state_metadata(step_dir) is not None
  _, state = kr.final_state(lab["pretrain_ref"])
  assert state and handover.open_source(lab["pretrain_ref"]).model_cfg.hidden_size == 32
  sources = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(REPO, "jaxbert"))
             for f in files if f.endswith(".py")]
  assert len(sources) > 30  # the package and its subpackages (data/, hf/)
  assert not [f for f in sources if "import pickle" in open(f).read()]


# ----------------------------------------------------------------------------- kill -9, SIGTERM


@pytest.mark.parametrize("task,kills", [("pretrain", ("write:3", "sealed:6", "step:8")),
                                        ("finetune", ("seal:8", "step:15"))])
def test_kill_9_then_restart_is_bitwise_equal(lab, finetune_ref, task, kills, tmp_path):
  ref = kr.final_state(lab["pretrain_ref"] if task == "pretrain" else finetune_ref)

  def trial(kill):
    workdir = str(tmp_path / kill.replace(":", "_"))
    return kill, kr.kill_trial(task, lab[f"{task}_config"], workdir, kill, ref, env=lab["env"])

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(trial, kills))
  failed = [(kill, how) for kill, (ok, how) in results if not ok]
  assert not failed


def test_sigterm_saves_a_checkpoint_and_the_restart_resumes(lab, tmp_path):
  workdir = str(tmp_path / "sigterm")
  cmd = kr.child_command("pretrain", lab["pretrain_config"], workdir, slow=0.4)
  with open(tmp_path / "stderr", "w+") as err:
    proc = subprocess.Popen(cmd, env=lab["env"], stderr=err, cwd=REPO)
    try:
      wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, proc)
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=120)
    finally:
      proc.kill()
    err.seek(0)
    stderr = err.read()
  assert proc.returncode == 0, stderr[-3000:]
  saved = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert 3 < saved < kr.PRETRAIN_STEPS
  assert f"SIGTERM: saved a checkpoint at step {saved}; exiting" in stderr
  again = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"])
  assert again.returncode == 0 and kr.resumed_step(again.stderr) == saved
  assert not kr.differing_leaves(kr.final_state(workdir)[1], kr.final_state(lab["pretrain_ref"])[1])
