"""Trains a VAE: python -m experiments.train --config=experiments/configs/default.py --workdir=DIR.

Kept short on purpose: it parses flags and calls vae_jax.train.train_and_evaluate,
which notebooks call directly. Override any config field with --config.FIELD=VALUE;
unknown fields and values of the wrong type fail before any work starts.
Re-running the same command resumes from the latest checkpoint in DIR.
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli
from vae_jax import train

_CONFIG = config_flags.DEFINE_config_file(
  "config", "experiments/configs/default.py", "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Orbax logs every save step by step; keep the log to one line per epoch.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  command = shlex.join(["python", "-m", "experiments.train", *sys.argv[1:]])
  config = cli.config_value(_CONFIG)
  train.train_and_evaluate(config, _WORKDIR.value, command=command)


if __name__ == "__main__":
  cli.run(main)
