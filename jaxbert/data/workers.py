"""What the input pipeline's worker processes run at start-up."""

from __future__ import annotations

import os
import signal
import threading
import time


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """grain's `worker_init_fn`: the worker ignores Ctrl-C and ends when the training
  process does.

  Ctrl-C on a terminal sends SIGINT to every process of the foreground group, the
  workers included; the training process handles it (jaxbert/preemption.py: it saves,
  then closes the loader), so a worker must not die of it with a KeyboardInterrupt
  traceback of its own. After kill -9 of the training process no handler runs there,
  and grain's workers would live on as orphans, each holding memory and the run's
  stdout/stderr (a caller waiting for those to close would wait forever). A daemon
  thread notices the change of parent and ends the worker; a clean exit never needs it.
  The resource tracker, which the workers share with the training process, ends once
  they have all gone.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
