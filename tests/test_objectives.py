"""Tests for vae_jax.objectives on a linear-Gaussian model with a known log p(x).

The model: p(z) = N(0, I), p(x|z) = N(W z + b, s2 I). Its marginal is
N(b, W W^T + s2 I), and with orthogonal columns of W its exact posterior is a
diagonal Gaussian, so the encoder can represent it exactly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import vae_jax

DATA_DIM, LATENT_DIM, BATCH = 5, 3, 8
DECODER_SCALES = np.array([1.5, 0.8, 0.3])
DECODER_LOGVAR = np.log(0.4)


def _decoder_parameters():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(DATA_DIM, LATENT_DIM)))
  weights = q * DECODER_SCALES  # orthogonal columns
  bias = rng.normal(size=DATA_DIM)
  return weights, bias


def exact_parameters():
  """Encoder parameters of the exact posterior, with the decoder's."""
  weights, bias = _decoder_parameters()
  noise = np.exp(DECODER_LOGVAR)
  posterior_var = 1.0 / (1.0 + DECODER_SCALES**2 / noise)
  projection = weights * posterior_var / noise  # mean = (x - b) @ projection
  params = {
    "enc_proj": projection,
    "enc_shift": -bias @ projection,
    "enc_logvar": np.log(posterior_var),
    "dec_weights": weights.T,
    "dec_bias": bias,
  }
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def perturbed_parameters():
  """A deliberately imperfect encoder, so bounds and estimators differ."""
  params = exact_parameters()
  params["enc_proj"] = 0.6 * params["enc_proj"]
  params["enc_logvar"] = params["enc_logvar"] + 0.7
  return params


def model(params):
  """The (encode, log_likelihood) callables the objectives take."""

  def encode(x):
    mean = x @ params["enc_proj"] + params["enc_shift"][None]
    return mean, jnp.broadcast_to(params["enc_logvar"], mean.shape)

  def log_likelihood(x, z):
    return vae_jax.log_normal(
      x, z @ params["dec_weights"] + params["dec_bias"][None], DECODER_LOGVAR
    )

  return encode, log_likelihood


def exact_log_px(x):
  weights, bias = _decoder_parameters()
  cov = weights @ weights.T + np.exp(DECODER_LOGVAR) * np.eye(DATA_DIM)
  return stats.multivariate_normal(bias, cov).logpdf(np.asarray(x, np.float64))


def data(seed=1, batch=BATCH):
  """Samples from the model itself."""
  weights, bias = _decoder_parameters()
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(batch, LATENT_DIM))
  x = z @ weights.T + bias + np.exp(0.5 * DECODER_LOGVAR) * rng.normal(size=(batch, DATA_DIM))
  return jnp.asarray(x, jnp.float32)


KEY = jax.random.key(42)


def importance_estimate(x, encode, log_likelihood, **kwargs):
  """importance_log_likelihood with its standard error: log p(x) and SE, each [batch]."""
  return vae_jax.importance_log_likelihood_from_log_weights(
    lambda key, k: vae_jax.log_weights(key, x, encode, log_likelihood, k), KEY, **kwargs
  )


# --- Bounds at the exact posterior ------------------------------------------------


def test_exact_posterior_makes_every_bound_equal_log_px():
  x = data()
  encode, log_likelihood = model(exact_parameters())
  expected = exact_log_px(x)
  # log w = log p(x) for every z: each bound is exact, whatever K and the key.
  np.testing.assert_allclose(
    vae_jax.log_weights(KEY, x, encode, log_likelihood, 7), np.tile(expected, (7, 1)), atol=2e-5
  )
  sampled_kl = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=1, analytic_kl=False)
  np.testing.assert_allclose(sampled_kl, expected, atol=2e-5)
  for estimator in vae_jax.objectives.ESTIMATORS:
    bound = vae_jax.iwae(KEY, x, encode, log_likelihood, num_samples=5, estimator=estimator)
    np.testing.assert_allclose(bound, expected, atol=2e-5)
  estimate = importance_estimate(x, encode, log_likelihood, num_samples=100, chunk_size=32)
  np.testing.assert_allclose(estimate.log_px, expected, atol=2e-5)
  np.testing.assert_allclose(estimate.standard_error, 0.0, atol=1e-3)
  # With the analytic KL the ELBO equals log p(x) in expectation.
  analytic = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=20_000)
  np.testing.assert_allclose(analytic, expected, atol=0.02)


# --- Bounds with an imperfect encoder -----------------------------------------------


def test_importance_sampled_log_likelihood_converges_to_exact():
  x = data(batch=32)
  encode, log_likelihood = model(perturbed_parameters())
  expected = exact_log_px(x)
  estimate = importance_estimate(x, encode, log_likelihood, num_samples=5000, chunk_size=512)
  elbo = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=5000)
  gap = expected - elbo
  assert np.all(gap > 0.05)  # the encoder is imperfect enough to matter
  error = estimate.log_px - expected
  # Within 4 Monte Carlo standard errors (plus float32 rounding), and far
  # closer than the ELBO.
  assert np.all(np.abs(error) < 4 * estimate.standard_error + 1e-4), (
    error,
    estimate.standard_error,
  )
  assert np.all(np.abs(error) < 0.1 * gap)
  assert np.all(estimate.standard_error > 0)


def test_importance_log_likelihood_streams_chunks_exactly():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  num_samples, chunk = 1000, 300  # three full chunks and a remainder of 100
  chunks = [
    vae_jax.log_weights(jax.random.fold_in(KEY, i), x, encode, log_likelihood, size)
    for i, size in enumerate([chunk, chunk, chunk, num_samples - 3 * chunk])
  ]
  log_w = np.asarray(jnp.concatenate(chunks), np.float64)
  estimate = importance_estimate(
    x, encode, log_likelihood, num_samples=num_samples, chunk_size=chunk
  )
  np.testing.assert_allclose(
    estimate.log_px, special.logsumexp(log_w, 0) - np.log(num_samples), rtol=1e-6
  )
  w = np.exp(log_w - log_w.max(0))
  delta_method = np.std(w, 0, ddof=1) / np.sqrt(num_samples) / np.mean(w, 0)
  np.testing.assert_allclose(estimate.standard_error, delta_method, rtol=1e-3)
  plain = vae_jax.importance_log_likelihood(
    KEY, x, encode, log_likelihood, num_samples=num_samples, chunk_size=chunk
  )
  np.testing.assert_array_equal(plain, estimate.log_px)


def test_iwae_is_logsumexp_of_log_weights_and_at_least_the_elbo():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  log_w = vae_jax.log_weights(KEY, x, encode, log_likelihood, 50)
  assert log_w.shape == (50, BATCH)
  bound = vae_jax.iwae(KEY, x, encode, log_likelihood, num_samples=50)
  np.testing.assert_allclose(
    bound, special.logsumexp(np.asarray(log_w, np.float64), 0) - np.log(50), rtol=1e-6
  )
  np.testing.assert_allclose(vae_jax.iwae_bound(log_w), bound, rtol=1e-7)
  # On the same samples the ELBO is their average log-weight (Jensen: <= IWAE).
  elbo = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=50, analytic_kl=False)
  np.testing.assert_allclose(elbo, jnp.mean(log_w, 0), rtol=1e-6)
  assert np.all(bound >= elbo)
  # Every estimator has the same value.
  for estimator in ("stl", "dreg"):
    np.testing.assert_array_equal(
      vae_jax.iwae(KEY, x, encode, log_likelihood, num_samples=50, estimator=estimator), bound
    )


def test_iwae_increases_with_k_on_average_and_stays_below_log_px():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  keys = jax.random.split(KEY, 400)
  averages, stderrs = [], []
  for k in (1, 5, 50):
    bounds = jax.vmap(lambda key: vae_jax.iwae(key, x, encode, log_likelihood, num_samples=k))(keys)
    averages.append(np.mean(bounds, 0))
    stderrs.append(np.std(bounds, 0) / np.sqrt(len(keys)))
  averages, stderrs = np.stack(averages), np.stack(stderrs)
  assert np.all(np.diff(averages, axis=0) > 0)
  # Lower bounds in expectation; K=50 is within noise of log p(x) here.
  assert np.all(averages < exact_log_px(x) + 3 * stderrs)


def test_analytic_and_sampled_kl_give_the_same_elbo_in_expectation():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  analytic = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=50_000)
  sampled = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=50_000, analytic_kl=False)
  np.testing.assert_allclose(sampled, analytic, atol=0.03)


def test_beta_and_free_bits_reweight_only_the_kl():
  x = data()
  params = perturbed_parameters()
  encode, log_likelihood = model(params)
  mean, logvar = encode(x)
  kl_per_dim = vae_jax.kl_normal_std_per_dimension(mean, logvar)
  terms = vae_jax.elbo_terms(KEY, x, encode, log_likelihood, num_samples=3)
  np.testing.assert_allclose(terms.kl, kl_per_dim.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(terms.kl_per_dimension, kl_per_dim, rtol=1e-6)
  elbo = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=3)
  np.testing.assert_allclose(elbo, terms.reconstruction - terms.kl, rtol=1e-6)
  doubled = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=3, beta=2.0)
  np.testing.assert_allclose(doubled - elbo, -terms.kl, rtol=1e-5, atol=1e-5)
  floor = float(np.median(kl_per_dim))  # some dimensions above, some below
  floored = vae_jax.elbo(KEY, x, encode, log_likelihood, num_samples=3, free_bits=floor)
  np.testing.assert_allclose(
    floored, terms.reconstruction - np.maximum(kl_per_dim, floor).sum(-1), rtol=1e-6
  )
  # A dimension under the floor gets no KL gradient.
  grad = jax.grad(lambda p: vae_jax.elbo(KEY, x, *model(p), num_samples=3, free_bits=1e3).sum())(
    params
  )
  reconstruction_only = jax.grad(
    lambda p: vae_jax.elbo_terms(KEY, x, *model(p), num_samples=3).reconstruction.sum()
  )(params)
  np.testing.assert_allclose(grad["enc_logvar"], reconstruction_only["enc_logvar"], rtol=1e-5)


def test_kl_warmup_schedule():
  np.testing.assert_allclose(
    [vae_jax.kl_warmup(s, 100) for s in (0, 50, 100, 500)], [0.0, 0.5, 1.0, 1.0]
  )
  np.testing.assert_allclose(vae_jax.kl_warmup(7, 0), 1.0)
  # Traced steps work inside jit.
  np.testing.assert_allclose(jax.jit(vae_jax.kl_warmup, static_argnums=1)(jnp.int32(25), 100), 0.25)


# --- Gradient estimators --------------------------------------------------------------

ENCODER_KEYS = ("enc_proj", "enc_shift", "enc_logvar")
DECODER_KEYS = ("dec_weights", "dec_bias")


def _gradients(objective, params, keys, x):
  """Per-key gradients of the batch-summed objective, stacked on axis 0."""
  return jax.vmap(lambda key: jax.grad(lambda p: objective(key, x, *model(p)).sum())(params))(keys)


def _assert_agree_in_expectation(grads_a, grads_b, names):
  for name in names:
    diff = np.asarray(grads_a[name] - grads_b[name], np.float64)
    mean, stderr = diff.mean(0), diff.std(0) / np.sqrt(diff.shape[0])
    assert np.all(np.abs(mean) <= 4.5 * stderr + 1e-4), (name, mean, stderr)


ELBO_SAMPLED_KL = functools.partial(vae_jax.elbo, num_samples=1, analytic_kl=False)


@pytest.mark.parametrize(
  "objective",
  [
    functools.partial(ELBO_SAMPLED_KL, estimator="stl"),
    functools.partial(vae_jax.iwae, num_samples=10, estimator="stl"),
    functools.partial(vae_jax.iwae, num_samples=10, estimator="dreg"),
  ],
  ids=["elbo-stl", "iwae-stl", "iwae-dreg"],
)
def test_path_gradients_vanish_at_the_exact_posterior(objective):
  x = data()
  keys = jax.random.split(KEY, 4)
  params = exact_parameters()
  grads = _gradients(objective, params, keys, x)
  for name in ENCODER_KEYS:
    np.testing.assert_allclose(grads[name], 0.0, atol=2e-4)
  # The plain reparameterization gradient is zero only in expectation.
  reparam = _gradients(ELBO_SAMPLED_KL, params, keys, x)
  assert max(float(jnp.abs(reparam[name]).max()) for name in ENCODER_KEYS) > 0.1


def test_elbo_stl_and_reparam_gradients_agree_in_expectation():
  x = data()
  params = perturbed_parameters()
  keys = jax.random.split(KEY, 4000)
  reparam = _gradients(ELBO_SAMPLED_KL, params, keys, x)
  stl = _gradients(functools.partial(ELBO_SAMPLED_KL, estimator="stl"), params, keys, x)
  _assert_agree_in_expectation(reparam, stl, ENCODER_KEYS)
  # STL changes only the score term of q: the decoder's gradient is the same per sample.
  for name in DECODER_KEYS:
    np.testing.assert_allclose(stl[name], reparam[name], rtol=1e-5, atol=1e-5)
  # And with the analytic KL the reparameterization gradient has the same mean.
  analytic = _gradients(functools.partial(vae_jax.elbo, num_samples=1), params, keys, x)
  _assert_agree_in_expectation(reparam, analytic, ENCODER_KEYS + DECODER_KEYS)


def test_iwae_dreg_and_reparam_gradients_agree_and_dreg_has_lower_variance():
  x = data()
  params = perturbed_parameters()
  keys = jax.random.split(KEY, 4000)
  reparam = _gradients(functools.partial(vae_jax.iwae, num_samples=10), params, keys, x)
  dreg = _gradients(
    functools.partial(vae_jax.iwae, num_samples=10, estimator="dreg"), params, keys, x
  )
  _assert_agree_in_expectation(reparam, dreg, ENCODER_KEYS)
  # The decoder's DReG gradient is the usual IWAE gradient, per sample.
  for name in DECODER_KEYS:
    np.testing.assert_allclose(dreg[name], reparam[name], rtol=1e-4, atol=1e-5)
  # Tucker et al. 2018: lower-variance encoder gradients.
  for name in ENCODER_KEYS:
    assert np.sum(np.var(dreg[name], 0)) < 0.5 * np.sum(np.var(reparam[name], 0)), name


# --- Transformations, extremes, bad input --------------------------------------------


def test_jit_and_vmap_give_the_same_values():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  for objective in (
    functools.partial(vae_jax.elbo, num_samples=4),
    functools.partial(vae_jax.iwae, num_samples=4, estimator="dreg"),
  ):
    eager = objective(KEY, x, encode, log_likelihood)
    jitted = jax.jit(lambda key, x: objective(key, x, encode, log_likelihood))(KEY, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    # vmap over independent batches equals a loop over them.
    xs = jnp.stack([data(seed) for seed in range(3)])
    keys = jax.random.split(KEY, 3)
    mapped = jax.vmap(lambda key, x: objective(key, x, encode, log_likelihood))(keys, xs)
    looped = jnp.stack([objective(k, xi, encode, log_likelihood) for k, xi in zip(keys, xs)])
    np.testing.assert_allclose(mapped, looped, rtol=1e-6)


def test_no_retracing_across_calls_of_the_same_shapes():
  traces = []

  def loss_fn(params, key, x):
    traces.append(None)
    return -jnp.mean(vae_jax.iwae(key, x, *model(params), num_samples=5, estimator="dreg"))

  loss, step = jax.jit(loss_fn), jax.jit(jax.grad(loss_fn))
  params = perturbed_parameters()
  for seed in range(3):
    loss(params, jax.random.key(seed), data(seed))
    step(params, jax.random.key(seed), data(seed))
  assert len(traces) == 2  # once for each jitted function, however many calls


def test_extreme_inputs_stay_finite():
  x = (jax.random.uniform(KEY, (4, 6)) < 0.5).astype(jnp.float32)

  def make(scale, logvar):
    def encode(x):
      return scale * (x - 0.5), jnp.full(x.shape, logvar)

    def log_likelihood(x, z):
      return vae_jax.log_bernoulli(x, 1e4 * jnp.tanh(z))

    return encode, log_likelihood

  for scale, logvar in ((50.0, -30.0), (50.0, 15.0), (0.0, 0.0)):
    encode, log_likelihood = make(scale, logvar)
    for objective in (
      functools.partial(vae_jax.elbo, num_samples=3),
      functools.partial(vae_jax.elbo, num_samples=3, analytic_kl=False, estimator="stl"),
      functools.partial(vae_jax.iwae, num_samples=3, estimator="dreg"),
      functools.partial(vae_jax.importance_log_likelihood, num_samples=10, chunk_size=4),
    ):
      assert np.all(np.isfinite(objective(KEY, x, encode, log_likelihood)))
    grad = jax.grad(
      lambda s, lv: vae_jax.iwae(KEY, x, *make(s, lv), num_samples=3, estimator="dreg").sum(),
      argnums=(0, 1),
    )(scale, logvar)
    assert np.all(np.isfinite(grad))


def _bad(**overrides):
  """Calls elbo or iwae on the linear model with one piece replaced."""
  x = data()
  encode, log_likelihood = model(exact_parameters())
  args = dict(x=x, encode=encode, log_likelihood=log_likelihood)
  objective = overrides.pop("objective", vae_jax.elbo)
  args.update(overrides)
  return lambda: objective(
    KEY, args.pop("x"), args.pop("encode"), args.pop("log_likelihood"), **args
  )


@pytest.mark.parametrize(
  "call, match",
  [
    (_bad(encode=lambda x: (x[:, :3], x[:, :2])), r"mean\(8, 3\) and logvar\(8, 2\)"),
    (_bad(encode=lambda x: (x[:, :3],)), r"must return \(mean, logvar\)"),
    (
      _bad(encode=lambda x: (x[0, :3], x[0, :3])),
      r"mean of shape \(3,\); expected \[batch, latent\]",
    ),
    (
      _bad(log_likelihood=lambda x, z: jnp.zeros_like(x)),
      r"shape \(8, 5\); expected \[batch\] = \(8,\)",
    ),
    (_bad(estimator="dreg"), "not available for the ELBO"),
    (_bad(estimator="stl"), "needs analytic_kl=False"),
    (_bad(free_bits=1.0, analytic_kl=False), "free_bits needs analytic_kl=True"),
    (_bad(free_bits=-1.0), "free_bits must be >= 0"),
    (_bad(num_samples=0), "num_samples must be a positive int"),
    (_bad(num_samples=2.5), "num_samples must be a positive int"),
    (_bad(objective=vae_jax.iwae, num_samples=3, estimator="score"), "choose one of"),
    (
      _bad(objective=vae_jax.importance_log_likelihood, num_samples=3, chunk_size=0),
      "chunk_size must be a positive int",
    ),
    (_bad(x=jnp.float32(1.0)), "leading batch axis"),
  ],
)
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- A prior of one's own: log_prior --------------------------------------------------

PRIOR_MEAN = np.array([0.5, -1.0, 0.2])
PRIOR_LOGVAR = np.log(np.array([2.0, 0.5, 1.5]))


def log_gaussian_prior(mean=PRIOR_MEAN, logvar=PRIOR_LOGVAR):
  """log N(z; mean, diag(exp(logvar))): a prior that is not N(0, I)."""
  return lambda z: vae_jax.log_normal(z, jnp.asarray(mean, z.dtype), jnp.asarray(logvar, z.dtype))


def exact_parameters_under_gaussian_prior():
  """Encoder parameters of the exact posterior when p(z) = N(PRIOR_MEAN, diag(PRIOR_VAR))."""
  weights, bias = _decoder_parameters()
  noise, prior_var = np.exp(DECODER_LOGVAR), np.exp(PRIOR_LOGVAR)
  posterior_var = 1.0 / (1.0 / prior_var + DECODER_SCALES**2 / noise)
  projection = weights * posterior_var / noise
  params = {
    "enc_proj": projection,
    "enc_shift": -bias @ projection + posterior_var * PRIOR_MEAN / prior_var,
    "enc_logvar": np.log(posterior_var),
    "dec_weights": weights.T,
    "dec_bias": bias,
  }
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def exact_log_px_under_gaussian_prior(x):
  weights, bias = _decoder_parameters()
  cov = weights @ np.diag(np.exp(PRIOR_LOGVAR)) @ weights.T + np.exp(DECODER_LOGVAR) * np.eye(
    DATA_DIM
  )
  return stats.multivariate_normal(weights @ PRIOR_MEAN + bias, cov).logpdf(
    np.asarray(x, np.float64)
  )


def test_with_a_gaussian_prior_every_bound_at_the_exact_posterior_is_log_px():
  x = data()
  encode, log_likelihood = model(exact_parameters_under_gaussian_prior())
  log_prior = log_gaussian_prior()
  expected = exact_log_px_under_gaussian_prior(x)
  log_w = vae_jax.log_weights(KEY, x, encode, log_likelihood, 7, log_prior=log_prior)
  np.testing.assert_allclose(log_w, np.tile(expected, (7, 1)), atol=3e-5)
  elbo = vae_jax.elbo(KEY, x, encode, log_likelihood, analytic_kl=False, log_prior=log_prior)
  np.testing.assert_allclose(elbo, expected, atol=3e-5)
  for estimator in vae_jax.objectives.ESTIMATORS:
    bound = vae_jax.iwae(
      KEY, x, encode, log_likelihood, num_samples=5, estimator=estimator, log_prior=log_prior
    )
    np.testing.assert_allclose(bound, expected, atol=3e-5)
  # The N(0, I) model's exact posterior is not this prior's: its ELBO falls short.
  wrong = model(exact_parameters())[0]
  short = vae_jax.elbo(
    KEY, x, wrong, log_likelihood, num_samples=1000, analytic_kl=False, log_prior=log_prior
  )
  assert np.all(np.asarray(short) < expected - 0.01)


def test_with_a_gaussian_prior_importance_sampling_converges_to_exact():
  x = data(batch=32)
  params = exact_parameters_under_gaussian_prior()
  params["enc_logvar"] = params["enc_logvar"] + 0.7  # an imperfect proposal
  encode, log_likelihood = model(params)
  log_prior = log_gaussian_prior()
  expected = exact_log_px_under_gaussian_prior(x)
  log_px = vae_jax.importance_log_likelihood(
    KEY, x, encode, log_likelihood, num_samples=5000, log_prior=log_prior
  )
  estimate = vae_jax.importance_log_likelihood_from_log_weights(
    lambda key, k: vae_jax.log_weights(key, x, encode, log_likelihood, k, log_prior=log_prior),
    KEY,
    num_samples=5000,
  )
  np.testing.assert_array_equal(log_px, estimate.log_px)  # chunk_size defaults to 100 in both
  error = np.asarray(log_px) - expected
  assert np.all(np.abs(error) < 4 * np.asarray(estimate.standard_error) + 1e-4), error
  elbo = vae_jax.elbo(
    KEY, x, encode, log_likelihood, num_samples=5000, analytic_kl=False, log_prior=log_prior
  )
  assert np.all(np.abs(error) < 0.1 * (expected - elbo))


@pytest.mark.parametrize(
  "objective",
  [
    functools.partial(vae_jax.elbo, num_samples=3, analytic_kl=False),
    functools.partial(vae_jax.elbo, num_samples=3, analytic_kl=False, estimator="stl"),
    functools.partial(vae_jax.iwae, num_samples=4),
    functools.partial(vae_jax.iwae, num_samples=4, estimator="dreg"),
  ],
  ids=["elbo", "elbo-stl", "iwae", "iwae-dreg"],
)
def test_standard_normal_log_prior_equals_the_default_in_value_and_gradient(objective):
  x = data()

  def mean_objective(params, log_prior):
    encode, log_likelihood = model(params)
    return jnp.mean(objective(KEY, x, encode, log_likelihood, log_prior=log_prior))

  params = perturbed_parameters()
  default, grads_default = jax.value_and_grad(mean_objective)(params, None)
  given, grads_given = jax.value_and_grad(mean_objective)(params, vae_jax.log_standard_normal)
  np.testing.assert_allclose(given, default, rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_given, grads_default
  )


def test_prior_parameters_get_their_full_gradient_under_every_estimator():
  """STL and DReG hold q's parameters constant in log q only; d/d(prior mean) is the
  same for every estimator at the same samples, sum_k w_k d log p(z_k) / d mean."""
  x = data()
  encode, log_likelihood = model(perturbed_parameters())

  def bound(prior_mean, estimator):
    log_prior = log_gaussian_prior(mean=prior_mean)
    return jnp.mean(
      vae_jax.iwae(
        KEY, x, encode, log_likelihood, num_samples=6, estimator=estimator, log_prior=log_prior
      )
    )

  grads = {
    estimator: jax.grad(bound)(jnp.asarray(PRIOR_MEAN, jnp.float32), estimator)
    for estimator in vae_jax.objectives.ESTIMATORS
  }
  assert np.all(np.abs(grads["reparam"]) > 1e-3)
  for estimator in ("stl", "dreg"):
    np.testing.assert_allclose(grads[estimator], grads["reparam"], rtol=1e-5)
  elbo_grads = [
    jax.grad(
      lambda m, e=estimator: jnp.mean(
        vae_jax.elbo(
          KEY,
          x,
          encode,
          log_likelihood,
          analytic_kl=False,
          estimator=e,
          log_prior=log_gaussian_prior(mean=m),
        )
      )
    )(jnp.asarray(PRIOR_MEAN, jnp.float32))
    for estimator in ("reparam", "stl")
  ]
  np.testing.assert_allclose(elbo_grads[1], elbo_grads[0], rtol=1e-5)


def test_a_log_prior_with_the_analytic_kl_or_the_wrong_shape_is_refused():
  x = data()
  encode, log_likelihood = model(perturbed_parameters())
  with pytest.raises(ValueError, match="pass analytic_kl=False"):
    vae_jax.elbo(KEY, x, encode, log_likelihood, log_prior=vae_jax.log_standard_normal)
  with pytest.raises(ValueError, match=r"log_prior\(z\) returned shape .* Sum over the last"):
    vae_jax.iwae(KEY, x, encode, log_likelihood, num_samples=2, log_prior=lambda z: z)
