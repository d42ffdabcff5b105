"""SIGTERM (schedulers, TPU maintenance) -> every running trial saves at its next step
boundary and stops; the same command continues.

One process: a signal handler sets a flag. The handler is installed once for the
outermost user (a sweep installs it for its whole duration, so a SIGTERM between two
of its trials is seen too) and restored when that user is done. Several processes:
they must all stop at the same step, so JAX's preemption service (which catches
SIGTERM itself once jax.distributed is initialised) picks the step, asked through
Orbax.
"""

from __future__ import annotations

import signal

import jax


class Preemption:
  _depth = 0
  _flag = False
  _previous = None

  def __init__(self, mngr=None):
    self._mngr = mngr
    self._local = jax.process_count() == 1
    if self._local:
      if Preemption._depth == 0:
        Preemption._flag = False
        Preemption._previous = signal.signal(signal.SIGTERM, Preemption._handle)
      Preemption._depth += 1

  @staticmethod
  def _handle(signum, frame):
    del signum, frame
    Preemption._flag = True

  @staticmethod
  def requested() -> bool:
    """Whether this process has received SIGTERM (single-process runs)."""
    return Preemption._flag

  def reached(self, step: int) -> bool:
    if self._local or self._mngr is None:
      return Preemption._flag
    return self._mngr.reached_preemption(step)

  def restore(self):
    if self._local:
      Preemption._depth -= 1
      if Preemption._depth == 0:
        signal.signal(signal.SIGTERM, Preemption._previous)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.restore()
