"""Posteriors beyond the diagonal Gaussian, checked on a linear-Gaussian model whose exact
posterior is a correlated Gaussian and whose log p(x) is known in closed form."""

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import stats

import vae_jax
from vae_jax import posteriors

RNG = np.random.default_rng(0)
LATENT, PIXELS, NOISE_VAR = 2, 3, 0.5
# Non-orthogonal decoder weights: p(z|x) is a correlated Gaussian.
W = np.array([[1.0, 0.8], [0.9, 1.1], [-0.3, 0.7]], np.float32)
B = np.array([0.2, -0.1, 0.4], np.float32)
PRECISION = np.eye(LATENT) + W.T @ W / NOISE_VAR  # of p(z|x), the same for every x
COVARIANCE = np.linalg.inv(PRECISION)
X = RNG.normal(size=(5, PIXELS)).astype(np.float32)


def log_px(x):
  """log p(x) = log N(x; b, W Wᵀ + σ² I)."""
  cov = W @ W.T + NOISE_VAR * np.eye(PIXELS)
  return stats.multivariate_normal.logpdf(np.asarray(x, np.float64), B, cov)


def log_likelihood(x, z):
  return vae_jax.log_normal(x, z @ W.T + B[None], math.log(NOISE_VAR))


def posterior_mean(x):
  return (x - B[None]) @ W @ COVARIANCE.T / NOISE_VAR


def exact_posterior(x):
  scale_tril = np.linalg.cholesky(COVARIANCE).astype(np.float32)
  return posteriors.FullCovarianceGaussian(
    posterior_mean(x), jnp.broadcast_to(scale_tril, (x.shape[0], LATENT, LATENT))
  )


def exact_distrax_posterior(x):
  q = exact_posterior(x)
  return distrax.MultivariateNormalTri(q.mean, q.scale_tril)


@pytest.mark.parametrize("encode", [exact_posterior, exact_distrax_posterior])
def test_the_exact_posterior_makes_every_bound_log_px(encode):
  with jax.numpy_rank_promotion("allow"):  # distrax broadcasts implicitly
    every_bound_is_log_px(encode)


def every_bound_is_log_px(encode):
  key = jax.random.key(0)
  expected = np.broadcast_to(log_px(X), (7, len(X)))
  np.testing.assert_allclose(
    vae_jax.log_weights(key, X, encode, log_likelihood, 7), expected, rtol=1e-5
  )
  for bound in (
    vae_jax.elbo(key, X, encode, log_likelihood, num_samples=3, analytic_kl=False),
    vae_jax.iwae(key, X, encode, log_likelihood, num_samples=10, estimator="dreg"),
    vae_jax.importance_log_likelihood(key, X, encode, log_likelihood, num_samples=300),
  ):
    np.testing.assert_allclose(bound, log_px(X), rtol=1e-5)


def test_the_best_diagonal_posterior_falls_short_by_its_kl_to_the_posterior():
  """The best diagonal Gaussian (in KL(q || p(z|x))) has the posterior's mean and variances
  1 / Λ_ii; its ELBO is log p(x) - KL(q || p(z|x)) = log p(x) - ½ (Σ log Λ_ii - log det Λ)."""
  logvar = -np.log(np.diag(PRECISION)).astype(np.float32)

  def encode(x):
    return posterior_mean(x), jnp.broadcast_to(logvar, (x.shape[0], LATENT))

  gap = 0.5 * (np.sum(np.log(np.diag(PRECISION))) - np.linalg.slogdet(PRECISION)[1])
  assert gap > 0.1  # the correlation is strong enough to matter
  samples = np.asarray(vae_jax.log_weights(jax.random.key(1), X, encode, log_likelihood, 20_000))
  standard_error = np.std(samples, axis=0) / math.sqrt(samples.shape[0])
  error = np.abs(np.mean(samples, axis=0) - (log_px(X) - gap))
  assert np.all(error < 4 * standard_error), (error, standard_error)
  # and with the analytic KL, only the reconstruction sampled:
  elbo = vae_jax.elbo(jax.random.key(2), X, encode, log_likelihood, num_samples=20_000)
  np.testing.assert_allclose(elbo, log_px(X) - gap, atol=0.02)


def random_flow(latent, steps, key, batch=4):
  """An IAF with random, far-from-identity weights, and its base Gaussian and context."""
  keys = jax.random.split(key, 3 + 2 * steps)
  networks = []
  for i in range(steps):
    net = posteriors.AutoregressiveNetwork(latent, 3, 8, rngs=nnx.Rngs(i))
    # m moves z by about its own scale; σ stays within about (0.6, 0.95).
    for name, scale, k in (("w_shift", 0.5, keys[3 + 2 * i]), ("w_gate", 0.1, keys[4 + 2 * i])):
      value = getattr(net, name)
      value[...] = scale * jax.random.normal(k, value.shape)
    networks.append(net)
  mean = jax.random.normal(keys[0], (batch, latent))
  logvar = 0.3 * jax.random.normal(keys[1], (batch, latent))
  context = jax.random.normal(keys[2], (batch, 3))
  return posteriors.InverseAutoregressiveFlow(
    mean, logvar, context, tuple(n.masked() for n in networks)
  )


def test_iaf_log_q_is_base_density_minus_log_det_jacobian():
  flow = random_flow(4, 3, jax.random.key(0))
  z, log_q = flow.sample_and_log_prob(seed=jax.random.key(1), sample_shape=(2,))
  eps = jax.random.normal(jax.random.key(1), (2, *flow.mean.shape))  # the same noise

  def transform(eps_one, example):  # ε [latent] -> z [latent] for one example
    rows = slice(example, example + 1)
    one = flow.replace(mean=flow.mean[rows], logvar=flow.logvar[rows], context=flow.context[rows])
    base = one.mean[0] + jnp.exp(0.5 * one.logvar[0]) * eps_one  # [latent] each
    return one._forward(base[None])[0][0]

  for k in range(2):
    for example in range(flow.mean.shape[0]):
      jacobian = jax.jacfwd(transform)(eps[k, example], example)
      expected = vae_jax.log_standard_normal(eps[k, example]) - jnp.linalg.slogdet(jacobian)[1]
      np.testing.assert_allclose(z[k, example], transform(eps[k, example], example), rtol=1e-5)
      np.testing.assert_allclose(log_q[k, example], expected, rtol=1e-4, atol=1e-4)


def test_iaf_log_prob_inverts_the_flow_exactly():
  flow = random_flow(5, 2, jax.random.key(3))
  z, log_q = flow.sample_and_log_prob(seed=jax.random.key(4), sample_shape=(3,))
  np.testing.assert_allclose(flow.log_prob(z), log_q, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["full_covariance", "iaf"])
def test_every_built_in_posterior_integrates_to_one_on_a_2d_grid(name):
  if name == "full_covariance":
    out = jnp.array([[0.3, -0.2, -0.4, 0.2, 0.9]])  # mean, log-variances, L's lower entry
    q = posteriors.full_covariance(out, 2)
  else:
    q = random_flow(2, 2, jax.random.key(5), batch=1)
  step = 0.02
  axis = jnp.arange(-8.0, 8.0, step) + step / 2
  grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 1, 2)  # [points, batch, 2]
  mass = jnp.sum(jnp.exp(q.log_prob(grid))) * step**2
  np.testing.assert_allclose(mass, 1.0, atol=2e-3)


class LearnedFullCovariance(nnx.Module):
  """q(z|x) = N(A x + c, L Lᵀ), amortized and linear: it can represent p(z|x) exactly."""

  def __init__(self, *, rngs):
    self.linear = nnx.Linear(PIXELS, LATENT, rngs=rngs)
    self.out = nnx.Param(jnp.zeros(posteriors.full_covariance_outputs(LATENT) - LATENT))

  def __call__(self, x):
    rest = jnp.broadcast_to(self.out[...], (x.shape[0], self.out.shape[0]))
    return posteriors.full_covariance(jnp.concatenate([self.linear(x), rest], -1), LATENT)


def test_stl_and_dreg_encoder_gradients_vanish_at_the_exact_posterior():
  encoder = LearnedFullCovariance(rngs=nnx.Rngs(0))
  # Set it to the exact posterior: mean = A x + c, L from the covariance.
  a = (W.T / NOISE_VAR).T @ COVARIANCE.T  # posterior_mean(x) = (x - b) @ a
  encoder.linear.kernel[...] = a
  encoder.linear.bias[...] = -B @ a
  scale_tril = np.linalg.cholesky(COVARIANCE)
  encoder.out[...] = jnp.array(
    [*np.log(np.diag(scale_tril) ** 2), *scale_tril[np.tril_indices(LATENT, -1)]]
  )
  graph, params = nnx.split(encoder)

  def grads(objective):
    def loss(params):
      encode = nnx.merge(graph, params)
      return -jnp.mean(objective(encode))

    return jax.tree.leaves(jax.grad(loss)(params))

  key = jax.random.key(6)
  for objective in (
    lambda e: vae_jax.elbo(key, X, e, log_likelihood, analytic_kl=False, estimator="stl"),
    lambda e: vae_jax.iwae(key, X, e, log_likelihood, num_samples=5, estimator="stl"),
    lambda e: vae_jax.iwae(key, X, e, log_likelihood, num_samples=5, estimator="dreg"),
  ):
    for g in grads(objective):
      np.testing.assert_allclose(g, 0.0, atol=2e-5)
  # The plain reparameterization gradient is not zero there: its score term is noise.
  reparam = grads(lambda e: vae_jax.elbo(key, X, e, log_likelihood, analytic_kl=False))
  assert max(float(jnp.max(jnp.abs(g))) for g in reparam) > 1e-2


def test_training_a_full_covariance_encoder_drives_the_elbo_to_log_px():
  """The encoder alone learns (the decoder is the true model): the ELBO rises to log p(x)
  within Monte Carlo error, past the best diagonal posterior's log p(x) - KL."""
  encoder = LearnedFullCovariance(rngs=nnx.Rngs(0))
  graph, params = nnx.split(encoder)
  optimizer = optax.adam(3e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, key):
    key_x, key_z = jax.random.split(key)
    z = jax.random.normal(key_x, (64, LATENT))  # data from the model itself
    x = z @ W.T + B[None] + math.sqrt(NOISE_VAR) * jax.random.normal(key_x, (64, PIXELS))

    def loss(params):
      encode = nnx.merge(graph, params)
      return -jnp.mean(vae_jax.elbo(key_z, x, encode, log_likelihood, analytic_kl=False))

    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for i in range(1500):
    params, opt_state = step(params, opt_state, jax.random.key(i))
  encode = nnx.merge(graph, params)
  samples = np.asarray(vae_jax.log_weights(jax.random.key(7), X, encode, log_likelihood, 5000))
  gap = 0.5 * (np.sum(np.log(np.diag(PRECISION))) - np.linalg.slogdet(PRECISION)[1])
  elbo = np.mean(samples, axis=0)
  standard_error = np.std(samples, axis=0) / math.sqrt(samples.shape[0])
  error = np.abs(elbo - log_px(X))
  assert np.all(error < 4 * standard_error + 2e-3), (error, standard_error)
  assert np.all(elbo > log_px(X) - gap / 2)


def test_a_posterior_that_cannot_hold_its_parameters_constant_is_refused_for_stl():
  class Opaque:  # the two methods, but not a pytree of its parameters
    def __init__(self, q):
      self.q = q

    def sample_and_log_prob(self, *, seed, sample_shape):
      return self.q.sample_and_log_prob(seed=seed, sample_shape=sample_shape)

    def log_prob(self, z):
      return self.q.log_prob(z)

  encode = lambda x: Opaque(exact_posterior(x))  # noqa: E731
  key = jax.random.key(0)
  np.testing.assert_allclose(  # reparam works for any posterior
    vae_jax.iwae(key, X, encode, log_likelihood, num_samples=3), log_px(X), rtol=1e-5
  )
  with pytest.raises(ValueError, match="not a JAX pytree"):
    vae_jax.iwae(key, X, encode, log_likelihood, num_samples=3, estimator="dreg")
  with pytest.raises(ValueError, match="no closed-form KL"):
    vae_jax.elbo(key, X, encode, log_likelihood)
