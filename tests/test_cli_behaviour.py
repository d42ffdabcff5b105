"""What the command does around training (issue 21): Ctrl-C, loader workers, settings
that would be ignored, quiet output, the end-of-run summary, the sweep plot."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reliability_lab import REPO, kr, wait_for

WORKERS = ["--config.data.num_workers=2"]


def _children(pid):
  """Pids of the processes whose parent is `pid` (loader workers, resource tracker)."""
  out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
  return [int(p) for p in out.stdout.split()]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def _start(lab, workdir, tmp_path, slow):
  """A tiny pre-training with two loader workers, in its own process group (as a
  terminal's foreground job: Ctrl-C reaches every process of the group)."""
  cmd = kr.child_command("pretrain", lab["pretrain_config"], workdir, slow=slow, overrides=WORKERS)
  out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
  proc = subprocess.Popen(cmd, env=lab["env"], stdout=out, stderr=err, cwd=REPO,
                          start_new_session=True)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, proc)
  wait_for(lambda: len(_children(proc.pid)) >= 3, 60, proc)  # 2 workers, resource tracker
  return proc, out, err


def _ended(proc, out, err):
  try:
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  out.seek(0)
  err.seek(0)
  return out.read(), err.read()


def test_ctrl_c_saves_exits_130_in_one_line_and_the_run_resumes(lab, tmp_path):
  workdir = str(tmp_path / "run")
  proc, out, err = _start(lab, workdir, tmp_path, slow=0.4)
  children = _children(proc.pid)
  os.killpg(proc.pid, signal.SIGINT)
  stdout, stderr = _ended(proc, out, err)
  assert proc.returncode == 130, stderr[-3000:]
  saved = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert 3 < saved < kr.PRETRAIN_STEPS
  lines = [l for l in stderr.splitlines() if l.startswith("jaxbert:")]
  assert lines == [f"jaxbert: interrupted: saved a checkpoint at step {saved} in {workdir}; "
                   "the same command continues"], stderr[-3000:]
  for noise in ("Traceback", "KeyboardInterrupt", "leaked shared_memory"):
    assert noise not in stderr, stderr[-3000:]
  assert "Downloading and preparing dataset" not in stdout
  wait_for(lambda: not any(_alive(p) for p in children), 10)

  again = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"],
                       overrides=WORKERS)
  assert again.returncode == 0 and kr.resumed_step(again.stderr) == saved, again.stderr[-3000:]
  assert "leaked shared_memory" not in again.stderr and "Traceback" not in again.stderr
  # The end-of-run summary: where the files are, and the command that continues.
  last = f"{workdir}/checkpoints/{kr.PRETRAIN_STEPS} (step {kr.PRETRAIN_STEPS})"
  assert last in again.stdout
  assert f"tensorboard --logdir {workdir}/tensorboard" in again.stdout
  assert f"{workdir}/metrics.jsonl" in again.stdout
  assert f"jaxbert finetune --config configs/finetune/local.py --workdir {workdir}-finetune " \
         f"--config.init={workdir}" in again.stdout
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_a_second_ctrl_c_exits_at_once_and_kill_9_leaves_no_process(lab, tmp_path):
  workdir = str(tmp_path / "twice")
  proc, out, err = _start(lab, workdir, tmp_path, slow=1.0)
  children = _children(proc.pid)
  os.killpg(proc.pid, signal.SIGINT)
  time.sleep(0.3)
  os.killpg(proc.pid, signal.SIGINT)
  t0 = time.monotonic()
  _, stderr = _ended(proc, out, err)
  assert proc.returncode == 130 and time.monotonic() - t0 < 10, stderr[-3000:]
  assert stderr.rstrip().endswith("jaxbert: interrupted again: exiting without saving")
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  wait_for(lambda: not any(_alive(p) for p in children), 10)

  # kill -9: no handler runs; workers and the resource tracker still go.
  (tmp_path / "kill").mkdir()
  proc, out, err = _start(lab, str(tmp_path / "killed"), tmp_path / "kill", slow=1.0)
  children = _children(proc.pid)
  proc.kill()
  _ended(proc, out, err)
  wait_for(lambda: not any(_alive(p) for p in children), 10)


def _cli(args, capsys):
  from jaxbert import cli  # pylint: disable=g-import-not-at-top
  code = cli.main(args)
  return code, capsys.readouterr()


def test_settings_that_would_be_ignored_are_refused_or_win(lab, tmp_path, capsys):
  fin, pre = lab["finetune_config"], lab["pretrain_config"]
  ref = lab["pretrain_ref"]
  cases = [
      (["finetune", "--config", fin, "--config.model.preset=base"],
       f"config.model.preset='base' asks for num_layers=12, hidden_size=768, num_heads=12, "
       f"intermediate_size=3072, but config.init={ref} holds a model with num_layers=2, "
       "hidden_size=32, num_heads=2, intermediate_size=64"),
      (["finetune", "--config", fin, "--config.model.override_preset_sizes=True",
        "--config.model.num_layers=2", "--config.model.hidden_size=48"],
       "asks for hidden_size=48, num_heads=12, intermediate_size=3072, but config.init"),
      (["pretrain", "--config", pre, "--config.model.override_preset_sizes=False",
        "--config.model.preset=mini", "--config.model.num_layers=6"],
       "config.model.num_layers=6 is ignored: config.model.preset='mini' sets num_layers=4"),
      (["finetune", "--config", fin, "--config.optim.learning_rate=1e-4"],
       "did you mean --config.optim.lr?"),
  ]
  for args, expected in cases:
    workdir = tmp_path / "w"
    code, out = _cli([args[0], "--workdir", str(workdir), *args[1:]], capsys)
    assert code == 2 and expected in out.err, out.err
    assert "Traceback" not in out.err and not workdir.exists()


def test_explicit_steps_win_over_epochs_and_the_summary_names_the_results(lab, tmp_path):
  workdir = str(tmp_path / "ft")
  run = kr.run_child("finetune", lab["finetune_config"], workdir, env=lab["env"],
                     overrides=["--config.train.steps=5"])  # the config says epochs=2.0
  assert run.returncode == 0, run.stderr[-3000:]
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [4, 5]
  assert "Downloading and preparing dataset" not in run.stdout + run.stderr
  assert f"results      {workdir}/results.json, {workdir}/predictions.jsonl" in run.stdout
  assert f"jaxbert predict --checkpoint {workdir} --input FILE" in run.stdout
  assert f"jaxbert export-hf {workdir} --out {workdir}-hf" in run.stdout
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(steps) == 5


def test_bad_corpus_paths_are_said_first_and_leave_nothing(lab, tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n \n\n")
  shared = tmp_path / "shared_tfds"  # a data_dir outside the workdir
  for corpus, expected in ((tmp_path / "none.txt", f"{tmp_path}/none.txt"),
                           (empty, "has no text")):
    run = subprocess.run(
        [sys.executable, "-m", "jaxbert.cli", "pretrain", "--config", lab["pretrain_config"],
         "--workdir", str(tmp_path / "w"), f"--config.data.corpus={corpus}",
         f"--config.data.tfds_data_dir={shared}"],
        env=lab["env"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert " INFO training" not in run.stderr and "Traceback" not in run.stderr
    assert not shared.exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("values", [[1e-5, 2e-5, 3e-5, 5e-5, 1e-4], [16, 32], ["a", "b"]])
def test_the_sweep_plot_is_written_with_short_tick_labels(tmp_path, values):
  from jaxbert import sweep_report  # pylint: disable=g-import-not-at-top
  records = [{"id": f"t{i}", "metric": "accuracy", "value": 0.5 + 0.01 * i,
              "higher_is_better": True, "overrides": {"optim.lr": v, "train.seed": 0}}
             for i, v in enumerate(values)]
  path = tmp_path / "plot.png"
  sweep_report.plot(str(path), records, ["optim.lr", "train.seed"], "t1")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [sweep_report.tick_label(v) for v in (3e-5, 1e-4, 0.1, 32)] == ["3e-5", "1e-4", "0.1", "32"]
