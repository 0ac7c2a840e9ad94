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

from vae_jax import checkpoints, data, metrics, models, parallel, report, sweeps
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
    experiment.check_model_of(workdir)
    step, state = checkpointer.restore(experiment.abstract_state())
    logging.info("Resumed from the checkpoint at step %d in %s.", step, workdir)
  else:
    state, step = experiment.initial_state(), 0
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    experiment.record_model(workdir)
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

  writer = (
    metrics.MetricWriter(workdir, resumed_step=step, member_names=sweeps.member_names(config))
    if main_process
    else None
  )
  images_per_call = experiment.steps_per_call * config.batch_size * experiment.num_members
  epoch_metrics, epoch_seconds, seconds_per_epoch = [], 0.0, []
  device = report.device_description()  # logged per epoch: a resume may run elsewhere
  first_epoch = step // experiment.steps_per_epoch
  progress = Progress(
    config.num_epochs, "training", unit="epochs", initial=first_epoch, log_lines=False
  )
  collapse_reported = False
  member_names = sweeps.member_names(config)
  diverged_at = np.array(jax.device_get(experiment.diverged_at(state)))  # [members]
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
        finite = np.all([np.isfinite(v) for v in call_metrics.values()], axis=0)  # [members]
        newly_diverged = ~finite & (diverged_at < 0)
        if newly_diverged.any():
          # Re-run the call step by step (deterministic: all randomness is (seed, step)).
          per_step = experiment.trace_chunk(last_good_state, keys, train_images, train_labels)
          failures = first_failures(jax.device_get(per_step[1]), step)
          if not config.sweep or np.all(newly_diverged | (diverged_at >= 0)):
            checkpointer.save(step, last_good_state)
            first = min(failures, key=lambda m: (failures[m][0], m), default=None)
            member = int(np.flatnonzero(newly_diverged)[0]) if first is None else first
            raise FloatingPointError(
              f"Training diverged at {describe_failure(failures, member, member_names)}. The "
              f"last good state (step {step}) is saved in {workdir}; lower the learning rate "
              "or check the data before resuming."
            )
          # A sweep goes on: the diverged members keep their last good state, marked.
          for member in np.flatnonzero(newly_diverged):
            diverged_at[member] = failures.get(member, (step, []))[0]
            failure = describe_failure(failures, member, member_names)
            progress.write(
              f"Warning: a sweep member diverged, {failure}; it keeps its state of step "
              f"{step} and trains no further (the others go on)."
            )
        if (diverged_at >= 0).any():
          state = experiment.freeze_members(state, last_good_state, diverged_at)
          call_metrics = {  # a diverged member's metrics: NaN from then on
            k: np.where(diverged_at >= 0, np.nan, v) for k, v in call_metrics.items()
          }
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
            for k, v in jax.device_get(
              experiment.evaluate(state["params"], experiment.swept(state), x, labels)
            ).items()
          }
          if experiment.early_stopping:
            state = experiment.update_early_stopping(state, evaluations["valid/elbo"], epoch)
            early_stopping = jax.device_get(experiment.early_stopping_numbers(state))
            evaluations["valid/best_elbo"] = early_stopping["best_elbo"]
            evaluations["valid/best_epoch"] = early_stopping["best_epoch"]
            stopped_early = bool(np.all(early_stopping["stopped"]))
          record = report.mean_over_seeds({**train, **evaluations}, sweep=bool(config.sweep))
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
          if config.sweep:  # means over the members say little: the best one, by name
            elbos = evaluations["test/elbo"]
            best = int(np.nanargmax(elbos))
            line = (
              f"epoch {epoch}/{config.num_epochs} step {step} | {experiment.num_members} "
              f"members, test elbo best {elbos[best]:.2f} ({member_names[best]}), median "
              f"{np.nanmedian(elbos):.2f} | {int(np.sum(diverged_at >= 0))} diverged | "
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


def first_failures(step_metrics: dict[str, np.ndarray], first_step: int) -> dict:
  """{member: (its first non-finite step, the non-finite terms)} from a call's per-step
  metrics ([members, steps]); a member absent did not go non-finite step by step."""
  finite = {name: np.isfinite(values) for name, values in step_metrics.items()}
  bad = ~np.all(np.stack(list(finite.values())), axis=0)  # [members, steps]
  failures = {}
  for member in np.flatnonzero(bad.any(axis=1)):
    step = int(np.argmax(bad[member]))
    terms = [name for name, ok in finite.items() if not ok[member, step]]
    failures[int(member)] = (first_step + step, terms)
  return failures


def describe_failure(failures: dict, member: int, member_names=None) -> str:
  """'step S (seed i): non-finite kl, gradient_norm', or a sweep member's by its values."""
  who = f"member {member_names[member]}" if member_names else f"seed {member}"
  if member not in failures:  # not reproduced step by step
    return f"a step of the call ({who})"
  step, terms = failures[member]
  return f"step {step} ({who}): non-finite {', '.join(terms)}"


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
  member: int | dict = 0,
  model: models.LatentVariableModel | None = None,
  dataset: data.Dataset | None = None,
) -> tuple[models.LatentVariableModel, int]:
  """The model of a workdir's newest intact checkpoint, and the checkpoint's step.

  With early stopping, the model is the best validation epoch's (what the run reports).

  Args:
    workdir: a workdir of train_and_evaluate.
    member: which of the run's members: an index (seed config.seed + i of a run without a
      sweep), or a sweep member's values, {"beta": 0.5, "seed": 1} (the seed defaults to
      the config's), as summary.json's sweep lists them.
    model: for a run trained with model=..., a module of the same structure (its
      parameters are replaced); None: the model its config describes.
    dataset: the data (for the image shape and classes); loaded from the config when None.
  """
  config = load_workdir_config(workdir)
  index = sweeps.member_index(config, member)
  if dataset is None:
    dataset = data.load_for_config(config)
  experiment = Experiment(config, dataset, model=model)
  step, state = experiment.restore(workdir)
  params, swept = experiment.take_member(
    (experiment.final_params(state), experiment.swept(state)), index
  )
  return experiment.model(*jax.device_get((params, swept))), step
