"""Orbax checkpoints of the whole train state, for resuming a run exactly where it stopped.

Each saved step's files get SHA-256 digests in WORKDIR/checkpoint_digests.json, so
a damaged checkpoint (a truncated or flipped file, a missing manifest) is
recognized before it is trained on; resuming then falls back to the newest
checkpoint that is intact, and the damaged step is replaced when it is saved again.
"""

import hashlib
import json
import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


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
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()
    if self.primary:
      steps = {str(s) for s in self.manager.all_steps()}
      digests = {s: d for s, d in self._read_digests().items() if s in steps}
      digests[str(step)] = _digests(os.path.join(self.directory, str(step)))
      temporary = self.digests_path + ".tmp"
      with open(temporary, "w") as f:
        json.dump(digests, f)
      os.replace(temporary, self.digests_path)  # never half-written

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
    self.manager.close()
