"""train_and_evaluate: the training loop around an Experiment's jitted calls.

The loop resumes from the latest checkpoint, runs one device call at a time,
logs each epoch, checkpoints, turns SIGTERM/SIGINT into a checkpoint and a clean
exit, and stops a run that went non-finite. A copy of the state each call starts
from is kept (on the devices, so it is also a global array on a multi-host
mesh); if the loss or gradient of any step of a call is not finite, that last
good state is saved and FloatingPointError names the first bad step and the term.
(Guarding each step on the device instead, with a select over the state or by
keeping the call's input alive, cost 6-7% of training speed on CPU.)
"""

import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vae_jax import checkpoints, data, metrics, models, parallel, report
from vae_jax.config import check_resumable, load_workdir_config, validate_config
from vae_jax.experiment import Experiment
from vae_jax.progress import Progress, format_duration

#: A test KL below this many nats per image means that the posterior has collapsed: the
#: trainer then says so once.
COLLAPSED_KL = 0.01


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  loss_fn=None,
  model: models.LatentVariableModel | None = None,
  dataset: data.Dataset | None = None,
  command: str | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) in workdir, evaluates, and writes pictures and summary.json.

  Re-running with the same workdir resumes from the latest checkpoint.

  Args:
    config: an experiment config (see vae_jax/config.py).
    workdir: where checkpoints, metrics, pictures and summary.json go.
    loss_fn: loss_fn(model, key, x, labels, step) -> (loss, metrics), a scalar to
      minimize and a dict of scalars to log under their own names; None: the built-in
      LOSSES[config.objective].
    model: an NNX module implementing vae_jax.models.LatentVariableModel, trained from
      its current parameters (every seed starts from them); None: built from the config.
    dataset: the data; loaded from config.dataset when None.
    command: the command line to record in summary.json.

  Returns:
    The summary that is also written to summary.json.
  """
  validate_config(config)
  parallel.initialize_distributed(config)
  if dataset is None:
    dataset = data.load_for_config(config)
  experiment = Experiment(config, dataset, loss_fn=loss_fn, model=model)
  main_process = parallel.is_main_process()  # the only process that writes files
  _check_writable(workdir)
  checkpointer = checkpoints.Checkpointer(
    workdir, max_to_keep=config.max_checkpoints, primary=main_process
  )
  if checkpointer.latest_step() is not None:
    check_resumable(load_workdir_config(workdir), config)  # before config.json is replaced
    step, state = checkpointer.restore(experiment.abstract_state())
    logging.info("Resumed from the checkpoint at step %d in %s.", step, workdir)
  else:
    state, step = experiment.initial_state(), 0
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  keys, train_images, train_labels = experiment.train_inputs()
  # Evaluation splits as model inputs, binarized once: "valid" only where there is one.
  eval_splits = {
    split: experiment.eval_inputs(images, labels)
    for split, images, labels in (
      ("valid", dataset.validation_images, dataset.validation_labels),
      ("test", dataset.test_images, dataset.test_labels),
    )
    if len(images)
  }
  test_x, test_labels = eval_splits["test"]

  writer = metrics.MetricWriter(workdir, resumed_step=step) if main_process else None
  images_per_call = experiment.steps_per_call * config.batch_size * config.num_seeds
  epoch_metrics, epoch_seconds, seconds_per_epoch = [], 0.0, []
  device = report.device_description()  # logged per epoch: a resume may run elsewhere
  first_epoch = step // experiment.steps_per_epoch
  progress = Progress(
    config.num_epochs, "training", unit="epochs", initial=first_epoch, log_lines=False
  )
  collapse_reported = False
  stopped_early = experiment.early_stopping and bool(
    np.all(jax.device_get(experiment.early_stopping_numbers(state)["stopped"]))
  )
  try:
    with _StopSignal() as stop, progress:
      while step < experiment.total_steps and not stopped_early:
        start = time.perf_counter()
        # A copy, since train_chunk donates and overwrites its input.
        last_good_state = experiment.copy_state(state)
        state, call_metrics = experiment.train_chunk(state, keys, train_images, train_labels)
        call_metrics = jax.device_get(call_metrics)
        epoch_seconds += time.perf_counter() - start
        if not all(np.all(np.isfinite(values)) for values in call_metrics.values()):
          checkpointer.save(step, last_good_state)
          # Re-run the call step by step (deterministic: all randomness is (seed, step)).
          per_step = experiment.trace_chunk(last_good_state, keys, train_images, train_labels)
          failure = first_failure(jax.device_get(per_step[1]), step)
          raise FloatingPointError(
            f"Training diverged at {failure}. The last good state (step {step}) is saved in "
            f"{workdir}; lower the learning rate or check the data before resuming."
          )
        del last_good_state  # freed before the next call's copy
        step += experiment.steps_per_call
        epoch_metrics.append(call_metrics)
        if step % experiment.steps_per_epoch == 0:
          epoch = step // experiment.steps_per_epoch
          seconds_per_epoch.append(epoch_seconds)
          train = {
            f"train/{name}": np.mean([m[name] for m in epoch_metrics], axis=0)
            for name in epoch_metrics[0]
          }
          evaluations = {
            f"{split}/{k}": v
            for split, (x, labels) in eval_splits.items()
            for k, v in jax.device_get(experiment.evaluate(state["params"], x, labels)).items()
          }
          if experiment.early_stopping:
            state = experiment.update_early_stopping(state, evaluations["valid/elbo"], epoch)
            early_stopping = jax.device_get(experiment.early_stopping_numbers(state))
            evaluations["valid/best_elbo"] = early_stopping["best_elbo"]
            evaluations["valid/best_epoch"] = early_stopping["best_epoch"]
            stopped_early = bool(np.all(early_stopping["stopped"]))
          record = report.mean_over_seeds({**train, **evaluations})
          record["epoch"] = epoch
          record["images_per_second"] = len(epoch_metrics) * images_per_call / epoch_seconds
          record["train_seconds"] = epoch_seconds
          record["device"] = device
          checkpoint_now = (
            epoch % config.checkpoint_every_epochs == 0
            or step == experiment.total_steps
            or stopped_early
          )
          if checkpoint_now:
            checkpointer.save(step, state)
          if writer:
            writer.write(step, record)
          eta = np.median(seconds_per_epoch) * (config.num_epochs - epoch)
          line = (
            f"epoch {epoch}/{config.num_epochs} step {step} | train loss "
            f"{record['train/loss']:.2f} | test elbo {record['test/elbo']:.2f} (reconstruction "
            f"{record['test/reconstruction']:.2f}, kl {record['test/kl']:.2f}) | "
            f"{record['images_per_second']:.0f} img/s | ETA {format_duration(eta)}"
          )
          progress.update(1, loss=f"{record['train/loss']:.2f}", elbo=f"{record['test/elbo']:.2f}")
          if abs(record["test/kl"]) < COLLAPSED_KL and not collapse_reported:
            collapse_reported = True
            progress.write(
              f"Warning: the test KL is {record['test/kl']:.4f} nats at epoch {epoch}: q(z|x) "
              "no longer depends on x (posterior collapse), and the model is the pixel "
              "marginal. KL warm-up (kl_warmup_epochs) or non-saturating layers may avoid it; "
              "see docs/guide/priors.md on the VampPrior with tanh layers."
            )
          if experiment.early_stopping:
            line += (
              f" | valid elbo {record['valid/elbo']:.2f}, best "
              f"{record['valid/best_elbo']:.2f} (epoch {early_stopping['best_epoch'].max()})"
            )
          # A bar shows every epoch; above it, a line at each checkpoint (and the last epoch).
          if checkpoint_now or not progress.interactive:
            progress.write(line)
          if stopped_early:
            progress.write(
              f"Early stopping at epoch {epoch}: no seed's validation ELBO improved in the "
              f"last {config.early_stopping_epochs} epochs after warm-up; the best epoch's "
              "parameters are evaluated."
            )
          epoch_metrics, epoch_seconds = [], 0.0
        # Every process must take the same branch: a signal to one host stops them all.
        stop_signal = parallel.max_over_processes(stop.signal or 0)
        if stop_signal:
          checkpointer.save(step, state)
          logging.warning("Signal %d: saved a checkpoint at step %d; exiting.", stop_signal, step)
          raise SystemExit(128 + stop_signal)
  finally:
    if writer:
      writer.close()
    checkpointer.close()

  # Over every call of the run, resumed ones included, from metrics.jsonl (which only
  # process 0 writes; so only its summary has the time per device).
  records = metrics.read_records(workdir) if main_process else []
  by_device = report.training_seconds_by_device(records)
  training_seconds = parallel.from_main_process(sum(by_device.values()))
  summary = report.final_evaluation(
    experiment, state, step, test_x, test_labels, workdir, command, training_seconds, by_device
  )
  if main_process:
    print(report.human_summary(summary, workdir), flush=True)
  return summary


class _StopSignal:
  """Turns SIGTERM/SIGINT into a request to checkpoint and stop after the current call."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self.previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self.previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def first_failure(step_metrics: dict[str, np.ndarray], first_step: int) -> str:
  """'step S (seed i): non-finite kl, gradient_norm' for the first bad step of a call."""
  finite = {name: np.isfinite(values) for name, values in step_metrics.items()}  # [seeds, steps]
  bad = ~np.all(np.stack(list(finite.values())), axis=0)
  if not bad.any():  # not reproduced step by step: say where the call started
    return f"a step of the call from step {first_step}"
  seed, step = min(zip(*np.nonzero(bad)), key=lambda sv: (sv[1], sv[0]))
  terms = [name for name, ok in finite.items() if not ok[seed, step]]
  return f"step {first_step + step} (seed {seed}): non-finite {', '.join(terms)}"


def _check_writable(workdir: str) -> None:
  """Fails at once with what to do, where orbax would wait minutes for a failed save."""
  for directory in (workdir, os.path.join(workdir, "checkpoints")):
    try:
      os.makedirs(directory, exist_ok=True)
      probe = os.path.join(directory, f".write_test_{os.getpid()}")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as error:
      raise PermissionError(
        f"Cannot write to {directory} ({error.strerror or error}); choose a --workdir you can "
        "write to, or fix its permissions."
      ) from error


def restore_model(
  workdir: str,
  *,
  seed: int = 0,
  model: models.LatentVariableModel | None = None,
  dataset: data.Dataset | None = None,
) -> tuple[models.LatentVariableModel, int]:
  """The model of a workdir's newest intact checkpoint, and the checkpoint's step.

  With early stopping, the model is the best validation epoch's (what the run reports).

  Args:
    workdir: a workdir of train_and_evaluate.
    seed: which of the run's seeds.
    model: for a run trained with model=..., a module of the same structure (its
      parameters are replaced); None: the model its config describes.
    dataset: the data (for the image shape and classes); loaded from the config when None.
  """
  config = load_workdir_config(workdir)
  if dataset is None:
    dataset = data.load_for_config(config)
  experiment = Experiment(config, dataset, model=model)
  step, state = experiment.restore(workdir)
  params = experiment.seed_params(experiment.final_params(state), seed)
  return experiment.model(jax.device_get(params)), step
