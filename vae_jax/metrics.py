"""Metric writers: metrics.jsonl and TensorBoard event files (no TensorFlow needed)."""

import json
import os
from typing import Mapping

import tensorboardX


def _record(line: str) -> dict | None:
  """A metrics.jsonl line's record; None for a line cut short when a run was killed mid-write."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  return record if isinstance(record, dict) and "step" in record else None


def read_records(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, one per logged epoch ([] when there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [record for line in f if (record := _record(line)) is not None]


class MetricWriter:
  """Appends one JSON line per record to WORKDIR/metrics.jsonl and writes TensorBoard scalars.

  resumed_step: the step a resumed run starts from. Records of later steps, written
  before the run died and to be written again, are dropped from metrics.jsonl, and
  TensorBoard is told to purge them from its events.
  """

  def __init__(self, workdir: str, *, resumed_step: int = 0, member_names=None):
    """member_names: the TensorBoard name of each value of a per-member list (a sweep's
    "beta=0.5,seed=0"); seed_i when None."""
    self.member_names = member_names
    path = os.path.join(workdir, "metrics.jsonl")
    if resumed_step and os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if (record := _record(line)) and record["step"] <= resumed_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
    self.jsonl = open(path, "a")
    self.tensorboard = tensorboardX.SummaryWriter(
      logdir=workdir, purge_step=resumed_step + 1 if resumed_step else None
    )

  def write(self, step: int, scalars: Mapping[str, float | list[float]]) -> None:
    """Appends one record to metrics.jsonl and its scalars to TensorBoard."""
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    for name, value in scalars.items():
      if isinstance(value, str):  # text (the device) is for metrics.jsonl only
        continue
      if isinstance(value, list):  # one value per seed, or per sweep member
        for i, v in enumerate(value):
          member = self.member_names[i] if self.member_names else f"seed_{i}"
          self.tensorboard.add_scalar(f"{name}/{member}", v, step)
      else:
        self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    """Flushes and closes both files."""
    self.jsonl.close()
    self.tensorboard.close()
