"""Progress on long waits: a tqdm bar on a terminal or in a notebook, log lines otherwise.

In a log file a bar's carriage returns are noise, so there the same progress
arrives as absl log lines, about every tenth of the way, with counts and an ETA.
"""

import importlib.util
import sys
import time

import tqdm
from absl import logging


def _interactive() -> bool:
  return sys.stderr.isatty() or "ipykernel" in sys.modules  # a terminal, Jupyter or Colab


def _bar_class():
  """tqdm.auto (a widget in Jupyter and Colab) where ipywidgets is installed; else a text
  bar, since tqdm.auto would warn that ipywidgets is missing and fall back to one."""
  if importlib.util.find_spec("ipywidgets") is None:
    return tqdm.tqdm
  return importlib.import_module("tqdm.auto").tqdm  # in a notebook, its import is what warns


def format_duration(seconds: float) -> str:
  """'1h02m03s', or '2m03s' under an hour."""
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
  """with Progress(total, "evaluation", unit="images") as progress: progress.update(n)."""

  def __init__(
    self, total: int, description: str, *, unit: str, initial: int = 0, log_lines: bool = True
  ):
    """log_lines=False: no log lines of its own (the caller logs each step itself)."""
    self.total, self.description, self.unit = total, description, unit
    self.log_lines = log_lines
    self.done = self.logged = initial
    self.start, self.initial = time.perf_counter(), initial
    self.bar = None
    if _interactive():
      self.bar = _bar_class()(
        total=total, initial=initial, desc=description, unit=f" {unit}", dynamic_ncols=True
      )

  def update(self, count: int, **postfix) -> None:
    """Advances by count units; postfix values show beside the bar."""
    self.done += count
    if self.bar is not None:
      self.bar.update(count)
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)
      return
    if not self.log_lines:
      return
    if self.done - self.logged >= self.total / 10 or self.done == self.total:
      self.logged = self.done
      elapsed = time.perf_counter() - self.start
      rate = (self.done - self.initial) / max(elapsed, 1e-9)
      eta = (self.total - self.done) / rate if rate else 0.0
      logging.info(
        "%s: %d/%d %s (%.0f%%), %s elapsed, ETA %s",
        self.description,
        self.done,
        self.total,
        self.unit,
        100 * self.done / self.total,
        format_duration(elapsed),
        format_duration(eta),
      )

  @property
  def interactive(self) -> bool:
    """Whether progress shows as a bar (a terminal or a notebook), not as log lines."""
    return self.bar is not None

  def write(self, message: str) -> None:
    """A line above the bar, or a log line when there is no bar."""
    if self.bar is not None:
      self.bar.write(message, file=sys.stderr)
    else:
      logging.info("%s", message)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.bar is not None:
      self.bar.close()
