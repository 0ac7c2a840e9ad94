"""Tests for vae_jax.priors: densities that normalize, samples that follow them, gradients
that reach every parameter, and training and evaluation through the built-in paths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import test_util
from scipy import special
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


def log_mixture_float64(z, log_weights, means, logvars):
  """The mixture's log-density by the textbook formula, in float64 NumPy."""
  z, means, logvars = (np.asarray(a, np.float64) for a in (z, means, logvars))
  squares = (z[..., None, :] - means) ** 2 * np.exp(-logvars)
  log_components = -0.5 * np.sum(squares + logvars + np.log(2 * np.pi), -1)
  return special.logsumexp(log_components + np.asarray(log_weights, np.float64), -1)


@pytest.mark.parametrize("log_variance", [0.0, -6.0, -14.0])
def test_the_mixture_density_is_exact_for_narrow_components_far_from_the_origin(log_variance):
  # 300 components clustered around a mean of size ~3, each narrower than their spread
  # at -14: expanding the square into matmuls would be off by tens of nats there.
  rng = np.random.default_rng(0)
  sigma = np.exp(0.5 * log_variance)
  center = rng.normal(0, 2, (1, 20))
  means = (center + sigma * rng.normal(size=(300, 20))).astype(np.float32)
  logvars = np.full((300, 20), log_variance, np.float32)
  z = (center + sigma * rng.normal(size=(2, 50, 20))).astype(np.float32)
  log_weights = np.asarray(jax.nn.log_softmax(jnp.asarray(rng.normal(size=300))))
  got = priors.log_mixture_of_gaussians(z, log_weights, means, logvars)
  expected = log_mixture_float64(z, log_weights, means, logvars)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=2e-4)


def test_the_mixture_density_has_the_gradients_of_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    rng = np.random.default_rng(1)
    z, means, logvars = rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    log_weights = jax.nn.log_softmax(jnp.asarray(rng.normal(size=5)))
    density = functools.partial(priors.log_mixture_of_gaussians, log_weights=log_weights)
    test_util.check_grads(
      lambda z, m, lv: density(z, means=m, logvars=lv), (z, means, logvars), order=2
    )
  finally:
    jax.config.update("jax_enable_x64", False)


def hand_written_vampprior_elbo(params, x, eps):
  """The one-sample VampPrior ELBO of small_vae("vampprior") from its raw parameters,
  written out as Tomczak & Welling's code computes it: the prior as a logsumexp over the
  encoder's posteriors at the clipped pseudo-inputs, by broadcasting."""

  def encode(images):
    (w0, b0), (w1, b1) = (
      (layer["kernel"], layer["bias"]) for layer in params["encoder"]["layers"].values()
    )
    out = jnp.tanh(images.reshape(images.shape[0], -1) @ w0 + b0) @ w1 + b1
    return jnp.split(out, 2, axis=-1)

  def log_normal(z, mean, logvar):
    return -0.5 * jnp.sum((z - mean) ** 2 / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi), -1)

  mean, logvar = encode(x)
  z = mean + jnp.exp(0.5 * logvar) * eps
  (w0, b0), (w1, b1) = (
    (layer["kernel"], layer["bias"]) for layer in params["decoder"]["layers"].values()
  )
  logits = jnp.tanh(z @ w0 + b0) @ w1 + b1
  log_px = jnp.sum(x.reshape(x.shape[0], -1) * logits - jax.nn.softplus(logits), -1)
  prior_means, prior_logvars = encode(jnp.clip(params["prior"]["pseudo_inputs"], 0.0, 1.0))
  num_components = prior_means.shape[0]
  log_components = log_normal(z[:, None, :], prior_means[None], prior_logvars[None])
  log_pz = jax.nn.logsumexp(log_components, -1) - jnp.log(num_components)
  return jnp.mean(log_px + log_pz - log_normal(z, mean, logvar))


def test_the_vampprior_elbo_and_its_gradients_match_a_hand_written_one():
  vae = small_vae("vampprior")
  graphdef, params = nnx.split(vae, nnx.Param)
  # Some pseudo-pixels outside [0, 1], where the clip passes no gradient.
  params["prior"]["pseudo_inputs"][...] = params["prior"]["pseudo_inputs"][...].at[0, 0].set(-0.2)
  x = (jax.random.uniform(jax.random.key(3), (6, 4, 4, 1)) > 0.5).astype(jnp.float32)
  key = jax.random.key(4)
  eps = jax.random.normal(key, (1, 6, 2))[0]  # the draw elbo_terms makes with this key

  def library_elbo(params):
    terms = nnx.merge(graphdef, params).elbo_terms(key, x, analytic_kl=False)
    return jnp.mean(terms.reconstruction - terms.kl)

  value, grads = jax.value_and_grad(library_elbo)(params)
  raw = nnx.to_pure_dict(params)
  with jax.numpy_rank_promotion("allow"):  # written as one would, with implicit broadcasting
    expected_value, expected_grads = jax.value_and_grad(hand_written_vampprior_elbo)(raw, x, eps)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  for path, expected in jax.tree_util.tree_leaves_with_path(expected_grads):
    got = functools.reduce(lambda tree, key: tree[key.key], path, nnx.to_pure_dict(grads))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=str(path))
  pseudo_gradient = nnx.to_pure_dict(grads)["prior"]["pseudo_inputs"]
  assert pseudo_gradient[0, 0, 0, 0] == 0 and np.abs(pseudo_gradient).max() > 0


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
