"""A checkpoint write that fails because the disk is full: one UserError, not tracebacks.

Orbax writes a step in background threads; when the file system is full each of its
writers fails, logs its traceback and the save re-raises one of the errors (from
tensorstore, a ValueError that mentions the cause) at the next save or wait. Here
the manager turns that into one UserError naming the step folder and the cause,
removes the partial folder (Orbax never committed it: it is not a step), and keeps
the logged tracebacks of those failures off stderr.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from jaxbert.errors import UserError

_NO_SPACE = ("No space left on device", "Disk quota exceeded")


def _no_space(e: BaseException | None) -> str | None:
  """"No space left on device" (or the quota's) if that caused `e`, else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
      return os.strerror(e.errno)
    for text in _NO_SPACE:
      if text in str(e):
        return text
    e = e.__cause__ or e.__context__
  return None


_seen = []  # a write failed for lack of space in this process


def _drop_no_space_noise(record: logging.LogRecord) -> bool:
  """Orbax logs every failed write of a save with its traceback (tens of them when
  the disk is full); the save's error is reported once, as a UserError."""
  exc = record.exc_info[1] if record.exc_info else None
  if _no_space(exc) or any(t in record.getMessage() for t in _NO_SPACE):
    _seen.append(True)
    return False
  return True


_default_unraisablehook = sys.unraisablehook


def _unraisable(unraisable) -> None:
  """After such a failure, tensorstore's callbacks for the other writes find their
  event loops closed ("Event loop is closed", printed as unraisable); the same noise."""
  if not (_seen and isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value)):
    _default_unraisablehook(unraisable)


sys.unraisablehook = _unraisable


# absl: Orbax's own logs; asyncio: its writers' tasks, never awaited once a sibling failed.
for _name in ("absl", "asyncio"):
  logging.getLogger(_name).addFilter(_drop_no_space_noise)


class CheckpointManager(ocp.CheckpointManager):
  """Orbax's manager, whose saves that fail for lack of space end in one UserError
  naming the step folder; the partial folder is removed, the earlier ones are intact."""

  _writing: int | None = None  # the step of the save in flight

  @contextlib.contextmanager
  def _no_space_is_user_error(self):
    try:
      yield
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      cause = _no_space(e)
      if cause is None:
        raise
      _seen.append(True)
      raise UserError(self._no_space_message(cause)) from None

  def _no_space_message(self, cause: str) -> str:
    root = str(self.directory)
    if jax.process_count() == 1:  # frees the space it took; no other process writes there
      for name in os.listdir(root):
        if ".orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    done = [s for s in self.all_steps() if s != self._writing and
            os.path.isdir(os.path.join(root, str(s)))]
    kept = (f"the earlier checkpoints are intact (newest: step {max(done)})" if done else
            "there is no earlier checkpoint")
    return (f"checkpoint {os.path.join(root, str(self._writing))} could not be written: "
            f"{cause} ({shutil.disk_usage(root).free // 2**20} MiB free there); {kept} and "
            "the partial one is removed. Free some space (or lower train.keep_checkpoints), "
            "then run the same command to resume")

  def save(self, step, *args, **kwargs):
    with self._no_space_is_user_error():  # an earlier save's failure surfaces here too
      saved = super().save(step, *args, **kwargs)
    self._writing = step
    return saved

  def wait_until_finished(self):
    with self._no_space_is_user_error():
      return super().wait_until_finished()

  def close(self):
    with self._no_space_is_user_error():
      return super().close()
