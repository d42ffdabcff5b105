"""Reliability: exact resume after kill -9 and SIGTERM, sealed checkpoints, the NaN guard,
bad inputs through the real command, and multi-process runs on loopback.

Most runs are child processes of tools/kill_resume.py (the real `jaxbert` command with a
kill armed), sharing one JAX compilation cache; the full kill set is that tool's job.
"""

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_pretrain_config
from jaxbert import checkpoint as ckpt_lib
from jaxbert import pretrain
from jaxbert import train as train_lib
from jaxbert.run import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kill_resume",
                                               os.path.join(REPO, "tools", "kill_resume.py"))
kr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kr)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
  """Corpus, task, configs, a shared compilation cache and the pre-training reference."""
  root = str(tmp_path_factory.mktemp("reliability"))
  env = kr.child_env(os.path.join(root, "jax_cache"))
  paths = kr.prepare(root, env)
  return {"root": root, "env": env, **paths}


@pytest.fixture(scope="module")
def finetune_ref(lab):
  return kr.reference("finetune", lab, lab["root"], lab["env"])


def _copy(src, dst):
  shutil.copytree(src, dst, symlinks=True)
  return str(dst)


def _hashes(folder):
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      path = os.path.join(root, n)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _wait_for(predicate, timeout, proc=None):
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"the run ended first (exit {proc.returncode})")
    if time.monotonic() > deadline:
      raise AssertionError("timed out waiting")
    time.sleep(0.05)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("jaxbert: error:")]


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
  monkeypatch.setattr(pretrain.PretrainTask, "batches", lambda self, start: (
      poison(b, s) for s, b in enumerate(batches(self, start), start)))

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
    assert _finite(kr.final_state(workdir, step)[1])


def _finite(state):
  return all(np.all(np.isfinite(v)) for v in state.values() if v.dtype.kind == "f")


# ----------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoints_are_reported_and_skipped(lab, tmp_path):
  ref_dir = lab["pretrain_ref"]
  workdir = _copy(ref_dir, tmp_path / "damaged")
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
  assert step == ref_step == 12 and not kr.bitwise_equal(state, ref)


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
      _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, proc)
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
  assert not kr.bitwise_equal(kr.final_state(workdir)[1], kr.final_state(lab["pretrain_ref"])[1])


# ----------------------------------------------------------------------------- bad inputs


def _wordpiece_tokenizer(folder, n=700):
  os.makedirs(folder)
  pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
  pieces += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + [f"w{i}" for i in range(n)]
  with open(os.path.join(folder, "vocab.txt"), "w") as f:
    f.write("\n".join(pieces) + "\n")
  return str(folder)


def _bad_task(lab, folder, split, line, row):
  folder = _copy(lab["task"], folder)
  path = os.path.join(folder, f"{split}.tsv")
  with open(path, "rb") as f:
    rows = f.read().split(b"\n")
  rows[line - 1] = row.encode()
  with open(path, "wb") as f:
    f.write(b"\n".join(rows))
  return folder


def _cases(lab, tmp):
  """name -> (command, config, workdir source or None, overrides, expected in the message)."""
  pre, fin = lab["pretrain_config"], lab["finetune_config"]
  empty = tmp / "empty.txt"
  empty.write_text("\n\n")
  wrong_vocab = _wordpiece_tokenizer(tmp / "other_tokenizer")
  edited = _copy(lab["pretrain_ref"], tmp / "edited_pretrain")
  with open(os.path.join(edited, "config.json")) as f:
    cfg = json.load(f)
  cfg["model"]["intermediate_size"] = 128
  with open(os.path.join(edited, "config.json"), "w") as f:
    json.dump(cfg, f)
  stray_tab = _bad_task(lab, tmp / "tab", "train", 5, "ka lo\tmi\tyes")
  bad_label = _bad_task(lab, tmp / "label", "dev", 7, "ka lo mi\tmaybe")
  return {
      "missing corpus": ("pretrain", pre, None, [f"--config.data.corpus={tmp}/no_corpus.txt"],
                         "no_corpus.txt does not exist"),
      "empty corpus": ("pretrain", pre, None, [f"--config.data.corpus={empty}"],
                       "has no text"),
      "unknown config key": ("pretrain", pre, "pretrain", ["--config.train.stpes=3"],
                             "did you mean --config.train.steps?"),
      "workdir of another config": ("pretrain", pre, "pretrain", ["--config.optim.lr=0.5"],
                                    "holds a run with a different config (optim.lr: 0.001 -> 0.5)"),
      "config file that does not exist": ("pretrain", str(tmp / "no_config.py"), "pretrain", [],
                                          "no_config.py does not exist"),
      "tokenizer that does not fit the checkpoint": (
          "pretrain", pre, "pretrain+tokenizer", [],
          "params/bert/embeddings/word_embeddings/embedding is float32[512, 32] there but "
          "float32[768, 32] here"),
      "model config that does not fit the checkpoint": (
          "finetune", fin, None, [f"--config.init={edited}"], "but the model expects"),
      "tokenizer given with a checkpoint": (
          "finetune", fin, None, [f"--config.tokenizer.path={wrong_vocab}"],
          "set either config.init"),
      "init that does not exist": ("finetune", fin, None, [f"--config.init={tmp}/no_run"],
                                   "no_run: no such file or directory"),
      "task that does not exist": ("finetune", fin, None, [f"--config.data.task={tmp}/no_task"],
                                   "no_task: no such file or directory"),
      "TSV row with a stray tab": (
          "finetune", fin, None,
          [f"--config.data.task={stray_tab}"],
          "train.tsv:5: 3 tab-separated columns but the header has 2"),
      "label outside the label set": (
          "finetune", fin, None,
          [f"--config.data.task={bad_label}"],
          "dev.tsv:7: label 'maybe' is not in the label set ['no', 'yes']"),
      "diverging run": ("pretrain", pre, None,
                        ["--config.optim.lr=1e30", "--config.train.max_nonfinite=2"],
                        "(train.max_nonfinite=2)"),
  }, wrong_vocab


def test_bad_inputs_give_one_clear_message_and_exit_2(lab, tmp_path):
  cases, wrong_vocab = _cases(lab, tmp_path)

  def attempt(item):
    name, (command, config, source, overrides, expected) = item
    workdir = tmp_path / name.replace(" ", "_")
    if source is None:  # a fresh workdir, holding only a file of the user's
      os.makedirs(workdir)
      (workdir / "notes.txt").write_text("mine")
    else:
      _copy(lab["pretrain_ref"], workdir)
      if source.endswith("+tokenizer"):
        shutil.rmtree(workdir / "tokenizer")
        shutil.copytree(wrong_vocab, workdir / "tokenizer")
    before = _hashes(workdir)
    proc = subprocess.run([sys.executable, "-m", "jaxbert.cli", command, "--config", config,
                           "--workdir", str(workdir), *overrides], env=lab["env"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    after = _hashes(workdir)
    problems = []
    if proc.returncode != 2:
      problems.append(f"exit status {proc.returncode}")
    errors = _error_lines(proc.stderr)
    if len(errors) != 1 or expected not in errors[0]:
      problems.append(f"message {errors}, expected one with {expected!r}")
    if "Traceback" in proc.stderr:
      problems.append("a traceback")
    if {k: after.get(k) for k in before} != before:
      problems.append("earlier files changed: "
                      f"{[k for k in before if after.get(k) != before[k]][:5]}")
    claimed = {"config.json", "checkpoints"} & set(os.listdir(workdir))
    if source is None and name != "diverging run" and claimed:  # it failed before training
      problems.append(f"the failed run claimed the workdir: {claimed}")
    return name, problems, proc.stderr[-1500:]

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(attempt, cases.items()))
  failed = {name: (problems, tail) for name, problems, tail in results if problems}
  assert not failed, json.dumps(failed, indent=1)
  diverged = str(tmp_path / "diverging_run")
  for step in os.listdir(os.path.join(diverged, "checkpoints")):  # saved before it stopped
    assert _finite(kr.final_state(diverged, int(step))[1])


def test_undecodable_bytes_and_long_lines_are_reported(lab, finetune_ref):
  pre = open(lab["pretrain_ref"] + ".log").read()
  assert pre.count("corpus.txt: 1 undecodable byte sequence(s) replaced with U+FFFD") == 1
  assert "sentences are longer than data.max_seq_len=32 allows" in pre
  fin = open(finetune_ref + ".log").read()
  assert fin.count("train.tsv: 1 undecodable byte sequence(s) replaced with U+FFFD") == 1
  assert re.search(r"split 'train': \d+ of 96 examples are longer than data.max_seq_len=32 "
                   "pieces and were truncated", fin)


# ----------------------------------------------------------------------------- multi-process


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(lab, workdir, logs, n=2, slow=0.0):
  """`n` processes of one run on loopback; their stderr goes to logs/<i>.txt."""
  port = _free_port()
  os.makedirs(logs, exist_ok=True)
  procs = []
  for i in range(n):
    env = dict(lab["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    cmd = kr.child_command("pretrain", lab["pretrain_config"], workdir, slow=slow)
    with open(os.path.join(logs, f"{i}.txt"), "w") as err:
      procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stderr=err))
  return procs


def _finish(procs, logs, timeout=600):
  for p in procs:
    p.wait(timeout=timeout)
  return [open(os.path.join(logs, f"{i}.txt")).read() for i in range(len(procs))]


def _train_losses(workdir):
  return [l["loss"] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
          if l["split"] == "train"]


@pytest.fixture(scope="module")
def two_process_run(lab, tmp_path_factory):
  root = tmp_path_factory.mktemp("two_processes")
  workdir = str(root / "run")
  procs = _launch(lab, workdir, root / "logs")
  outs = _finish(procs, root / "logs")
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  return workdir, outs


def test_two_processes_reach_the_loss_of_one(lab, two_process_run):
  workdir, outs = two_process_run
  assert "2 process(es), 2 device(s)" in outs[0]
  np.testing.assert_allclose(_train_losses(workdir), _train_losses(lab["pretrain_ref"]),
                             rtol=2e-5)
  step, state = kr.final_state(workdir)
  ref_step, ref = kr.final_state(lab["pretrain_ref"])
  assert step == ref_step
  for k in ref:
    np.testing.assert_allclose(state[k], ref[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_a_killed_process_stops_the_other_and_both_resume(lab, two_process_run, tmp_path):
  workdir = str(tmp_path / "killed")
  procs = _launch(lab, workdir, tmp_path / "logs", slow=0.4)
  try:
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, procs[0])
    procs[1].send_signal(signal.SIGKILL)
    t = time.monotonic()
    procs[0].wait(timeout=120)
    waited = time.monotonic() - t
  finally:
    for p in procs:
      p.kill()
  stderr = open(tmp_path / "logs" / "0.txt").read()
  assert procs[0].returncode != 0 and waited < 60, (procs[0].returncode, waited, stderr[-3000:])
  assert ("lost contact with another process" in stderr
          or "another task died" in stderr), stderr[-3000:]
  assert "Traceback" not in stderr
  # Both started again: they resume from the last checkpoint and end as the unkilled run.
  procs = _launch(lab, workdir, tmp_path / "logs2")
  outs = _finish(procs, tmp_path / "logs2")
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
  assert kr.resumed_step(outs[0]) >= 3
  assert not kr.bitwise_equal(kr.final_state(workdir)[1], kr.final_state(two_process_run[0])[1])
