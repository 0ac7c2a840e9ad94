"""Tests for vae_jax.priors: densities that normalize, samples that follow them, gradients
that reach every parameter, and training and evaluation through the built-in paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import make_small_dataset, tiny_config

import vae_jax
from vae_jax import evaluation, models, priors, train
from vae_jax.config import build_config, validate_config


def grid_integral(log_prob, *, half_width=12.0, points=601):
  """The integral of exp(log_prob) over a 2-D grid (trapezoid rule)."""
  axis = jnp.linspace(-half_width, half_width, points)
  z = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), -1)  # [P, P, 2]
  density = np.exp(np.asarray(log_prob(z), np.float64))
  return np.trapezoid(np.trapezoid(density, np.asarray(axis), axis=1), np.asarray(axis))


def small_vae(prior, **kwargs):
  return models.VAE(
    image_shape=(4, 4, 1),
    latent_dim=2,
    hidden=(8,),
    prior=prior,
    prior_components=5,
    rngs=nnx.Rngs(0),
    **kwargs,
  )


def test_standard_normal_is_log_standard_normal():
  z = jax.random.normal(jax.random.key(0), (3, 4, 2))
  prior = priors.StandardNormal(2)
  expected = -0.5 * np.sum(np.asarray(z) ** 2 + np.log(2 * np.pi), -1)
  np.testing.assert_allclose(prior.log_prob(z), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["mixture", "vampprior"])
def test_priors_normalize_over_a_two_dimensional_latent(name):
  vae = small_vae(name)
  if name == "mixture":  # spread the components out, so the test is not N(0, I)'s
    vae.prior.logits[...] = jnp.array([0.0, 1.0, -1.0, 0.5, 2.0])
    vae.prior.logvars[...] = jnp.log(jnp.linspace(0.2, 2.0, 10)).reshape(5, 2)
  else:  # pseudo-inputs that the encoder maps to different posteriors
    vae.prior.pseudo_inputs[...] = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
  integral = grid_integral(lambda z: vae.prior.log_prob(z, vae.encode))
  np.testing.assert_allclose(integral, 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["mixture", "vampprior"])
def test_prior_samples_follow_the_prior(name):
  """Monte Carlo: the mean of samples matches the density's mean on a grid."""
  vae = small_vae(name)
  if name == "vampprior":
    vae.prior.pseudo_inputs[...] = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
  samples = vae.prior.sample(jax.random.key(2), 200_000, vae.encode)
  axis = jnp.linspace(-12, 12, 601)
  z = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), -1)
  density = np.exp(np.asarray(vae.prior.log_prob(z, vae.encode), np.float64))
  mass = density.sum()
  grid_mean = [(density * np.asarray(z[..., i])).sum() / mass for i in range(2)]
  np.testing.assert_allclose(np.mean(samples, 0), grid_mean, atol=0.02)


@pytest.mark.parametrize(
  "name, parameters",
  [("mixture", ("means", "logvars", "logits")), ("vampprior", ("pseudo_inputs",))],
)
@pytest.mark.parametrize("estimator", ["reparam", "dreg"])
def test_gradients_reach_the_prior_parameters(name, parameters, estimator):
  vae = small_vae(name)
  x = (jax.random.uniform(jax.random.key(3), (6, 4, 4, 1)) > 0.5).astype(jnp.float32)
  graphdef, params = nnx.split(vae, nnx.Param)

  def loss(params):
    model = nnx.merge(graphdef, params)
    return -jnp.mean(model.iwae(jax.random.key(4), x, num_samples=3, estimator=estimator))

  grads = jax.grad(loss)(params)
  for parameter in parameters:
    gradient = np.asarray(grads["prior"][parameter][...])
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0, parameter


def test_a_non_standard_prior_needs_a_sampled_kl_and_evaluates_without_per_dimension_kl():
  vae = small_vae("mixture")
  assert not vae.has_analytic_kl
  x = (jax.random.uniform(jax.random.key(3), (10, 4, 4, 1)) > 0.5).astype(jnp.float32)
  with pytest.raises(ValueError, match="pass analytic_kl=False"):
    vae.elbo_terms(jax.random.key(0), x)
  examples = evaluation.evaluate_examples(
    vae, x, jnp.zeros(10, jnp.int32), jax.random.key(5), batch_size=5, num_samples=20, chunk_size=10
  )
  summary = evaluation.summarize(jax.device_get(examples), num_pixels=16, bits_per_dim=False)
  assert "kl_per_dimension" not in summary and np.isfinite(summary["log_likelihood"])
  with pytest.raises(ValueError, match="vampprior"):
    small_vae("vampprior", num_classes=3)


@pytest.mark.parametrize("prior", ["mixture", "vampprior"])
def test_priors_train_and_evaluate_through_the_built_in_paths(prior, tmp_path):
  config = tiny_config(prior=prior, prior_components=10, analytic_kl=False)
  summary = train.train_and_evaluate(config, str(tmp_path), dataset=make_small_dataset())
  assert np.isfinite(summary["test_log_likelihood"])
  assert summary["test_iwae_50"] <= summary["test_log_likelihood"] + 1.0
  assert (tmp_path / "samples.png").exists()


def test_a_non_standard_prior_with_the_analytic_kl_is_a_config_error():
  with pytest.raises(ValueError, match="set analytic_kl=False"):
    validate_config(build_config(dict(prior="mixture")))


class ShiftedNormal(nnx.Module):
  """A prior of a user's own: N(m, I) with m learned."""

  def __init__(self, latent_dim):
    self.latent_dim = latent_dim
    self.mean = nnx.Param(jnp.full((latent_dim,), 0.5))

  def log_prob(self, z, encode=None):
    return vae_jax.log_standard_normal(z - jnp.broadcast_to(self.mean[...], z.shape))

  def sample(self, key, num_samples, encode=None):
    noise = jax.random.normal(key, (num_samples, self.latent_dim))
    return jnp.broadcast_to(self.mean[...], noise.shape) + noise


def test_a_prior_module_of_your_own_is_used_by_every_path():
  """VAE(prior=module): its log-density enters the objectives (the MC KL equals the
  closed form KL(q || N(m, I))), its samples the pictures, its parameters the gradient."""
  vae = small_vae(ShiftedNormal(2))
  assert not vae.has_analytic_kl and vae.log_prior() is not None
  x = (jax.random.uniform(jax.random.key(0), (3, 4, 4, 1)) > 0.5).astype(jnp.float32)
  terms = vae.elbo_terms(jax.random.key(1), x, num_samples=20_000, analytic_kl=False)
  mean, logvar = vae.encode(x)
  exact = vae_jax.kl_normal(mean, logvar, jnp.full_like(mean, 0.5), jnp.zeros_like(logvar))
  np.testing.assert_allclose(terms.kl, exact, atol=0.05)
  samples = vae.prior.sample(jax.random.key(2), 50_000)
  np.testing.assert_allclose(np.mean(samples, 0), [0.5, 0.5], atol=0.02)

  def loss(vae):
    return -jnp.mean(vae.elbo_terms(jax.random.key(1), x, analytic_kl=False).kl)

  grads = nnx.grad(loss)(vae)
  assert np.all(np.abs(grads.prior.mean[...]) > 0)
