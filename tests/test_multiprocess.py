"""Runs of several processes on loopback (`jax.distributed` on CPU), killed and resumed."""

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from reliability_lab import REPO, kr, wait_for


# ----------------------------------------------------------------------------- multi-process


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(lab, workdir, logs, n=2, slow=0.0, **extra_env):
  """`n` processes of one run on loopback; their stderr goes to logs/<i>.txt."""
  port = _free_port()
  os.makedirs(logs, exist_ok=True)
  procs = []
  for i in range(n):
    env = dict(lab["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i), **extra_env)
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
    wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, procs[0])
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
  # Heartbeats may be missed here for longer than the 20 s default on a loaded 2-core
  # machine (once in a full suite run, both processes were declared dead 39 s after
  # resuming); the detection is what the first half tests, so this half waits longer.
  procs = _launch(lab, workdir, tmp_path / "logs2", JAXBERT_HEARTBEAT_TIMEOUT="90")
  outs = _finish(procs, tmp_path / "logs2")
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
  assert kr.resumed_step(outs[0]) >= 3
  assert not kr.differing_leaves(kr.final_state(workdir)[1], kr.final_state(two_process_run[0])[1])
