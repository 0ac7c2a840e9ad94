"""Log-densities, KL divergences and reparameterized sampling; pure and per-example.

Every log-density sums over the event (last) axis and leaves all other axes
unreduced. Arguments broadcast against each other by NumPy rules, done
explicitly so the functions also run under `jax_numpy_rank_promotion="raise"`.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

_LOG_2PI = math.log(2.0 * math.pi)


def broadcast_args(names: Sequence[str], *arrays: ArrayLike) -> list[jax.Array]:
  """Broadcasts `arrays` to one shape, or raises a ValueError naming them."""
  arrays = [jnp.asarray(a) for a in arrays]
  shapes = [a.shape for a in arrays]
  try:
    shape = np.broadcast_shapes(*shapes)
  except ValueError:
    got = ", ".join(f"{n}{tuple(s)}" for n, s in zip(names, shapes))
    raise ValueError(
      f"Shapes do not broadcast together: {got}. Expected equal shapes, or "
      "shapes that broadcast by NumPy rules (e.g. a scalar log-variance)."
    ) from None
  if not shape:
    raise ValueError(
      f"{names[0]} needs an event axis (last axis), got scalar inputs "
      f"{', '.join(names)}; reshape to [..., event]."
    )
  return [jnp.broadcast_to(a, shape) for a in arrays]


def check_floating(name: str, x: ArrayLike) -> None:
  """Raises a ValueError unless `x` has a floating dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f"{name} must be a floating-point array, got dtype {dtype}; "
      f"cast it with .astype(jnp.float32)."
    )


def _data_and_parameters(names: Sequence[str], x: ArrayLike, *params: ArrayLike) -> list[jax.Array]:
  """Checks that params are floating, casts data x to their dtype, broadcasts all."""
  for name, value in zip(names[1:], params):
    check_floating(name, value)
  x = jnp.asarray(x).astype(jnp.result_type(*params))
  return broadcast_args(names, x, *params)


def log_normal(x: ArrayLike, mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
  """Diagonal Gaussian log-density log N(x; mean, exp(logvar)).

  Also the Gaussian likelihood: a scalar `logvar` is a fixed variance, one of
  shape [event] a learned per-pixel variance.

  Args:
    x: points, [..., event].
    mean: means, broadcastable to x.
    logvar: log-variances, broadcastable to x.

  Returns:
    Log-density summed over the last axis, [...].

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.log_normal(jnp.zeros((3, 2)), 0.0, 0.0)   # -log(2 pi) for each of 3 points
    Array([-1.838, -1.838, -1.838], dtype=float32)
  """
  return jnp.sum(log_normal_per_dimension(x, mean, logvar), axis=-1)


def log_standard_normal(z: ArrayLike) -> jax.Array:
  """log N(z; 0, I), summed over the last axis: the VAE's default prior, [...].

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.log_standard_normal(jnp.zeros((4, 3, 2))).shape   # z [K, batch, latent]
    (4, 3)
  """
  check_floating("z", z)
  return -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)


def log_normal_per_dimension(x: ArrayLike, mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
  """log_normal before the sum over the last axis: [..., event]."""
  x, mean, logvar = _data_and_parameters(("x", "mean", "logvar"), x, mean, logvar)
  # ((x - mean) / sigma)^2 with sigma^-1 = exp(-logvar / 2): finite for |logvar| up to ~177
  # in float32, where exp(-logvar) overflows beyond 88 (and 0 * inf at x = mean is NaN).
  return -0.5 * (_LOG_2PI + logvar + jnp.square((x - mean) * jnp.exp(-0.5 * logvar)))


def log_bernoulli(x: ArrayLike, logits: ArrayLike) -> jax.Array:
  """Bernoulli log-probability of binary `x` given logits.

  Computed as x * logits - softplus(logits): one transcendental per pixel,
  exact for abs(logits) up to 1e4 and beyond (x=1 with logits=1e4 gives 0, x=0
  gives -1e4), accurate to the rounding of the logit elsewhere, and its backward
  pass x - σ(logits) is the cheapest XLA fuses (5% faster IWAE K=50 training
  on CPU than -softplus((1 - 2x) logits)). x must be binary: for grey values
  in (0, 1) this is not a likelihood (vae_jax.data refuses that pairing).

  Args:
    x: binary data in {0, 1} (bool, int or float), [..., event].
    logits: log-odds, broadcastable to x.

  Returns:
    Log-probability summed over the last axis, [...].

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.log_bernoulli(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1e4]]))   # log 0.5 + log 0
    Array([-10000.693], dtype=float32)
  """
  x, logits = _data_and_parameters(("x", "logits"), x, logits)
  return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


#: Log-scales of the discretized logistic below this are taken as it: exp(80) ~ 5.5e34 is
#: about the largest inverse scale whose products with bin widths stay finite in float32,
#: and at this scale the logistic is already a point mass at float32's resolution.
MIN_LOG_SCALE = -80.0


def _log_one_minus_exp_minus(log_a: jax.Array) -> jax.Array:
  """log(1 - exp(-a)) from log a, for any a > 0 (no log 0 when a underflows)."""
  small = log_a < -20.0  # then 1 - exp(-a) = a (1 - a/2 + ...) to float precision
  safe = jnp.where(small, 0.0, log_a)  # keeps the unselected branch's gradient finite
  return jnp.where(small, log_a - 0.5 * jnp.exp(log_a), jnp.log(-jnp.expm1(-jnp.exp(safe))))


def _log_sigmoid_difference(a: jax.Array, b: jax.Array, log_a_minus_b: jax.Array) -> jax.Array:
  """log(σ(a) - σ(b)) for a > b, with no cancellation.

  σ(a) - σ(b) = σ(a) σ(-b) (1 - exp(b - a)), and each factor has a stable log.
  log(a - b) is passed in so it need not be recovered by subtracting large numbers, and
  stays exact when a - b underflows (a very wide logistic).
  """
  return jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + _log_one_minus_exp_minus(log_a_minus_b)


def _log_discretized_logistic_unsummed(
  x: jax.Array, mean: jax.Array, log_scale: jax.Array, num_bins: int
) -> jax.Array:
  """Per-pixel log P(x) for x in [0, num_bins - 1] (clipped into it); no reduction."""
  x = jnp.clip(x, 0, num_bins - 1)  # finite where x is out of range: _outside_to_minus_inf
  log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
  # Bin edges from integers, so that bin k's upper edge and bin k+1's lower edge
  # are the same float and the masses of all bins sum to one.
  upper_edge = (2.0 * x + 1.0) / (num_bins - 1) - 1.0
  lower_edge = (2.0 * x - 1.0) / (num_bins - 1) - 1.0
  inv_scale = jnp.exp(-log_scale)
  upper = (upper_edge - mean) * inv_scale
  lower = (lower_edge - mean) * inv_scale
  is_first = x <= 0
  is_last = x >= num_bins - 1
  middle = _log_sigmoid_difference(upper, lower, math.log(2.0 / (num_bins - 1)) - log_scale)
  # The edge bins take the whole tail.
  return jnp.where(
    is_first,
    jax.nn.log_sigmoid(upper),
    jnp.where(is_last, jax.nn.log_sigmoid(-lower), middle),
  )


def _outside_to_minus_inf(x: jax.Array, log_p: jax.Array, num_values: int) -> jax.Array:
  """log_p where x is a value in [0, num_values - 1], and -inf (probability 0) elsewhere.

  log_p is computed with x clipped into the range, so that it is finite and the
  gradient where x is out of range is zero, not NaN. Where x's dtype cannot hold an
  out-of-range value (uint8 with 256 values), nothing is masked."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    info = jnp.iinfo(x.dtype)
    if info.min >= 0 and info.max <= num_values - 1:
      return log_p
  return jnp.where((x >= 0) & (x <= num_values - 1), log_p, -jnp.inf)


def log_discretized_logistic(
  x: ArrayLike, mean: ArrayLike, log_scale: ArrayLike, *, num_bins: int = 256
) -> jax.Array:
  """Discretized logistic log-probability of 8-bit pixels (Salimans et al. 2017).

  The pixel value k in {0, ..., num_bins - 1} is mapped to 2k/(num_bins-1) - 1
  in [-1, 1] and given the logistic mass of its bin; the first and last bins
  take the tails, so the probabilities of all num_bins values sum to one.

  Args:
    x: integer pixel values in [0, num_bins - 1] (any numeric dtype), [..., event].
    mean: logistic location on the [-1, 1] scale, broadcastable to x.
    log_scale: log of the logistic scale on the [-1, 1] scale, broadcastable to x. Any
      value: the result and its gradients stay finite; values below MIN_LOG_SCALE, a
      point mass at float32's resolution, are taken as it.
    num_bins: number of pixel values, 256 for 8-bit images.

  Returns:
    Log-probability summed over the last axis, [...]; -inf where a value of x lies
    outside [0, num_bins - 1] (it has probability zero).

  References:
    Salimans et al. 2017, PixelCNN++, https://arxiv.org/abs/1701.05517.

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> x = jnp.arange(256)[None]                                # every 8-bit value once
    >>> probs = jnp.exp(vae_jax.log_discretized_logistic(x[..., None], 0.0, -2.0))  # one pixel each
    >>> float(jnp.sum(probs))                                     # the bins' masses sum to one
    1.0
  """
  x, mean, log_scale = _data_and_parameters(("x", "mean", "log_scale"), x, mean, log_scale)
  log_p = _log_discretized_logistic_unsummed(x, mean, log_scale, num_bins)
  return jnp.sum(_outside_to_minus_inf(x, log_p, num_bins), axis=-1)


def log_discretized_logistic_mixture(
  x: ArrayLike,
  mixture_logits: ArrayLike,
  means: ArrayLike,
  log_scales: ArrayLike,
  *,
  num_bins: int = 256,
) -> jax.Array:
  """Per-pixel mixture of discretized logistics (PixelCNN++, NVAE).

  Each pixel (channel value) has its own mixture; pixels are independent given
  the parameters (no autoregressive coupling of RGB channels).

  Args:
    x: integer pixel values in [0, num_bins - 1], [..., event].
    mixture_logits: unnormalized log mixture weights, [..., event, components].
    means: component locations on the [-1, 1] scale, [..., event, components].
    log_scales: component log-scales, [..., event, components]; any value, as in
      log_discretized_logistic.
    num_bins: number of pixel values.

  Returns:
    Log-probability summed over the event axis, [...]; -inf where a value of x lies
    outside [0, num_bins - 1].

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> x = jnp.array([[0, 128, 255]])                            # [batch, pixels]
    >>> logits, means = jnp.zeros((1, 3, 5)), jnp.zeros((1, 3, 5))  # 5 components a pixel
    >>> log_scales = jnp.full((1, 3, 5), -3.0)
    >>> vae_jax.log_discretized_logistic_mixture(x, logits, means, log_scales).shape
    (1,)
  """
  x, mixture_logits, means, log_scales = _data_and_parameters(
    ("x[..., None]", "mixture_logits", "means", "log_scales"),
    jnp.asarray(x)[..., None],
    mixture_logits,
    means,
    log_scales,
  )
  if x.ndim < 2:
    raise ValueError(
      "mixture_logits, means and log_scales need axes [..., event, components], "
      f"got shape {jnp.shape(mixture_logits)}."
    )
  log_probs = _log_discretized_logistic_unsummed(x, means, log_scales, num_bins)
  log_mix = jax.nn.log_softmax(mixture_logits, axis=-1)
  log_p = jax.nn.logsumexp(log_mix + log_probs, axis=-1)
  return jnp.sum(_outside_to_minus_inf(x[..., 0], log_p, num_bins), axis=-1)


def log_categorical(x: ArrayLike, logits: ArrayLike) -> jax.Array:
  """Categorical log-probability, one categorical per pixel (e.g. 256-way).

  Args:
    x: integer class indices in [0, classes - 1], [..., event].
    logits: unnormalized log-probabilities, [..., event, classes].

  Returns:
    Log-probability summed over the event axis, [...]; -inf where a value of x lies
    outside [0, classes - 1] (it has probability zero; -1 is not the last class).

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.log_categorical(jnp.array([[7, 200]]), jnp.zeros((1, 2, 256)))   # 2 log(1/256)
    Array([-11.09], dtype=float32)
  """
  check_floating("logits", logits)
  x, logits = jnp.asarray(x), jnp.asarray(logits)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(
      f"x must hold integer class indices, got dtype {x.dtype}; "
      "cast 8-bit pixels with x.astype(jnp.int32)."
    )
  if logits.ndim < 2:
    raise ValueError(f"logits needs axes [..., event, classes], got shape {logits.shape}.")
  x, _ = broadcast_args(("x", "logits[..., 0]"), x, logits[..., 0])
  logits = jnp.broadcast_to(logits, x.shape + logits.shape[-1:])
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  # Clipped: take_along_axis would read -1 as the last class, and 256 as NaN.
  index = jnp.clip(x, 0, num_classes - 1)[..., None]
  log_p = jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]
  return jnp.sum(_outside_to_minus_inf(x, log_p, num_classes), axis=-1)


def reparameterize(
  key: jax.Array, mean: ArrayLike, logvar: ArrayLike, num_samples: int
) -> jax.Array:
  """K reparameterized samples z = mean + exp(logvar / 2) * eps, eps ~ N(0, I).

  Args:
    key: a JAX random key.
    mean: Gaussian means, [...].
    logvar: Gaussian log-variances, same shape as mean.
    num_samples: K, the number of samples.

  Returns:
    Samples on a new leading axis, [K, ...], differentiable in mean and logvar.

  Example:
    >>> import jax, jax.numpy as jnp, vae_jax
    >>> vae_jax.reparameterize(jax.random.key(0), jnp.zeros((3, 2)), jnp.zeros((3, 2)), 5).shape
    (5, 3, 2)
  """
  check_floating("mean", mean)
  check_floating("logvar", logvar)
  mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
  if mean.shape != logvar.shape:
    raise ValueError(
      f"mean and logvar must have the same shape, got mean{mean.shape} and logvar{logvar.shape}."
    )
  check_num_samples(num_samples)
  eps = jax.random.normal(key, (num_samples, *mean.shape), dtype=mean.dtype)
  return mean[None] + jnp.exp(0.5 * logvar)[None] * eps


def check_num_samples(num_samples: int, name: str = "num_samples") -> None:
  """Raises a ValueError unless num_samples is a positive Python int."""
  if (
    isinstance(num_samples, bool)
    or not isinstance(num_samples, (int, np.integer))
    or num_samples < 1
  ):
    raise ValueError(f"{name} must be a positive int, got {num_samples!r}.")


def kl_normal(
  mean_q: ArrayLike, logvar_q: ArrayLike, mean_p: ArrayLike, logvar_p: ArrayLike
) -> jax.Array:
  """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) for diagonal Gaussians.

  Written with exp(r) - 1 - r for r the log variance ratio, computed so that
  it keeps full precision when q and p are close (see _exp_minus_1_minus).

  Returns:
    KL summed over the last axis, [...].

  Example:
    >>> import math, jax.numpy as jnp, vae_jax
    >>> zero = jnp.zeros(1)
    >>> vae_jax.kl_normal(zero, zero, zero, zero + math.log(4.0))   # KL(N(0, 1) || N(0, 4))
    Array(0.318, dtype=float32)
  """
  return jnp.sum(kl_normal_per_dimension(mean_q, logvar_q, mean_p, logvar_p), axis=-1)


def kl_normal_per_dimension(
  mean_q: ArrayLike, logvar_q: ArrayLike, mean_p: ArrayLike, logvar_p: ArrayLike
) -> jax.Array:
  """As kl_normal, but unreduced over the last axis (one KL per latent dimension)."""
  names = ("mean_q", "logvar_q", "mean_p", "logvar_p")
  args = (mean_q, logvar_q, mean_p, logvar_p)
  for name, value in zip(names, args):
    check_floating(name, value)
  mean_q, logvar_q, mean_p, logvar_p = broadcast_args(names, *args)
  log_ratio = logvar_q - logvar_p
  # As in log_normal: the mean term stays finite (0 for mean_q = mean_p) for |logvar_p| < ~177.
  scaled_difference = (mean_q - mean_p) * jnp.exp(-0.5 * logvar_p)
  return 0.5 * (_exp_minus_1_minus(log_ratio) + jnp.square(scaled_difference))


def kl_normal_std(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis.

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.kl_normal_std(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)))   # (1 + 0) / 2
    Array([0.5], dtype=float32)
  """
  return jnp.sum(kl_normal_std_per_dimension(mean, logvar), axis=-1)


def kl_normal_std_per_dimension(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) for each dimension, unreduced."""
  check_floating("mean", mean)
  check_floating("logvar", logvar)
  mean, logvar = broadcast_args(("mean", "logvar"), mean, logvar)
  return 0.5 * (_exp_minus_1_minus(logvar) + jnp.square(mean))


def _exp_minus_1_minus(r: jax.Array) -> jax.Array:
  """exp(r) - 1 - r without cancellation: its Taylor series near 0, else expm1(r) - r.

  At the switch |r| = 0.1 both sides are within about 1e-6 relative error.
  """
  series = jnp.square(r) * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r / 120.0)))
  return jnp.where(jnp.abs(r) < 0.1, series, jnp.expm1(r) - r)
