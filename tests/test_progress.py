"""Progress output: a bar on a terminal, plain lines in a log file (jaxbert/progress.py)."""

from __future__ import annotations

import io

from tqdm import tqdm

from jaxbert.progress import LogLines, progress_bar


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_log_file_gets_lines_with_eta_and_no_carriage_returns():
  out = io.StringIO()
  bar = progress_bar(total=10, initial=2, desc="pretrain-tiny", unit="step", stream=out,
                     interval_s=0.0)
  assert isinstance(bar, LogLines)
  bar.set_postfix(loss="5.210")
  for _ in range(3):
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  # The first update only starts the rate's clock (before it: compiling); then one line
  # per update at interval 0, and close adds none (nothing new).
  assert len(lines) == 2 and "pretrain-tiny: 4/10 (40%)" in lines[0]
  assert "pretrain-tiny: 5/10 (50%)" in lines[-1] and "step/s" in lines[-1]
  assert "loss=5.210" in lines[-1] and "ETA " in lines[-1]


def test_log_lines_wait_for_the_interval_and_close_prints_the_last_state():
  out = io.StringIO()
  bar = progress_bar(range(7), desc="tokenizing", unit="doc", stream=out, interval_s=3600.0)
  assert list(bar) == list(range(7))  # iterating wraps the iterable like tqdm
  bar.close()  # a second close adds nothing
  lines = out.getvalue().splitlines()
  assert len(lines) == 1 and "tokenizing: 7/7 (100%)" in lines[0] and "ETA" not in lines[0]


def test_terminal_gets_tqdm_and_disabled_is_silent():
  tty = _Terminal()
  bar = progress_bar(total=4, desc="x", stream=tty)
  assert isinstance(bar, tqdm)
  bar.close()
  quiet = io.StringIO()
  bar = progress_bar(total=4, desc="x", enabled=False, stream=quiet)
  bar.update(4)
  bar.close()
  assert quiet.getvalue() == ""
