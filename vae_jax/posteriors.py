"""Posteriors q(z|x) beyond the diagonal Gaussian: full covariance and inverse autoregressive flows.

What `encode(x)` returns is the posterior, in one of two forms::

  (mean, logvar)       the diagonal Gaussian, each [batch, latent]: the analytic KL
  a distribution       over z, batch shape [batch], event shape [latent], with distrax's
                       sample_and_log_prob(seed=key, sample_shape=(K,)) -> (z, log_q)
                       ([K, batch, latent], [K, batch]) and log_prob(z) -> [K, batch]

A distrax distribution is one (distrax.MultivariateNormalTri, a distrax.Transformed
flow); so is anything with those two methods. The KL of a distribution is sampled.
The gradient estimators "stl" and "dreg" need log q(z) with q's parameters held
constant; they get it by putting every array of the posterior under stop_gradient, so
such a posterior must be a JAX pytree of its parameters (distrax distributions and the
built-ins here are).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vae_jax import distributions

#: The values of config.posterior.
POSTERIORS = ("diagonal", "full_covariance", "iaf")


def is_distribution(posterior: Any) -> bool:
  """Whether what encode returned is a distribution rather than (mean, logvar)."""
  return not isinstance(posterior, (tuple, list))


def location(posterior: Any) -> jax.Array:
  """A point of q(z|x) for pictures and active units, [batch, latent]: the mean of a
  Gaussian; for the built-in flow, the image of its base distribution's mean; for a
  distribution without a mean (a distrax flow), the mean of 100 samples (a fixed key)."""
  if not is_distribution(posterior):
    return posterior[0]
  if hasattr(posterior, "location"):
    return posterior.location()
  try:
    return posterior.mean()
  except (AttributeError, NotImplementedError):
    z, _ = posterior.sample_and_log_prob(seed=jax.random.key(0), sample_shape=(100,))
    return jnp.mean(z, axis=0)


def stop_parameter_gradients(posterior: Any) -> Any:
  """The same posterior with every parameter under stop_gradient: log_prob(z) then passes
  gradients along z only (sticking the landing, DReG). Raises a ValueError for a posterior
  that is not a pytree of arrays."""
  leaves = jax.tree.leaves(posterior)
  if not leaves or not all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
    raise ValueError(
      f"estimator 'stl' or 'dreg' needs q's parameters held constant, but the posterior "
      f"{type(posterior).__name__} is not a JAX pytree of its parameters: use "
      "estimator='reparam', or make it a pytree (a distrax distribution, or a "
      "flax.struct.dataclass as in vae_jax.posteriors)."
    )
  return jax.tree.map(jax.lax.stop_gradient, posterior)


def _standard_normal(key: jax.Array, sample_shape: tuple[int, ...], like: jax.Array):
  return jax.random.normal(key, (*sample_shape, *like.shape), like.dtype)


def _lead(a: jax.Array, ndim: int) -> jax.Array:
  """a with leading axes of size 1 up to ndim axes: explicit broadcasting over samples."""
  return a.reshape((1,) * (ndim - a.ndim) + a.shape)


@struct.dataclass
class FullCovarianceGaussian:
  """q(z|x) = N(mean, L Lᵀ) with L lower-triangular with a positive diagonal.

  Attributes:
    mean: [batch, latent].
    scale_tril: L, [batch, latent, latent].

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from vae_jax import posteriors
    >>> q = posteriors.FullCovarianceGaussian(jnp.zeros((3, 2)), jnp.tile(jnp.eye(2), (3, 1, 1)))
    >>> z, log_q = q.sample_and_log_prob(seed=jax.random.key(0), sample_shape=(5,))
    >>> z.shape, log_q.shape
    ((5, 3, 2), (5, 3))
    >>> bool(jnp.allclose(q.log_prob(z), log_q))   # by a triangular solve: the same
    True
  """

  mean: jax.Array
  scale_tril: jax.Array

  def sample_and_log_prob(self, *, seed: jax.Array, sample_shape: tuple[int, ...] = ()):
    """z = mean + L ε and log q(z) = log N(ε; 0, I) - log det L: `[*sample_shape, batch,
    latent]` and `[*sample_shape, batch]`."""
    eps = _standard_normal(seed, sample_shape, self.mean)
    z = _lead(self.mean, eps.ndim) + jnp.einsum("bij,...bj->...bi", self.scale_tril, eps)
    log_q = distributions.log_standard_normal(eps) - _lead(self._log_det(), eps.ndim - 1)
    return z, log_q

  def log_prob(self, z: jax.Array) -> jax.Array:
    """log q(z) for z [..., batch, latent], by a triangular solve: [..., batch]."""
    diff = jnp.moveaxis(z - _lead(self.mean, z.ndim), -2, 0)  # [batch, ..., latent]
    flat = diff.reshape(diff.shape[0], -1, diff.shape[-1]).transpose(0, 2, 1)
    eps = jax.scipy.linalg.solve_triangular(self.scale_tril, flat, lower=True)
    eps = jnp.moveaxis(eps.transpose(0, 2, 1).reshape(diff.shape), 0, -2)
    return distributions.log_standard_normal(eps) - _lead(self._log_det(), z.ndim - 1)

  def location(self) -> jax.Array:
    """The mean, [batch, latent]."""
    return self.mean

  def _log_det(self) -> jax.Array:
    return jnp.sum(jnp.log(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)), axis=-1)


def full_covariance(encoder_output: jax.Array, latent_dim: int) -> FullCovarianceGaussian:
  """The full-covariance posterior from an encoder's [batch, latent * (latent + 3) / 2]
  outputs: the mean, the log-variances of L's diagonal, and L's strictly lower entries."""
  d = latent_dim
  mean, logvar, lower = jnp.split(encoder_output, [d, 2 * d], axis=-1)
  rows, cols = np.tril_indices(d, -1)
  scale_tril = jnp.zeros((*mean.shape, d), mean.dtype).at[..., rows, cols].set(lower)
  scale_tril = scale_tril + jax.vmap(jnp.diag)(jnp.exp(0.5 * logvar))
  return FullCovarianceGaussian(mean, scale_tril)


def full_covariance_outputs(latent_dim: int) -> int:
  """The encoder outputs full_covariance reads: mean, log-variances and L's lower part."""
  return latent_dim * (latent_dim + 3) // 2


def made_masks(latent_dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
  """MADE's masks (Germain et al. 2015) for one hidden layer: input → hidden [latent,
  hidden] and hidden → output [hidden, latent], so that output i depends on inputs < i."""
  inputs = np.arange(1, latent_dim + 1)
  hidden_degrees = np.arange(hidden) % max(latent_dim - 1, 1) + 1
  to_hidden = (hidden_degrees[None, :] >= inputs[:, None]).astype(np.float32)
  to_output = (inputs[None, :] > hidden_degrees[:, None]).astype(np.float32)
  return to_hidden, to_output


@struct.dataclass
class AutoregressiveStep:
  """One IAF step's autoregressive network, its weights already masked (a pytree).

  Attributes:
    w_in, w_context, b_hidden: z [latent] and the context [context] to the hidden layer.
    w_shift, b_shift, w_gate, b_gate: the hidden layer to m and s, each [latent].
  """

  w_in: jax.Array
  w_context: jax.Array
  b_hidden: jax.Array
  w_shift: jax.Array
  b_shift: jax.Array
  w_gate: jax.Array
  b_gate: jax.Array

  def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, s) for z [..., batch, latent] and context [batch, context]: m_i and s_i depend
    on z_<i only."""
    h = z @ self.w_in + _lead(context @ self.w_context + self.b_hidden[None], z.ndim)
    h = jax.nn.elu(h)
    return h @ self.w_shift + _lead(self.b_shift, z.ndim), h @ self.w_gate + _lead(
      self.b_gate, z.ndim
    )


@struct.dataclass
class InverseAutoregressiveFlow:
  """q(z|x) of Kingma et al. 2016: z_0 = mean + σ_0 ε, then for each step
  z_t = σ_t z_{t-1} + (1 - σ_t) m_t with (m_t, s_t) = AR-NN_t(z_{t-1}, h), σ_t = sigmoid(s_t)
  (their numerically stable gated update), and the order of z reversed between steps.
  log q(z) = log N(ε; 0, I) - Σ ½ logvar - Σ_t Σ_i log σ_t,i.

  Attributes:
    mean, logvar: the base Gaussian's, [batch, latent].
    context: h, the encoder's context vector, [batch, context].
    steps: the steps' AutoregressiveStep networks.

  References:
    Kingma et al. 2016, https://arxiv.org/abs/1606.04934.
  """

  mean: jax.Array
  logvar: jax.Array
  context: jax.Array
  steps: tuple[AutoregressiveStep, ...]

  def sample_and_log_prob(self, *, seed: jax.Array, sample_shape: tuple[int, ...] = ()):
    """Samples z `[*sample_shape, batch, latent]` and their log q(z) `[*sample_shape, batch]`."""
    eps = _standard_normal(seed, sample_shape, self.mean)
    mean, std = (_lead(a, eps.ndim) for a in (self.mean, jnp.exp(0.5 * self.logvar)))
    z, log_det = self._forward(mean + std * eps)
    log_q0 = distributions.log_standard_normal(eps) - _lead(self._half_log_det(), eps.ndim - 1)
    return z, log_q0 - log_det

  def log_prob(self, z: jax.Array) -> jax.Array:
    """log q(z) for any z [..., batch, latent]: each step is inverted dimension by
    dimension, a pass of its network per latent dimension (latent passes a step, against
    one to sample)."""
    log_det = jnp.zeros(z.shape[:-1], z.dtype)
    for step in reversed(self.steps):
      y = z[..., ::-1]  # undo the reversal that followed this step
      dims = jnp.arange(y.shape[-1])

      def solve(i, x, step=step, y=y, dims=dims):
        # x_i from y_i = σ_i x_i + (1 - σ_i) m_i, where m_i and σ_i read x_<i only (exact
        # by now); the dimensions after i stay 0, so that nothing unbounded enters the net.
        m, s = step(x, self.context)
        gate = jax.nn.sigmoid(s)
        return jnp.where(dims == i, (y - (1.0 - gate) * m) / gate, x)

      z = jax.lax.fori_loop(0, y.shape[-1], solve, jnp.zeros_like(y))
      log_det = log_det + jnp.sum(jax.nn.log_sigmoid(step(z, self.context)[1]), axis=-1)
    eps = (z - _lead(self.mean, z.ndim)) * _lead(jnp.exp(-0.5 * self.logvar), z.ndim)
    log_q0 = distributions.log_standard_normal(eps) - _lead(self._half_log_det(), z.ndim - 1)
    return log_q0 - log_det

  def _half_log_det(self) -> jax.Array:
    return 0.5 * jnp.sum(self.logvar, axis=-1)

  def location(self) -> jax.Array:
    """The flow's image of the base mean (ε = 0), [batch, latent]."""
    return self._forward(self.mean)[0]

  def _forward(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_det = jnp.zeros(z.shape[:-1], z.dtype)
    for step in self.steps:
      m, s = step(z, self.context)
      gate = jax.nn.sigmoid(s)
      z = gate * z + (1.0 - gate) * m
      log_det = log_det + jnp.sum(jax.nn.log_sigmoid(s), axis=-1)
      z = z[..., ::-1]
    return z, log_det


class AutoregressiveNetwork(nnx.Module):
  """The parameters of one IAF step: a MADE with one hidden layer (ELU) that also reads
  the context. The gate's bias starts at 2, so that σ starts near 0.88 and each step
  near the identity (Kingma et al. 2016 bias the gate toward remembering)."""

  def __init__(self, latent_dim: int, context_dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.latent_dim, self.hidden = latent_dim, hidden
    init = nnx.initializers.lecun_normal()
    self.w_in = nnx.Param(init(rngs.params(), (latent_dim, hidden)))
    self.w_context = nnx.Param(init(rngs.params(), (context_dim, hidden)))
    self.b_hidden = nnx.Param(jnp.zeros((hidden,)))
    small = nnx.initializers.normal(1e-3)  # m and s start near constant
    self.w_shift = nnx.Param(small(rngs.params(), (hidden, latent_dim)))
    self.b_shift = nnx.Param(jnp.zeros((latent_dim,)))
    self.w_gate = nnx.Param(small(rngs.params(), (hidden, latent_dim)))
    self.b_gate = nnx.Param(jnp.full((latent_dim,), 2.0))

  def masked(self) -> AutoregressiveStep:
    """The step's weights with MADE's masks applied, as a pytree."""
    to_hidden, to_output = made_masks(self.latent_dim, self.hidden)
    return AutoregressiveStep(
      self.w_in[...] * to_hidden,
      self.w_context[...],
      self.b_hidden[...],
      self.w_shift[...] * to_output,
      self.b_shift[...],
      self.w_gate[...] * to_output,
      self.b_gate[...],
    )


def iaf(
  encoder_output: jax.Array, latent_dim: int, steps: list[AutoregressiveNetwork]
) -> InverseAutoregressiveFlow:
  """The IAF posterior from an encoder's [batch, 3 * latent] outputs (the base mean and
  log-variance, and a context of latent_dim features) and the steps' networks."""
  mean, logvar, context = jnp.split(encoder_output, [latent_dim, 2 * latent_dim], axis=-1)
  return InverseAutoregressiveFlow(mean, logvar, context, tuple(s.masked() for s in steps))


def encoder_outputs(posterior: str, latent_dim: int) -> int:
  """How many features the encoder emits for config.posterior's posterior."""
  return {
    "diagonal": 2 * latent_dim,
    "full_covariance": full_covariance_outputs(latent_dim),
    "iaf": 3 * latent_dim,
  }[posterior]
