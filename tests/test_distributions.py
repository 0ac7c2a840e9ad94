"""Tests for vae_jax.distributions: closed forms against SciPy, Monte Carlo, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util
from scipy import special, stats

import vae_jax

RNG = np.random.default_rng(0)


def test_log_normal_matches_scipy():
  x, mean = RNG.normal(size=(2, 5, 7)).astype(np.float32)
  logvar = RNG.normal(size=(5, 7)).astype(np.float32)
  expected = stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(-1)
  np.testing.assert_allclose(vae_jax.log_normal(x, mean, logvar), expected, rtol=1e-5)


def test_log_normal_fixed_and_per_pixel_variance_broadcast():
  x, mean = RNG.normal(size=(2, 5, 7)).astype(np.float32)
  fixed = np.float32(-1.3)
  np.testing.assert_allclose(
    vae_jax.log_normal(x, mean, fixed),
    stats.norm.logpdf(x, mean, np.exp(0.5 * fixed)).sum(-1),
    rtol=1e-5,
  )
  per_pixel = RNG.normal(size=(7,)).astype(np.float32)
  np.testing.assert_allclose(
    vae_jax.log_normal(x, mean, per_pixel),
    stats.norm.logpdf(x, mean, np.exp(0.5 * per_pixel)).sum(-1),
    rtol=1e-5,
  )


def test_log_bernoulli_matches_scipy():
  x = (RNG.uniform(size=(4, 9)) < 0.5).astype(np.float32)
  logits = RNG.normal(scale=3.0, size=(4, 9)).astype(np.float32)
  expected = stats.bernoulli.logpmf(x, special.expit(logits.astype(np.float64))).sum(-1)
  np.testing.assert_allclose(vae_jax.log_bernoulli(x, logits), expected, rtol=1e-5)
  # Bool and int data give the same answer as float data.
  np.testing.assert_allclose(vae_jax.log_bernoulli(x.astype(bool), logits), expected, rtol=1e-5)
  np.testing.assert_allclose(vae_jax.log_bernoulli(x.astype(np.int32), logits), expected, rtol=1e-5)


@pytest.mark.parametrize("magnitude", [30.0, 1e2, 1e4, 1e6])
def test_log_bernoulli_is_exact_at_extreme_logits(magnitude):
  x = jnp.array([[1.0], [0.0], [1.0], [0.0]])
  logits = jnp.array([[magnitude], [magnitude], [-magnitude], [-magnitude]])
  values = vae_jax.log_bernoulli(x, logits)
  right = -np.log1p(np.exp(-magnitude))  # float64; rounds to 0 beyond about 40
  wrong = -magnitude + right
  # Accurate to the rounding of the logit itself (a float32 logit of 30 is only
  # known to 2e-6), and so to far below a nat summed over pixels.
  np.testing.assert_allclose(
    values, [right, wrong, wrong, right], rtol=1e-6, atol=np.spacing(np.float32(magnitude))
  )
  if magnitude >= 1e4:  # the exact limits
    np.testing.assert_array_equal(values, [0.0, -magnitude, -magnitude, 0.0])
  grads = jax.grad(lambda l: vae_jax.log_bernoulli(x, l).sum())(logits)
  assert np.all(np.isfinite(grads))
  # d/dl log p = x - sigmoid(l): 0, -1, +1, 0 in the limit.
  np.testing.assert_allclose(grads[:, 0], [0.0, -1.0, 1.0, 0.0], atol=1e-6)


def test_kl_normal_matches_closed_form_in_float64():
  mq, lq, mp, lp = RNG.normal(size=(4, 3, 6))
  vq, vp = np.exp(lq), np.exp(lp)
  expected = 0.5 * np.sum(np.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1.0, axis=-1)
  args = [a.astype(np.float32) for a in (mq, lq, mp, lp)]
  np.testing.assert_allclose(vae_jax.kl_normal(*args), expected, rtol=1e-5)
  zeros = np.zeros_like(args[0])
  np.testing.assert_allclose(
    vae_jax.kl_normal_std(args[0], args[1]),
    vae_jax.kl_normal(args[0], args[1], zeros, zeros),
    rtol=1e-6,
  )


def test_kl_is_zero_for_equal_distributions_and_accurate_when_close():
  mean, logvar = RNG.normal(size=(2, 3, 5)).astype(np.float32)
  np.testing.assert_array_equal(vae_jax.kl_normal(mean, logvar, mean, logvar), 0.0)
  # For a small log-variance ratio r the KL is about r^2/4 per dimension; the
  # naive formula var ratio - 1 - log ratio loses it to cancellation in float32.
  r = np.array([1e-6, 1e-4, -1e-3, 0.099, 0.101, -0.099, -0.101, 0.3, -2.0])
  expected = 0.5 * (np.expm1(r) - r)  # float64 is exact enough here
  kl = vae_jax.kl_normal_std_per_dimension(jnp.zeros(r.shape), jnp.asarray(r, jnp.float32))
  np.testing.assert_allclose(kl, expected, rtol=3e-6)


def test_kl_monte_carlo_matches_analytic_value_and_gradient():
  mq, lq, mp, lp = (jnp.asarray(a, jnp.float32) for a in RNG.normal(scale=0.5, size=(4, 2, 3)))
  num_samples = 200_000

  def monte_carlo_kl(mq, lq):
    z = vae_jax.reparameterize(jax.random.key(1), mq, lq, num_samples)
    return jnp.mean(
      vae_jax.log_normal(z, mq[None], lq[None]) - vae_jax.log_normal(z, mp[None], lp[None]), 0
    )

  analytic = vae_jax.kl_normal(mq, lq, mp, lp)
  np.testing.assert_allclose(monte_carlo_kl(mq, lq), analytic, atol=0.02)
  grad_mc = jax.grad(lambda *a: monte_carlo_kl(*a).sum(), argnums=(0, 1))(mq, lq)
  grad_exact = jax.grad(lambda *a: vae_jax.kl_normal(*a, mp, lp).sum(), argnums=(0, 1))(mq, lq)
  for mc, exact in zip(grad_mc, grad_exact):
    np.testing.assert_allclose(mc, exact, atol=0.03)


def test_reparameterize_shape_moments_and_gradient():
  mean = jnp.array([[1.0, -2.0], [0.5, 3.0]])
  logvar = jnp.array([[0.0, 1.0], [-1.0, 2.0]])
  z = vae_jax.reparameterize(jax.random.key(0), mean, logvar, 100_000)
  assert z.shape == (100_000, 2, 2)
  np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(z.var(0), jnp.exp(logvar), rtol=0.03)
  # dz/dmean = 1 and dz/dlogvar = (z - mean) / 2 for each sample.
  key = jax.random.key(3)
  z1 = vae_jax.reparameterize(key, mean, logvar, 1)[0]
  g_mean, g_logvar = jax.grad(
    lambda m, lv: vae_jax.reparameterize(key, m, lv, 1).sum(), argnums=(0, 1)
  )(mean, logvar)
  np.testing.assert_allclose(g_mean, jnp.ones_like(mean))
  np.testing.assert_allclose(g_logvar, 0.5 * (z1 - mean), rtol=1e-6)


def _reference_discretized_logistic(x, mean, scale, num_bins=256):
  """Per-pixel log bin masses in float64 from the logistic CDF.

  Right of the mean it subtracts survival functions rather than CDFs, so that
  tail bins keep their relative precision.
  """
  upper = ((2.0 * x + 1) / (num_bins - 1) - 1.0 - mean) / scale
  lower = ((2.0 * x - 1) / (num_bins - 1) - 1.0 - mean) / scale
  upper = np.where(x == num_bins - 1, np.inf, upper)
  lower = np.where(x == 0, -np.inf, lower)
  right_of_mean = lower > 0
  mass = np.where(
    right_of_mean,
    special.expit(-lower) - special.expit(-upper),
    special.expit(upper) - special.expit(lower),
  )
  return np.log(mass)


def test_discretized_logistic_matches_cdf_differences():
  x = RNG.integers(0, 256, size=(3, 50))
  x[0, :2] = [0, 255]  # both edge bins
  mean = RNG.uniform(-1, 1, size=(3, 50))
  log_scale = RNG.uniform(-4, 0, size=(3, 50))
  expected = _reference_discretized_logistic(x, mean, np.exp(log_scale)).sum(-1)
  got = vae_jax.log_discretized_logistic(
    x.astype(np.uint8), mean.astype(np.float32), log_scale.astype(np.float32)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("log_scale", [-12.0, -7.0, -2.0, 0.0, 4.0, 9.0])
@pytest.mark.parametrize("mean", [-1.5, -1.0, 0.0, 0.37, 1.0, 3.0])
def test_discretized_logistic_sums_to_one_with_finite_gradients(mean, log_scale):
  values = jnp.arange(256)[:, None]

  def log_probs(mean, log_scale):
    return vae_jax.log_discretized_logistic(values, mean, log_scale)

  lp = log_probs(jnp.float32(mean), jnp.float32(log_scale))
  assert np.all(np.isfinite(lp))  # far tail bins too: no log(0)
  np.testing.assert_allclose(jax.nn.logsumexp(lp), 0.0, atol=2e-5)
  grads = jax.grad(lambda m, s: jax.nn.logsumexp(log_probs(m, s)), argnums=(0, 1))(
    jnp.float32(mean), jnp.float32(log_scale)
  )
  assert np.all(np.isfinite(grads))


def test_discretized_logistic_mixture():
  x = RNG.integers(0, 256, size=(2, 10))
  mean = RNG.uniform(-1, 1, size=(2, 10, 1)).astype(np.float32)
  log_scale = RNG.uniform(-3, -1, size=(2, 10, 1)).astype(np.float32)
  single = vae_jax.log_discretized_logistic(x, mean[..., 0], log_scale[..., 0])
  # One component, or several identical ones, is the single logistic.
  np.testing.assert_allclose(
    vae_jax.log_discretized_logistic_mixture(x, jnp.zeros((2, 10, 1)), mean, log_scale),
    single,
    rtol=1e-6,
  )
  tiled = [np.tile(a, (1, 1, 3)) for a in (mean, log_scale)]
  logits = RNG.normal(size=(2, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(
    vae_jax.log_discretized_logistic_mixture(x, logits, *tiled), single, rtol=1e-5
  )
  # Against the explicit weighted sum of bin masses.
  means = RNG.uniform(-1, 1, size=(2, 10, 3))
  log_scales = RNG.uniform(-3, -1, size=(2, 10, 3))
  masses = np.exp(_reference_discretized_logistic(x[..., None], means, np.exp(log_scales)))
  expected = np.log(np.sum(special.softmax(logits, -1) * masses, -1)).sum(-1)
  got = vae_jax.log_discretized_logistic_mixture(
    x, logits, means.astype(np.float32), log_scales.astype(np.float32)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # A distribution over the 256 values.
  pixel_values = jnp.arange(256)[:, None]
  total = jax.nn.logsumexp(
    vae_jax.log_discretized_logistic_mixture(
      pixel_values,
      logits[:1, :1],
      means[:1, :1].astype(np.float32),
      log_scales[:1, :1].astype(np.float32),
    )
  )
  np.testing.assert_allclose(total, 0.0, atol=2e-5)


# A component whose mean sits exactly on the upper edge of bin 10, at a vanishing scale:
# half its mass on each side of the edge (issue 57 found NaN here at log-scale -100).
EDGE_OF_BIN_10 = np.float32(21 / 255 - 1)


@pytest.mark.parametrize("log_scale", [-100.0, -20.0])
def test_discretized_logistic_at_a_vanishing_scale_on_a_bin_edge(log_scale):
  got = vae_jax.log_discretized_logistic_mixture(
    np.array([[10]]),
    np.zeros((1, 1, 1), np.float32),
    np.full((1, 1, 1), EDGE_OF_BIN_10),
    np.full((1, 1, 1), log_scale, np.float32),
  )
  np.testing.assert_allclose(got, [np.log(0.5)], rtol=1e-6)


@pytest.mark.parametrize("log_scale", [-1e4, -100.0, -80.0, -20.0, -7.0, 0.0, 7.0, 20.0, 80.0, 1e4])
@pytest.mark.parametrize(
  "mean", [EDGE_OF_BIN_10, np.float32(0.0), np.float32(-1.5), np.float32(2.0)]
)
def test_discretized_logistic_values_and_gradients_are_finite_at_any_log_scale(mean, log_scale):
  x = jnp.array([[0, 10, 11, 127, 128, 254, 255]])
  logits = jnp.zeros((1, 7, 2))

  def log_p(means, log_scales, logits):
    return jnp.sum(vae_jax.log_discretized_logistic_mixture(x, logits, means, log_scales))

  means = jnp.full((1, 7, 2), mean).at[..., 1].set(0.3)  # a second component elsewhere
  log_scales = jnp.full((1, 7, 2), np.float32(log_scale))
  assert np.isfinite(log_p(means, log_scales, logits))
  grads = jax.grad(log_p, argnums=(0, 1, 2))(means, log_scales, logits)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("log_scale", [20.0, 80.0, 1e4])
def test_discretized_logistic_of_a_very_wide_logistic_is_its_density_times_the_bin(log_scale):
  """At scale s >> 1 an interior bin's mass is its width 2/255 times the density at the
  mean, 1/(4s): log P = log(2/255 / 4) - log s, no longer log 0 when 1 - exp(-2/(255 s))
  underflows."""
  got = vae_jax.log_discretized_logistic(jnp.array([[100]]), 0.0, jnp.float32(log_scale))
  np.testing.assert_allclose(got, [np.log(2 / 255 / 4) - log_scale], rtol=1e-6)


def test_values_outside_the_range_have_probability_zero():
  logits = jnp.zeros((1, 2, 256))
  # -1 is not the last class, nor is 256 NaN: both are impossible values.
  assert vae_jax.log_categorical(jnp.array([[-1, 0]]), logits)[0] == -np.inf
  assert vae_jax.log_categorical(jnp.array([[256, 0]]), logits)[0] == -np.inf
  np.testing.assert_allclose(
    vae_jax.log_categorical(jnp.array([[3, 0]]), logits), [2 * np.log(1 / 256)], rtol=1e-6
  )
  grad = jax.grad(lambda l: vae_jax.log_categorical(jnp.array([[256, 0]]), l)[0])(logits)
  assert np.all(np.isfinite(grad))
  for x in ([[-1, 0]], [[256, 0]], [[0, 300]]):
    args = (jnp.zeros((1, 2)), jnp.full((1, 2), -3.0))
    assert vae_jax.log_discretized_logistic(jnp.array(x), *args)[0] == -np.inf
    mixture = (jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.full((1, 2, 3), -3.0))
    assert vae_jax.log_discretized_logistic_mixture(jnp.array(x), *mixture)[0] == -np.inf
    grads = jax.grad(
      lambda *p: vae_jax.log_discretized_logistic_mixture(jnp.array(x), *p)[0], argnums=(0, 1, 2)
    )(*mixture)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_uint8_pixels_into_256_classes_are_not_masked():
  """A uint8 cannot leave [0, 255]: the categorical is then the plain log-softmax gather."""
  x = RNG.integers(0, 256, size=(2, 9)).astype(np.uint8)
  logits = RNG.normal(size=(2, 9, 256)).astype(np.float32)
  log_softmax = jax.nn.log_softmax(logits, axis=-1)
  expected = jnp.sum(jnp.take_along_axis(log_softmax, x[..., None].astype(np.int32), -1), (-2, -1))
  np.testing.assert_array_equal(vae_jax.log_categorical(x, logits), expected)


def test_log_categorical_matches_log_softmax():
  logits = RNG.normal(size=(3, 8, 256)).astype(np.float32)
  x = RNG.integers(0, 256, size=(3, 8))
  log_softmax = logits - special.logsumexp(logits, -1, keepdims=True)
  expected = np.take_along_axis(log_softmax, x[..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(
    vae_jax.log_categorical(x.astype(np.uint8), logits), expected, rtol=1e-5
  )


def test_gradients_match_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    x = RNG.normal(size=(2, 4))
    xb = (RNG.uniform(size=(2, 4)) < 0.5).astype(np.float64)
    xi = RNG.integers(1, 255, size=(2, 4))
    a, b, c, d = RNG.normal(scale=0.5, size=(4, 2, 4))
    test_util.check_grads(lambda m, lv: vae_jax.log_normal(x, m, lv), (a, b), order=2)
    test_util.check_grads(lambda l: vae_jax.log_bernoulli(xb, l), (a,), order=2)
    test_util.check_grads(vae_jax.kl_normal, (a, b, c, d), order=2)
    test_util.check_grads(vae_jax.kl_normal_std, (a, b), order=2)
    test_util.check_grads(
      lambda m, s: vae_jax.log_discretized_logistic(xi, m, s - 3.0), (a, b), order=1
    )
    test_util.check_grads(
      lambda l: vae_jax.log_categorical(xi % 7, l), (RNG.normal(size=(2, 4, 7)),), order=1
    )
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize(
  "call, match",
  [
    (
      lambda: vae_jax.log_normal(jnp.ones((3, 4)), jnp.ones((3, 5)), 0.0),
      r"x\(3, 4\), mean\(3, 5\)",
    ),
    (
      lambda: vae_jax.log_bernoulli(jnp.ones((2, 3)), jnp.ones((3, 2))),
      r"x\(2, 3\), logits\(3, 2\)",
    ),
    (
      lambda: vae_jax.log_bernoulli(jnp.ones((2, 3)), jnp.ones((2, 3), jnp.int32)),
      "logits must be a floating",
    ),
    (
      lambda: vae_jax.kl_normal_std(jnp.ones((2, 3)), jnp.ones((2, 4))),
      r"mean\(2, 3\), logvar\(2, 4\)",
    ),
    (
      lambda: vae_jax.kl_normal(jnp.ones(3), jnp.ones(3), jnp.ones(4), jnp.ones(3)),
      r"mean_p\(4,\)",
    ),
    (
      lambda: vae_jax.reparameterize(jax.random.key(0), jnp.ones((2, 3)), jnp.ones((2, 4)), 1),
      r"mean\(2, 3\) and logvar\(2, 4\)",
    ),
    (
      lambda: vae_jax.reparameterize(jax.random.key(0), jnp.ones(3), jnp.ones(3), 0),
      "num_samples must be a positive int",
    ),
    (
      lambda: vae_jax.log_categorical(jnp.ones((2, 3)), jnp.ones((2, 3, 4))),
      "integer class indices",
    ),
    (lambda: vae_jax.log_normal(jnp.float32(1.0), 0.0, 0.0), "event axis"),
    (lambda: vae_jax.iwae_bound(jnp.float32(1.0)), "leading sample axis"),
  ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("logvar", [-150.0, -100.0, 100.0, 150.0])
def test_extreme_log_variances_stay_finite(logvar):
  """exp(-logvar) overflows float32 beyond |logvar| = 88.7; the densities must not."""
  logvar = jnp.full((3,), logvar, jnp.float32)
  mean = jnp.array([0.5, -1.0, 2.0], jnp.float32)
  at_mean = vae_jax.log_normal(mean, mean, logvar)  # 0 * inf would be NaN
  np.testing.assert_allclose(
    at_mean, -0.5 * np.sum(np.log(2 * np.pi) + np.asarray(logvar)), rtol=1e-6
  )
  assert np.isfinite(vae_jax.kl_normal(mean, logvar, mean, logvar))
  np.testing.assert_allclose(vae_jax.kl_normal(mean, logvar, mean, logvar), 0.0, atol=1e-6)
  near = vae_jax.log_normal(mean + 1e-30, mean, logvar)
  assert not np.isnan(near)
