"""Orbax checkpoints of the whole train state, for resuming a run exactly where it stopped.

Each saved step's files get SHA-256 digests in WORKDIR/checkpoint_digests.json, so
a damaged checkpoint (a truncated or flipped file, a missing manifest) is
recognized before it is trained on; resuming then falls back to the newest
checkpoint that is intact, and the damaged step is replaced when it is saved again.
"""

import contextlib
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import sys
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from vae_jax import parallel


def _digests(directory: str) -> dict[str, str]:
  """{path relative to directory: sha256} of every file under it."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      out[os.path.relpath(path, directory)] = digest.hexdigest()
  return out


def _cause(error: Exception) -> str:
  """The reason of a failed save in a few words: the OS's, where there is one."""
  text = str(error).strip()
  os_error = re.search(r"os_error_code='?(\d+)", text)  # how tensorstore reports errno
  if os_error:
    return os.strerror(int(os_error.group(1)))
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return text.splitlines()[0][:300] if text else repr(error)


class _FailedWriteReports(std_logging.Filter):
  """Drops the error reports of a checkpoint write that failed: orbax's writer threads
  log each failed array with its traceback, and asyncio logs each abandoned write when it
  is garbage-collected (at exit, say). The failure itself is raised once, with what to do."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno < std_logging.ERROR:
      return True
    if "orbax" in record.pathname:
      return False
    message = record.getMessage()
    return not ("never retrieved" in message and "orbax" in message)


_FAILED_WRITE_REPORTS = _FailedWriteReports()


@contextlib.contextmanager
def _quiet_failed_writes():
  """A save that fails midway (a quota, a file size limit) fails in orbax's threads, and
  the writes still in flight then report through sys.unraisablehook that their event loop
  is closed. Those reports, and only those, are dropped: during the save, and after a
  failed one until the process ends, since the writes it abandoned finish when they will."""
  absl_logger = logging.get_absl_logger()
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"
    ):
      previous_hook(unraisable)

  absl_logger.addFilter(_FAILED_WRITE_REPORTS)
  sys.unraisablehook = hook
  try:
    yield
  except Exception:
    std_logging.getLogger("asyncio").addFilter(_FAILED_WRITE_REPORTS)
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    raise
  else:
    sys.unraisablehook = previous_hook
  finally:
    absl_logger.removeFilter(_FAILED_WRITE_REPORTS)


class Checkpointer:
  """Saves and restores the train state under WORKDIR/checkpoints, one folder per step.

  primary: whether this process writes the digests (process 0 of a multi-host run).
  """

  def __init__(self, workdir: str, *, max_to_keep: int, primary: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.digests_path = os.path.join(os.path.abspath(workdir), "checkpoint_digests.json")
    self.primary = primary
    self.damaged: set[int] = set()
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint, or None where there is none."""
    return self.manager.latest_step()

  def _read_digests(self) -> dict[str, dict[str, str]]:
    if not os.path.exists(self.digests_path):
      return {}
    with open(self.digests_path) as f:
      return json.load(f)

  def save(self, step: int, state: Any) -> None:
    """Saves synchronously, so a run that dies right after keeps this checkpoint.

    A step that is already saved is kept as it is (the state of a step is unique),
    unless it was found damaged.
    """
    if step in self.damaged:
      self.manager.delete(step)
      self.damaged.discard(step)
    elif step in self.manager.all_steps():
      return
    # Checked first, so that a full disk stops the run before anything is half-written.
    needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if parallel.max_over_processes(int(free < needed)):  # all processes stop, or none
      cause = (
        f"{free / 2**20:.1f} MiB free on its disk, about {needed / 2**20:.1f} MiB needed"
        if free < needed
        else "another process's disk has no room for it"
      )
      raise OSError(self._save_failure(step, cause))
    try:
      with _quiet_failed_writes():
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 (a quota, a lost mount, a full disk: all alike)
      # Orbax writes into STEP.orbax-checkpoint-tmp and renames it only when done.
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}.") and name.endswith("-tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      raise OSError(self._save_failure(step, _cause(error))) from error
    if self.primary:
      steps = {str(s) for s in self.manager.all_steps()}
      digests = {s: d for s, d in self._read_digests().items() if s in steps}
      digests[str(step)] = _digests(os.path.join(self.directory, str(step)))
      temporary = self.digests_path + ".tmp"
      with open(temporary, "w") as f:
        json.dump(digests, f)
      os.replace(temporary, self.digests_path)  # never half-written

  def _save_failure(self, step: int, cause: str) -> str:
    """The error message of a save that failed: its cause, and what to do."""
    kept = [s for s in self.manager.all_steps() if s != step]
    resume = (
      f"it resumes from the checkpoint at step {max(kept)}, the last one saved"
      if kept
      else "no earlier checkpoint exists, so the run starts over"
    )
    return (
      f"Could not save the checkpoint of step {step} in {self.directory} ({cause}). Once it "
      "can be written (a full disk needs room: each checkpoint holds the whole train state, "
      "and --config.max_checkpoints sets how many are kept), run the same command, or "
      f"train_and_evaluate, in this workdir again: {resume}."
    )

  def _check_digests(self, step: int) -> None:
    expected = self._read_digests().get(str(step))
    if expected is None:  # saved before digests were kept
      return
    found = _digests(os.path.join(self.directory, str(step)))
    bad = sorted(p for p in expected if found.get(p) != expected[p])
    if bad:
      raise ValueError(f"files changed or missing since they were saved: {', '.join(bad[:3])}")

  def restore(self, abstract_state: Any) -> tuple[int, Any]:
    """The newest intact checkpoint as (step, state), with the structure, shapes and dtypes
    of abstract_state. Damaged newer ones are reported, skipped and later replaced."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"{self.directory} holds no checkpoint: train in this workdir first.")
    errors = []
    for step in steps:
      try:
        self._check_digests(step)
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as error:  # noqa: BLE001 (any failure: try the previous step)
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
        logging.warning(
          "The checkpoint at step %d in %s is damaged (%s); trying the one before.",
          step,
          self.directory,
          message,
        )
        errors.append(f"step {step}: {message}")
        self.damaged.add(step)
        continue
      return step, state
    raise ValueError(
      f"No checkpoint in {self.directory} can be restored ({'; '.join(errors)}). "
      "Train in a new --workdir, or delete this one's checkpoints/ to start it over."
    )

  def close(self) -> None:
    """Waits for pending saves and releases the checkpoint manager."""
    self.manager.close()
