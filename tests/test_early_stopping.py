"""Tests for early stopping: the rule, the run that stops at its best validation epoch and
reports it, and a resumed run that stops where an uninterrupted one does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import _final_params, make_small_dataset, tiny_config

from vae_jax import data, metrics, train
from vae_jax import state as state_lib
from vae_jax.experiment import Experiment


@pytest.fixture(scope="module")
def dataset_with_validation():
  return data.hold_out_validation(make_small_dataset(), 100)


def early_stopping_config(**overrides):
  settings = dict(
    early_stopping_epochs=2,
    num_epochs=40,
    learning_rate=1e-2,
    eval_num_samples=5,
    eval_iwae_samples=(1,),
    checkpoint_every_epochs=50,
  )
  return tiny_config(**{**settings, **overrides})


def test_the_rule_keeps_the_best_epoch_and_does_not_count_warm_up():
  params = {"w": jnp.zeros(3)}
  state = state_lib.init_early_stopping(params)
  # Epochs 1-2 are warm-up; patience 2: epoch 3 is counted, epoch 4 improves, 5 and 6 do
  # not, so the seed stops at 6 and epoch 7's better ELBO comes too late.
  elbos = [-10.0, -11.0, -12.0, -9.0, -9.5, -9.2, -8.0]
  expected = [(1, 0, False), (1, 0, False), (1, 1, False), (4, 0, False), (4, 1, False)]
  expected += [(4, 2, True), (4, 2, True)]
  for epoch, (elbo, (best, without, stopped)) in enumerate(zip(elbos, expected), start=1):
    state = state_lib.update_early_stopping(
      state,
      {"w": jnp.full(3, float(epoch))},
      jnp.float32(elbo),
      epoch,
      patience=2,
      warmup_epochs=2,
    )
    assert (int(state["best_epoch"]), int(state["epochs_without_improvement"])) == (best, without)
    assert bool(state["stopped"]) == stopped, epoch
  np.testing.assert_array_equal(state["best_params"]["w"], [4.0, 4.0, 4.0])
  assert float(state["best_elbo"]) == -9.0


def test_a_run_stops_and_reports_its_best_validation_epoch(dataset_with_validation, tmp_path):
  config = early_stopping_config(num_seeds=2)
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir, dataset=dataset_with_validation)
  records = metrics.read_records(workdir)
  epochs = summary["steps"] // (len(dataset_with_validation.train_images) // config.batch_size)
  assert len(records) == epochs < config.num_epochs  # it stopped early
  experiment = Experiment(config, dataset_with_validation)
  _, state = experiment.restore(workdir)
  early_stopping = jax.device_get(experiment.early_stopping_numbers(state))
  assert summary["early_stopping"]["best_epoch"] == early_stopping["best_epoch"].tolist()
  assert early_stopping["stopped"].all()
  valid_x, valid_labels = experiment.eval_inputs(
    dataset_with_validation.validation_images, dataset_with_validation.validation_labels
  )
  # The reported parameters are the best epoch's: they give its validation ELBO, the best.
  best_params = experiment.final_params(state)
  valid_elbo = jax.device_get(experiment.evaluate(best_params, {}, valid_x, valid_labels)["elbo"])
  np.testing.assert_array_equal(valid_elbo, early_stopping["best_elbo"])
  # Each seed stopped `patience` epochs after its best; the run, when the last one did.
  patience = config.early_stopping_epochs
  assert early_stopping["best_epoch"].max() + patience == epochs
  assert np.all(early_stopping["best_epoch"] + patience <= epochs)
  for seed in range(2):
    model, _ = train.restore_model(workdir, member=seed, dataset=dataset_with_validation)
    expected = jax.device_get(experiment.take_member(best_params, seed))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), expected)


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(dataset_with_validation, tmp_path):
  config = early_stopping_config()
  straight = train.train_and_evaluate(config, str(tmp_path / "a"), dataset=dataset_with_validation)
  short = early_stopping_config(num_epochs=3)  # then resumed with the full budget
  train.train_and_evaluate(short, str(tmp_path / "b"), dataset=dataset_with_validation)
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"), dataset=dataset_with_validation)
  assert straight["early_stopping"] == resumed["early_stopping"]
  assert straight["steps"] == resumed["steps"]
  (step_a, _, state_a), (step_b, _, state_b) = (_final_params(str(tmp_path / d)) for d in "ab")
  assert step_a == step_b
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert straight["test_log_likelihood"] == resumed["test_log_likelihood"]


def test_early_stopping_without_a_validation_split_is_refused(tmp_path):
  config = early_stopping_config()
  with pytest.raises(ValueError, match="needs a validation split.*validation_size"):
    train.train_and_evaluate(config, str(tmp_path), dataset=make_small_dataset())
