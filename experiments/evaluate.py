"""Evaluates a trained workdir: python -m experiments.evaluate --workdir=DIR.

Loads DIR's config.json and latest checkpoint and writes DIR/eval.json and
DIR/eval.md: the test ELBO, IWAE bounds for K in --iwae_samples, the
importance-sampled log-likelihood with --num_samples samples (each with its
standard error over test examples), bits/dim for 8-bit data, active units, KL
per latent dimension, the binarization and the command; and the pictures
(samples, reconstructions, interpolations, latent scatter, 2-D manifold,
training curves) as PNGs in DIR. A sweep's workdir is evaluated member by member and
compared as the trainer's summary compares it (docs/guide/sweeps.md). A workdir trained
with a model of one's own needs --model=MODULE:FUNCTION, the function that builds it:

  python -m experiments.evaluate --workdir=DIR --model=experiments.hvae:model_for_config
"""

import importlib
import os
import shlex
import sys

from absl import app, flags, logging

from experiments import cli
from vae_jax import data, parallel, report
from vae_jax.config import load_workdir_config, validate_config
from vae_jax.experiment import Experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", None, "Importance samples for log p(x) (default: the config's, 5,000)."
)
_IWAE_SAMPLES = flags.DEFINE_list("iwae_samples", None, "IWAE bounds' K (default: 1,5,50).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid"], "The split to evaluate.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the config's TFDS data_dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Override the config's manual_dir.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "For a workdir trained with a model of one's own: MODULE:FUNCTION, where FUNCTION(config, "
  "dataset) builds a module of the same structure (e.g. experiments.hvae:model_for_config).",
)
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  workdir = _WORKDIR.value
  config = load_workdir_config(workdir)
  if _NUM_SAMPLES.value is not None:
    config.eval_num_samples = _NUM_SAMPLES.value
  if _IWAE_SAMPLES.value is not None:
    try:
      config.eval_iwae_samples = [int(k) for k in _IWAE_SAMPLES.value]
    except ValueError:
      raise app.UsageError(
        f"--iwae_samples={','.join(_IWAE_SAMPLES.value)}: give integers, e.g. 1,5,50."
      ) from None
  for name, flag in (("data_dir", _DATA_DIR), ("manual_dir", _MANUAL_DIR)):
    if flag.value is not None:
      config[name] = flag.value
  validate_config(config)
  parallel.initialize_distributed(config)
  dataset = data.load_for_config(config)
  experiment = Experiment(config, dataset, model=_model(config, dataset))
  step, state = experiment.restore(workdir)  # no checkpoint: a one-line error
  images, labels = {
    "test": (dataset.test_images, dataset.test_labels),
    "valid": (dataset.validation_images, dataset.validation_labels),
  }[_SPLIT.value]
  if not len(images):
    raise app.UsageError(f"{config.dataset} has no {_SPLIT.value} split in this config.")
  x, labels = experiment.eval_inputs(images, labels)
  command = shlex.join(["python", "-m", "experiments.evaluate", *sys.argv[1:]])
  # The best validation epoch's parameters with early stopping; every member of a sweep.
  results = report.evaluation_report(
    experiment, state, x, labels, split=_SPLIT.value, step=step, command=command
  )
  report.publish(experiment, state, x, labels, workdir, results, "eval.json")
  if not parallel.is_main_process():
    return
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(report.markdown(results, _SPLIT.value))
  print(report.human_summary(results, workdir))


def _model(config, dataset):
  """The module --model builds for config and dataset; None without the flag."""
  if _MODEL.value is None:
    return None
  module_name, _, function_name = _MODEL.value.partition(":")
  try:
    build = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError, ValueError) as error:
    raise app.UsageError(
      f"--model={_MODEL.value}: expected MODULE:FUNCTION, an importable module and a "
      f"function in it, e.g. experiments.hvae:model_for_config ({error})."
    ) from None
  return build(config, dataset)


if __name__ == "__main__":
  cli.run(main)
