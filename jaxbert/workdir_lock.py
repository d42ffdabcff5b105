"""One jaxbert process per workdir, and a fresh workdir left as found when a run fails.

`held(workdir)` takes WORKDIR/.jaxbert.lock with an exclusive `flock` and writes the
holder's pid, host and start time into it. A second process on the same workdir (a
second terminal, a re-submitted cluster job) is refused at once with one line naming
the holder. The kernel drops a `flock` when its process ends, however it ends, so the
lock of a process killed with SIGKILL is free and simply taken over: resume after a
kill needs no manual step. A run of several processes (jax.distributed) shares one
workdir: process 0 takes the lock for all of them.

`claimed(workdir)` holds the lock and, when the run fails on a user mistake
(UserError) before it has claimed the workdir (its config.json), removes what this
run created there (the tokenizer/, corpus/ and tfds/ caches, the folder itself if
it was new), so a fresh workdir is left as it was found. A workdir that held a run
keeps everything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import time
from typing import Iterator

from jaxbert.errors import UserError

log = logging.getLogger("jaxbert")

LOCK_FILE = ".jaxbert.lock"
# The trainer records the run's config here once the task is built: from then on
# the workdir holds a run, and nothing in it is removed on failure.
_CLAIM_FILE = "config.json"


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    text = ""
  return text or "another process (it has not written its pid yet)"


def _acquire(workdir: str) -> int:
  """An fd holding the exclusive lock on WORKDIR/.jaxbert.lock; UserError if taken."""
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise UserError(f"workdir {workdir} is in use by {_holder(path)} (lock file "
                      f"{path}); wait for that run to end or stop it, or use another "
                      "--workdir") from None
    # The holder we waited for may have removed the file before we locked it: then
    # our lock is on a file no one else sees, and the path must be locked again.
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  os.ftruncate(fd, 0)
  os.write(fd, f"jaxbert process {os.getpid()} on host {socket.gethostname()} "
               f"(started {started})\n".encode())
  return fd


def _release(workdir: str, fd: int) -> None:
  with contextlib.suppress(OSError):
    os.unlink(os.path.join(workdir, LOCK_FILE))
  os.close(fd)


def _is_process_0() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxbert import sharding as shd  # pylint: disable=g-import-not-at-top
  shd.maybe_initialize_distributed()  # before jax.process_index() starts the backend
  return jax.process_index() == 0


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s lock (creating the folder) for the block; see the module doc."""
  workdir = os.path.abspath(workdir)
  if not _is_process_0():
    yield
    return
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  fd = _acquire(workdir)
  try:
    yield
  finally:
    _release(workdir, fd)
    if created:  # a new folder the block left empty (it failed first) goes too
      with contextlib.suppress(OSError):
        os.rmdir(workdir)


@contextlib.contextmanager
def claimed(workdir: str) -> Iterator[None]:
  """`held`, and a fresh workdir left as found if the block fails on a UserError
  before the run claims the workdir; see the module doc."""
  workdir = os.path.abspath(workdir)
  before = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
  with held(workdir):
    try:
      yield
    except UserError:
      if _CLAIM_FILE not in before and _is_process_0():
        _undo(workdir, before)
      raise


def _undo(workdir: str, before: set[str]) -> None:
  """Removes what a failed run created in `workdir`, unless it had claimed it."""
  if not os.path.isdir(workdir) or _CLAIM_FILE in os.listdir(workdir):
    return  # the run got as far as claiming the workdir: keep what it wrote
  made = sorted(set(os.listdir(workdir)) - before - {LOCK_FILE})
  for name in made:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        os.remove(path)
  if made:
    log.info("removed what the failed run created in %s: %s", workdir, ", ".join(made))
