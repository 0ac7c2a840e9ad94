"""Metric writers: metrics.jsonl and TensorBoard event files (no TensorFlow needed)."""

import json
import os
from typing import Mapping

import tensorboardX


class MetricWriter:
  """Appends one JSON line per record to WORKDIR/metrics.jsonl and writes TensorBoard scalars."""

  def __init__(self, workdir: str):
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tensorboard = tensorboardX.SummaryWriter(logdir=workdir)

  def write(self, step: int, scalars: Mapping[str, float | list[float]]) -> None:
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    for name, value in scalars.items():
      if isinstance(value, list):  # one value per seed
        for seed, v in enumerate(value):
          self.tensorboard.add_scalar(f"{name}/seed_{seed}", v, step)
      else:
        self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    self.jsonl.close()
    self.tensorboard.close()
