"""SIGTERM (schedulers, TPU maintenance) or Ctrl-C -> every running trial saves at its
next step boundary and stops; the same command continues.

One process: a signal handler sets a flag. The handler is installed once for the
outermost user (a sweep installs it for its whole duration, so a signal between two
of its trials is seen too) and restored when that user is done. Ctrl-C (SIGINT) is
handled as SIGTERM, except that the command then exits with status 130 (`interrupted`)
and a second Ctrl-C ends the process at once, without waiting for the step or the save
in flight (the checkpoints already committed are intact; a half-written one is set
aside when the run resumes). Several processes: they must all stop at the same step,
so JAX's preemption service (which catches SIGTERM itself once jax.distributed is
initialised) picks the step, asked through Orbax.
"""

from __future__ import annotations

import os
import signal

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  _depth = 0
  _flag = False
  _signal: int | None = None   # the first signal received
  _previous: dict = {}
  # (workdir, step) of each run that stopped for Ctrl-C, for the command's last line.
  interrupted_runs: list[tuple[str, int]] = []

  def __init__(self, mngr=None):
    self._mngr = mngr
    self._local = jax.process_count() == 1
    if self._local:
      if Preemption._depth == 0:
        Preemption._flag = False
        Preemption._signal = None
        Preemption.interrupted_runs = []
        Preemption._previous = {s: signal.signal(s, Preemption._handle) for s in _SIGNALS}
      Preemption._depth += 1

  @staticmethod
  def _handle(signum, frame):
    del frame
    if signum == signal.SIGINT and Preemption._signal == signal.SIGINT:
      # A second Ctrl-C: the user does not want to wait for the step and the save.
      os.write(2, b"\njaxbert: interrupted again: exiting without saving\n")
      os._exit(130)  # pylint: disable=protected-access
    Preemption._flag = True
    Preemption._signal = Preemption._signal or signum

  @staticmethod
  def requested() -> bool:
    """Whether this process has received SIGTERM or SIGINT (single-process runs)."""
    return Preemption._flag

  @staticmethod
  def signal_name() -> str:
    """"SIGTERM" or "Ctrl-C": what stopped the run (SIGTERM when the multi-process
    preemption service did)."""
    return "Ctrl-C" if Preemption._signal == signal.SIGINT else "SIGTERM"

  @staticmethod
  def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) was the first signal received."""
    return Preemption._signal == signal.SIGINT

  @staticmethod
  def note_stopped(workdir: str, step: int) -> None:
    """Records a run saved and stopped for Ctrl-C (the command reports it and exits 130)."""
    if Preemption._signal == signal.SIGINT:
      Preemption.interrupted_runs.append((workdir, step))

  def reached(self, step: int) -> bool:
    if self._local or self._mngr is None:
      return Preemption._flag
    return self._mngr.reached_preemption(step)

  def restore(self):
    if self._local:
      Preemption._depth -= 1
      if Preemption._depth == 0:
        for s, previous in Preemption._previous.items():
          signal.signal(s, previous)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.restore()


def interrupted_message() -> str | None:
  """The command's last line after runs stopped for Ctrl-C, or None if none did; the
  record is cleared (a later command in this process starts afresh)."""
  runs, Preemption.interrupted_runs = Preemption.interrupted_runs, []
  if not runs:
    return None
  where = "; ".join(f"step {step} in {workdir}" for workdir, step in runs)
  return f"interrupted: saved a checkpoint at {where}; the same command continues"
