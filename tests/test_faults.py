"""Faults through the real command: a workdir in use, a stale lock after kill -9, a full
disk during a checkpoint write, a checkpoint that lost its integrity record, and a
fresh workdir left as found after a run fails on bad input."""

import os
import signal
import subprocess
import sys
import time

from jaxbert import checkpoint as ckpt_lib
from jaxbert import cli
from jaxbert.workdir_lock import LOCK_FILE
from reliability_lab import REPO, copy_tree, error_lines, file_hashes, kr, wait_for


def _jaxbert(lab, command, config, workdir, *overrides, timeout=600):
  return subprocess.run([sys.executable, "-m", "jaxbert.cli", command, "--config", config,
                         "--workdir", str(workdir), *overrides], env=lab["env"], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _one_error(proc, expected, status=2):
  errors = error_lines(proc.stderr)
  assert proc.returncode == status, proc.stderr[-3000:]
  assert len(errors) == 1 and expected in errors[0], (errors, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return errors[0]


def test_a_second_process_is_refused_and_a_killed_ones_lock_is_taken_over(lab, tmp_path):
  workdir = str(tmp_path / "run")
  ref = kr.final_state(lab["pretrain_ref"])
  log = open(tmp_path / "first.txt", "w")
  first = subprocess.Popen(kr.child_command("pretrain", lab["pretrain_config"], workdir,
                                            slow=0.5),
                           env=lab["env"], cwd=REPO, stderr=log)
  try:
    wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "3")), 300, first)
    before = file_hashes(os.path.join(workdir, "checkpoints", "3"))
    t = time.monotonic()
    second = _jaxbert(lab, "pretrain", lab["pretrain_config"], workdir)
    refused_in = time.monotonic() - t
    assert first.poll() is None, "the first run ended before the second was started"
    message = _one_error(second, f"is in use by jaxbert process {first.pid} on host ")
    assert workdir in message and refused_in < 60
    assert file_hashes(os.path.join(workdir, "checkpoints", "3")) == before
    # kill -9: the lock file stays behind, but its lock went with the process.
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    first.kill()
    log.close()
  assert os.path.exists(os.path.join(workdir, LOCK_FILE))
  again = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"])
  assert again.returncode == 0, again.stderr[-3000:]
  assert kr.resumed_step(again.stderr) >= 3
  assert not kr.differing_leaves(kr.final_state(workdir)[1], ref[1])
  assert not os.path.exists(os.path.join(workdir, LOCK_FILE))  # released at the end


def test_a_full_disk_during_a_checkpoint_is_one_error_and_resume_is_exact(lab, tmp_path):
  workdir = str(tmp_path / "full")
  proc = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"],
                      kill="full:6")
  root = os.path.join(workdir, "checkpoints")
  message = _one_error(proc, f"checkpoint {root}/6 could not be written: No space left on "
                             "device")
  assert "the earlier checkpoints are intact (newest: step 3)" in message
  assert sorted(os.listdir(root)) == ["3"]  # no partial step 6, not even a temporary one
  assert ckpt_lib.integrity_problem(os.path.join(root, "3")) is None
  before = file_hashes(os.path.join(root, "3"))
  again = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"])
  assert again.returncode == 0, again.stderr[-3000:]
  assert kr.resumed_step(again.stderr) == 3
  ref = kr.final_state(lab["pretrain_ref"])
  assert not kr.differing_leaves(kr.final_state(workdir)[1], ref[1])
  if os.path.isdir(os.path.join(root, "3")):  # still kept (keep_checkpoints)
    assert file_hashes(os.path.join(root, "3")) == before


def test_a_checkpoint_without_its_integrity_record_is_set_aside(lab, tmp_path):
  workdir = copy_tree(lab["pretrain_ref"], tmp_path / "unsealed")
  newest = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")))
  step_dir = os.path.join(workdir, "checkpoints", str(newest))
  os.remove(os.path.join(step_dir, ckpt_lib.INTEGRITY_JSON))
  # And one byte of an array file changed: without the record nothing would notice.
  data = max((os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "default"))
              for n in ns), key=os.path.getsize)
  with open(data, "r+b") as f:
    f.seek(os.path.getsize(data) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 1]))
  proc = kr.run_child("pretrain", lab["pretrain_config"], workdir, env=lab["env"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoint {step_dir} is damaged: its integrity record" in proc.stderr
  assert "older jaxbert" not in proc.stderr
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", str(newest)))
  assert kr.resumed_step(proc.stderr) < newest
  ref = kr.final_state(lab["pretrain_ref"])
  assert not kr.differing_leaves(kr.final_state(workdir)[1], ref[1])


def test_a_new_workdir_is_not_left_behind_by_a_failed_run(lab, tmp_path, capsys):
  binary = tmp_path / "array.npy"
  binary.write_bytes(b"\x93NUMPY\x01\x00" + bytes(range(256)) * 8)
  workdir = tmp_path / "new" / "run"
  status = cli.main(["pretrain", "--config", lab["pretrain_config"], "--workdir", str(workdir),
                     f"--config.data.corpus={binary}"])
  err = capsys.readouterr().err
  assert status == 2
  assert error_lines(err) == [f"jaxbert: error: corpus file {binary} is not text: it holds NUL "
                              "bytes (the first at byte 7): a binary file, or text in "
                              "UTF-16/UTF-32 (convert it to UTF-8); give text files as "
                              "config.data.corpus (one sentence or paragraph per line)"]
  assert not os.path.exists(workdir)


def test_a_run_that_fails_after_preparing_caches_removes_them(lab, tmp_path):
  """The corpus is prepared and the tokenizer trained, then the corpus is refused: it
  is one document, and evaluation needs some held out."""
  one_doc = tmp_path / "one_document.txt"
  with open(lab["corpus"], "rb") as f:
    one_doc.write_bytes(b"".join(line for line in f if line.strip()))
  workdir = tmp_path / "fresh"
  os.makedirs(workdir)
  (workdir / "mine.txt").write_text("kept")
  proc = _jaxbert(lab, "pretrain", lab["pretrain_config"], workdir,
                  f"--config.data.corpus={one_doc}")
  _one_error(proc, "the document store holds 1 document(s)")
  assert f"removed what the failed run created in {workdir}: tfds, tokenizer" in proc.stderr
  assert sorted(os.listdir(workdir)) == ["mine.txt"]
  # The same command on a workdir that holds a run is refused and changes nothing there.
  resumed = copy_tree(lab["pretrain_ref"], tmp_path / "resumed")
  before = file_hashes(resumed)
  proc = _jaxbert(lab, "pretrain", lab["pretrain_config"], resumed,
                  f"--config.data.corpus={one_doc}")
  _one_error(proc, "holds a run with a different config")
  assert file_hashes(resumed) == before
