"""Likelihood heads p(x|z): from a decoder's outputs per pixel to log p(x|z) and a mean image.

Data are images flattened to [batch, pixels]: floats in [0, 1] for the Bernoulli and
Gaussian heads, integers in [0, 255] for the discretized logistic mixture and the
256-way categorical (integer_data). A decoder emits outputs_per_pixel numbers a pixel.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import distributions


class Bernoulli(nnx.Module):
  """Bernoulli pixels; the decoder emits one logit per pixel."""

  outputs_per_pixel = 1
  integer_data = False

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    """log p(x|z) summed over the pixels, [batch], from the decoder's outputs."""
    return distributions.log_bernoulli(x_BxD, out_BxDxP[..., 0])

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    """The mean image of p(x|z) in [0, 1], [batch, pixels], for pictures."""
    return jax.nn.sigmoid(out_BxDxP[..., 0])


class Gaussian(nnx.Module):
  """Gaussian pixels; fixed variance, or a learned variance per pixel."""

  outputs_per_pixel = 1
  integer_data = False

  def __init__(self, num_pixels: int, *, learned_variance: bool, logvar: float):
    self.learned_variance = learned_variance
    if learned_variance:
      self.logvar = nnx.Param(jnp.full((num_pixels,), logvar, jnp.float32))
    else:
      self.fixed_logvar = logvar

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    """log p(x|z) summed over the pixels, [batch], from the decoder's outputs."""
    logvar = self.logvar[...] if self.learned_variance else jnp.float32(self.fixed_logvar)
    return distributions.log_normal(x_BxD, out_BxDxP[..., 0], logvar)

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    """The mean image of p(x|z) in [0, 1], [batch, pixels], for pictures."""
    return jnp.clip(out_BxDxP[..., 0], 0.0, 1.0)


class DiscretizedLogisticMixture(nnx.Module):
  """Per-pixel mixture of discretized logistics over 8-bit values (PixelCNN++)."""

  integer_data = True

  def __init__(self, num_components: int):
    self.num_components = num_components
    self.outputs_per_pixel = 3 * num_components

  def _split(self, out_BxDxP):
    logits, means, log_scales = jnp.split(out_BxDxP, 3, axis=-1)
    # A floor on the log-scale at -7, as in PixelCNN++ and NVAE, so that bits/dim compare
    # with theirs: a scale of e^-7 is 0.12 of a bin's width (2/255), and a bin centred on
    # the mean already holds 97.3% of the mass. (The log-density itself is finite with
    # finite gradients at any log-scale; the floor is a modelling choice, not a guard.)
    return logits, jnp.tanh(means), jnp.maximum(log_scales, -7.0)

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    """log p(x|z) summed over the pixels, [batch], from the decoder's outputs."""
    return distributions.log_discretized_logistic_mixture(x_BxD, *self._split(out_BxDxP))

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    """The mean image of p(x|z) in [0, 1], [batch, pixels], for pictures."""
    logits, means, _ = self._split(out_BxDxP)
    return (jnp.sum(jax.nn.softmax(logits, axis=-1) * means, axis=-1) + 1.0) / 2.0


class Categorical(nnx.Module):
  """One 256-way categorical per 8-bit pixel."""

  integer_data = True
  outputs_per_pixel = 256

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    """log p(x|z) summed over the pixels, [batch], from the decoder's outputs."""
    return distributions.log_categorical(x_BxD.astype(jnp.int32), out_BxDxP)

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    """The mean image of p(x|z) in [0, 1], [batch, pixels], for pictures."""
    values = jnp.arange(self.outputs_per_pixel, dtype=out_BxDxP.dtype)
    return (jax.nn.softmax(out_BxDxP, axis=-1) @ values) / 255.0


#: The values of config.likelihood, the heads make_likelihood builds.
LIKELIHOODS = (
  "bernoulli",
  "gaussian",
  "gaussian_learned_variance",
  "dlogistic_mixture",
  "categorical",
)


def make_likelihood(
  name: str, num_pixels: int, *, gaussian_logvar: float = 0.0, num_components: int = 10
):
  """The likelihood head called `name` (one of LIKELIHOODS)."""
  if name == "bernoulli":
    return Bernoulli()
  if name in ("gaussian", "gaussian_learned_variance"):
    learned = name == "gaussian_learned_variance"
    return Gaussian(num_pixels, learned_variance=learned, logvar=gaussian_logvar)
  if name == "dlogistic_mixture":
    return DiscretizedLogisticMixture(num_components)
  if name == "categorical":
    return Categorical()
  raise ValueError(f"Unknown likelihood {name!r}; choose one of {LIKELIHOODS}.")
