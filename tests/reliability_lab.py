"""What the reliability tests share: tools/kill_resume.py (as `kr`) and small helpers.

The `lab` and `finetune_ref` fixtures (tests/conftest.py) build on `kr`: a corpus, a task,
configs, one JAX compilation cache and the pre-training reference, made once per session
for test_reliability.py, test_bad_inputs.py and test_multiprocess.py.
"""

import hashlib
import importlib.util
import os
import shutil
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kill_resume",
                                               os.path.join(REPO, "tools", "kill_resume.py"))
kr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kr)


def copy_tree(src, dst):
  """A copy of folder `src` at `dst` (links kept); its path."""
  shutil.copytree(src, dst, symlinks=True)
  return str(dst)


def file_hashes(folder):
  """{relative path: sha256} of every file under `folder`."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      path = os.path.join(root, n)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def wait_for(predicate, timeout, proc=None):
  """Polls `predicate` until true; fails on timeout or when `proc` ends first."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"the run ended first (exit {proc.returncode})")
    if time.monotonic() > deadline:
      raise AssertionError("timed out waiting")
    time.sleep(0.05)


def error_lines(stderr):
  """The `jaxbert: error:` lines of a run's stderr."""
  return [l for l in stderr.splitlines() if l.startswith("jaxbert: error:")]


def all_finite_arrays(state):
  """Whether every float array in {name: array} is finite."""
  return all(np.all(np.isfinite(v)) for v in state.values() if v.dtype.kind == "f")
