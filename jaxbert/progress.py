"""Progress of long work: a tqdm bar on a terminal, a plain line a minute in a log file.

tqdm redraws its bar with carriage returns, which a log file (nohup, a cluster job's
output) keeps as one line that grows for hours and that `tail` or `grep` cannot read.
When stderr is not a terminal, `progress_bar` returns `LogLines` instead: the same calls
(update, set_postfix, write, close, iteration), written as one timestamped line at most
every `interval_s` seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
             desc: str = "", unit: str = "it", enabled: bool = True,
             interval_s: float = 60.0, stream: TextIO | None = None):
  """A progress bar for a terminal, `LogLines` otherwise, a silent bar if not `enabled`."""
  stream = stream or sys.stderr
  if not enabled:
    return tqdm(iterable, total=total, disable=True)
  if _is_terminal(stream):
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
                dynamic_ncols=True, file=stream, mininterval=1.0)
  return LogLines(iterable, total=total, initial=initial, desc=desc, unit=unit,
                  interval_s=interval_s, stream=stream)


def quiet_tfds_when_logging() -> None:
  """tfds's own preparation bars go off when stderr is a file (they are the same \\r lines)."""
  if not _is_terminal(sys.stderr):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()


class QuietPreparation:
  """Mixin for jaxbert's tfds builders of local files: tfds prints "Downloading and
  preparing dataset Unknown size ..." and "... downloaded and prepared to ..." to stdout
  for every builder, though nothing is downloaded; one log line says what happens."""

  def _log_download_bytes(self) -> None:
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger("jaxbert").info("preparing %s into %s (once; later runs read it)",
                                      self.info.description or self.name, self.data_dir)

  def _log_download_done(self) -> None:
    pass


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


def _clock(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LogLines:
  """tqdm's interface, printed as lines: `desc: 1200/5000 (24%) 0.91 it/s ... ETA 1:09:37`."""

  def __init__(self, iterable: Iterable | None = None, *, total: int | None, initial: int,
               desc: str, unit: str, interval_s: float, stream: TextIO):
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      total = len(iterable)
    self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
    self.n = self._printed_n = initial
    self.interval_s, self.stream = interval_s, stream
    self._t0 = self._last = time.monotonic()
    # The rate counts from the first update on: before it lies set-up (a compile, the
    # first batch), which would make the first ETA absurd.
    self._first: tuple[int, float] | None = None
    self._postfix: dict[str, Any] = {}

  def __iter__(self):
    for item in self.iterable:
      yield item
      self.update(1)
    self.close()

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.monotonic()
    if self._first is None:
      self._first, self._last = (self.n, now), now  # the first line comes an interval later
    elif now - self._last >= self.interval_s:
      self._line(now)

  def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
    del refresh  # a line is printed on the next interval, not on every change
    self._postfix = {**(ordered_dict or {}), **kwargs}

  @staticmethod
  def write(message: str) -> None:
    tqdm.write(message)  # stdout, as tqdm's

  def close(self) -> None:
    if self.n != self._printed_n:
      self._line(time.monotonic())

  def _line(self, now: float) -> None:
    elapsed = now - self._t0
    rate = 0.0
    if self._first is not None and now > self._first[1]:
      rate = (self.n - self._first[0]) / (now - self._first[1])
    where = f"{self.n}"
    if self.total:
      where += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
    parts = [f"{self.desc}: {where}", *([f"{rate:.3g} {self.unit}/s"] if rate else []),
             *(f"{k}={v}" for k, v in self._postfix.items()), f"elapsed {_clock(elapsed)}"]
    if self.total and rate > 0 and self.n < self.total:
      parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
    print(time.strftime("%H:%M:%S ") + "  ".join(parts), file=self.stream, flush=True)
    self._last, self._printed_n = now, self.n
