"""Orbax checkpoints of the whole train state, for resuming a run exactly where it stopped."""

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores the train state under WORKDIR/checkpoints, one folder per step."""

  def __init__(self, workdir: str, *, max_to_keep: int):
    self.manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves synchronously, so a run that dies right after keeps this checkpoint.

    A step that is already saved is kept as it is (the state of a step is unique).
    """
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()

  def restore(self, abstract_state: Any) -> Any:
    """The latest checkpoint, with the structure, shapes and dtypes of abstract_state."""
    step = self.manager.latest_step()
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def close(self) -> None:
    self.manager.close()
