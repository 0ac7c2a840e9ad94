"""Tests for experiments/hvae.py: Tomczak & Welling's two-level HVAE, a model of one's own
that trains and evaluates through the protocol."""

import json
import os

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import make_small_dataset, tiny_config

from experiments import hvae
from vae_jax import data, models, state, train
from vae_jax.config import load_workdir_config


@pytest.fixture(scope="module")
def model():
  return hvae.TwoLevelVAE(latent_dim=3, prior_components=7, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
  return (jax.random.uniform(jax.random.key(1), (5, 28, 28, 1)) > 0.7).astype(jnp.float32)


def test_it_implements_the_protocol(model):
  models.check_model(model)
  assert model.encode(jnp.zeros((2, 28, 28, 1)))[0].shape == (2, 3)
  assert model.decode_mean(jnp.zeros((2, 3))).shape == (2, 28, 28, 1)
  assert model.decode_prior(jax.random.key(0), num_samples=4).shape == (4, 28, 28, 1)


def test_the_elbo_terms_are_the_mean_log_weight_of_the_same_samples(model, x):
  key = jax.random.key(2)
  log_w = model.log_weights(key, x, num_samples=4)
  terms = model.elbo_terms(key, x, num_samples=4)
  assert log_w.shape == (4, 5) and terms.kl_per_dimension is None
  np.testing.assert_allclose(terms.reconstruction - terms.kl, jnp.mean(log_w, 0), rtol=1e-5)
  # log p(x) >= IWAE-K >= ELBO: with 500 samples the IWAE bound is well above the ELBO.
  iwae = model.iwae(key, x, num_samples=500)
  assert np.all(iwae > jnp.mean(model.log_weights(key, x, num_samples=500), 0))
  with pytest.raises(ValueError, match="sampled KL"):
    model.elbo_terms(key, x, analytic_kl=True)


def test_gradients_reach_every_parameter_and_the_pseudo_inputs(model, x):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    terms = nnx.merge(graphdef, params).elbo_terms(jax.random.key(3), x)
    return -jnp.mean(terms.reconstruction - terms.kl)

  grads = jax.grad(loss)(params)
  for path, gradient in jax.tree_util.tree_leaves_with_path(grads):
    gradient = np.asarray(gradient)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0, path


def test_it_trains_evaluates_and_restores_through_the_library(tmp_path):
  dataset = make_small_dataset()
  config = tiny_config(prior="vampprior", prior_components=7, analytic_kl=False, latent_dim=3)
  model = hvae.model_for_config(config, dataset)
  summary = train.train_and_evaluate(config, str(tmp_path), model=model, dataset=dataset)
  assert np.isfinite(summary["test_log_likelihood"])
  assert summary["test_log_likelihood"] > summary["test_elbo"]
  restored, _ = train.restore_model(
    str(tmp_path), model=hvae.model_for_config(config, dataset), dataset=dataset
  )
  assert isinstance(restored, hvae.TwoLevelVAE)
  assert not np.allclose(restored.prior.pseudo_inputs[...], model.prior.pseudo_inputs[...])


def test_its_workdir_re_evaluates_only_with_its_model(tmp_path):
  workdir = str(tmp_path / "hvae")
  config_flags = [
    "--config=experiments/configs/smoke.py",
    "--config.prior=vampprior",
    "--config.prior_components=7",
    "--config.analytic_kl=False",
    "--config.latent_dim=3",
    "--config.eval_num_samples=20",
  ]
  trained = helpers.run_module("experiments.hvae", f"--workdir={workdir}", *config_flags)
  assert trained.returncode == 0, trained.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert json.load(open(os.path.join(workdir, "model.json"))) == {
    "model": "experiments.hvae.TwoLevelVAE"
  }
  # Without the model, a one-line refusal that says what to pass, not "damaged".
  refused = helpers.run_module("experiments.evaluate", f"--workdir={workdir}")
  assert refused.returncode == 1
  assert "--model=MODULE:FUNCTION" in refused.stderr and "damaged" not in refused.stderr
  config = load_workdir_config(workdir)
  with pytest.raises(ValueError, match="experiments.hvae.TwoLevelVAE"):
    train.restore_model(workdir)
  with pytest.raises(ValueError, match="experiments.hvae.TwoLevelVAE"):  # nor resumes
    train.train_and_evaluate(config, workdir)
  dataset = data.load_for_config(config)
  another = state.make_model(config, dataset.image_shape, dataset.num_classes, nnx.Rngs(0))
  with pytest.raises(ValueError, match="pass a TwoLevelVAE"):
    train.restore_model(workdir, model=another, dataset=dataset)
  bad = helpers.run_module("experiments.evaluate", f"--workdir={workdir}", "--model=hvae")
  assert bad.returncode == 1 and "expected MODULE:FUNCTION" in bad.stderr
  # With it, experiments.evaluate reproduces the trainer's final evaluation.
  evaluated = helpers.run_module(
    "experiments.evaluate", f"--workdir={workdir}", "--model=experiments.hvae:model_for_config"
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, "eval.json")))
  for name in ("test_elbo", "test_log_likelihood", "test_iwae_5"):
    np.testing.assert_allclose(report[name], summary[name], rtol=1e-5, err_msg=name)
  restored, _ = train.restore_model(workdir, model=hvae.model_for_config(config, dataset))
  assert isinstance(restored, hvae.TwoLevelVAE)
