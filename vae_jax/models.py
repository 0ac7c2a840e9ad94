"""Flax NNX encoders, decoders, likelihood heads and VAEs; modules hold parameters only.

A VAE exposes the two callables that vae_jax.objectives take:

  encode, log_likelihood = model.callables(labels)   # labels only for conditional VAEs

Data are images [batch, height, width, channels]: floats in [0, 1] for the
Bernoulli and Gaussian likelihoods, integers in [0, 255] for the discretized
logistic mixture and the 256-way categorical. Modules hold no RNG state: all
randomness comes from keys passed to the objectives.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import distributions

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "tanh": jnp.tanh,
  "relu": jax.nn.relu,
  "elu": jax.nn.elu,
  "gelu": jax.nn.gelu,
  "softplus": jax.nn.softplus,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class MLP(nnx.Module):
  """Dense layers with an activation between them, none after the last."""

  def __init__(
    self,
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str,
    rngs: nnx.Rngs,
  ):
    sizes = [in_features, *hidden, out_features]
    self.layers = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    )
    self.activation = _activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = self.activation(layer(x))
    return self.layers[-1](x)


# --- Likelihood heads: decoder outputs -> log p(x|z) and a picture ----------------------


class Bernoulli(nnx.Module):
  """Bernoulli pixels; the decoder emits one logit per pixel."""

  outputs_per_pixel = 1
  integer_data = False

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    return distributions.log_bernoulli(x_BxD, out_BxDxP[..., 0])

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
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
    logvar = self.logvar[...] if self.learned_variance else jnp.float32(self.fixed_logvar)
    return distributions.log_normal(x_BxD, out_BxDxP[..., 0], logvar)

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    return jnp.clip(out_BxDxP[..., 0], 0.0, 1.0)


class DiscretizedLogisticMixture(nnx.Module):
  """Per-pixel mixture of discretized logistics over 8-bit values (PixelCNN++)."""

  integer_data = True

  def __init__(self, num_components: int):
    self.num_components = num_components
    self.outputs_per_pixel = 3 * num_components

  def _split(self, out_BxDxP):
    logits, means, log_scales = jnp.split(out_BxDxP, 3, axis=-1)
    return logits, jnp.tanh(means), log_scales

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    return distributions.log_discretized_logistic_mixture(x_BxD, *self._split(out_BxDxP))

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    logits, means, _ = self._split(out_BxDxP)
    return (jnp.sum(jax.nn.softmax(logits, axis=-1) * means, axis=-1) + 1.0) / 2.0


class Categorical(nnx.Module):
  """One 256-way categorical per 8-bit pixel."""

  integer_data = True
  outputs_per_pixel = 256

  def log_prob(self, x_BxD: jax.Array, out_BxDxP: jax.Array) -> jax.Array:
    return distributions.log_categorical(x_BxD.astype(jnp.int32), out_BxDxP)

  def mean(self, out_BxDxP: jax.Array) -> jax.Array:
    values = jnp.arange(self.outputs_per_pixel, dtype=out_BxDxP.dtype)
    return (jax.nn.softmax(out_BxDxP, axis=-1) @ values) / 255.0


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


# --- Encoder and decoder bodies ---------------------------------------------------------


class ConvEncoder(nnx.Module):
  """Two stride-2 3x3 convolutions and a dense layer: 28x28 or 32x32 images -> features."""

  def __init__(self, image_shape, channels, hidden, out_features, *, activation, rngs):
    height, width, in_channels = image_shape
    c1, c2 = channels
    self.conv1 = nnx.Conv(in_channels, c1, (3, 3), strides=2, padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), strides=2, padding="SAME", rngs=rngs)
    flat = math.ceil(height / 4) * math.ceil(width / 4) * c2
    self.mlp = MLP(flat, hidden, out_features, activation=activation, rngs=rngs)
    self.activation = _activation(activation)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = self.activation(self.conv1(x_BxHxWxC))
    h = self.activation(self.conv2(h))
    return self.mlp(h.reshape(h.shape[0], -1))


class ConvDecoder(nnx.Module):
  """Dense layers to a (H/4)x(W/4) map, then two stride-2 transposed convolutions."""

  def __init__(self, in_features, image_shape, channels, hidden, out_channels, *, activation, rngs):
    height, width, _ = image_shape
    if height % 4 or width % 4:
      raise ValueError(f"ConvDecoder needs height and width divisible by 4, got {image_shape}.")
    c1, c2 = channels
    self.start_shape = (height // 4, width // 4, c2)
    self.mlp = MLP(
      in_features, hidden, math.prod(self.start_shape), activation=activation, rngs=rngs
    )
    self.deconv1 = nnx.ConvTranspose(c2, c1, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
    self.deconv2 = nnx.ConvTranspose(
      c1, out_channels, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs
    )
    self.activation = _activation(activation)

  def __call__(self, z_BxF: jax.Array) -> jax.Array:
    h = self.activation(self.mlp(z_BxF)).reshape(z_BxF.shape[0], *self.start_shape)
    h = self.activation(self.deconv1(h))
    return self.deconv2(h)


# --- The VAE ----------------------------------------------------------------------------


class VAE(nnx.Module):
  """A one-stochastic-layer VAE, optionally conditioned on a class label (Sohn et al. 2015).

  The encoder maps an image (and the one-hot label) to the mean and log-variance
  of q(z|x); the decoder maps z (and the label) to the likelihood head's
  parameters for every pixel.
  """

  def __init__(
    self,
    *,
    image_shape: Sequence[int],
    latent_dim: int,
    likelihood: str = "bernoulli",
    architecture: str = "mlp",
    hidden: Sequence[int] = (200, 200),
    conv_channels: Sequence[int] = (32, 64),
    activation: str = "tanh",
    num_classes: int = 0,
    gaussian_logvar: float = 0.0,
    num_components: int = 10,
    rngs: nnx.Rngs,
  ):
    self.image_shape = tuple(image_shape)
    self.latent_dim = latent_dim
    self.num_classes = num_classes
    num_pixels = math.prod(self.image_shape)
    self.likelihood = make_likelihood(
      likelihood, num_pixels, gaussian_logvar=gaussian_logvar, num_components=num_components
    )
    outputs = self.likelihood.outputs_per_pixel
    if architecture == "mlp":
      self.encoder = MLP(
        num_pixels + num_classes, hidden, 2 * latent_dim, activation=activation, rngs=rngs
      )
      self.decoder = MLP(
        latent_dim + num_classes,
        hidden[::-1],
        num_pixels * outputs,
        activation=activation,
        rngs=rngs,
      )
    elif architecture == "conv":
      height, width, channels = self.image_shape
      self.encoder = ConvEncoder(
        (height, width, channels + num_classes),
        conv_channels,
        hidden,
        2 * latent_dim,
        activation=activation,
        rngs=rngs,
      )
      self.decoder = ConvDecoder(
        latent_dim + num_classes,
        self.image_shape,
        conv_channels,
        hidden[::-1],
        channels * outputs,
        activation=activation,
        rngs=rngs,
      )
    else:
      raise ValueError(f"Unknown architecture {architecture!r}; choose 'mlp' or 'conv'.")
    self.architecture = architecture

  def _one_hot(self, labels, batch):
    if not self.num_classes:
      if labels is not None:
        raise ValueError("Labels were given to an unconditional model (num_classes=0).")
      return None
    if labels is None:
      raise ValueError(f"This conditional VAE needs labels of shape [batch] = ({batch},).")
    if labels.shape != (batch,):
      raise ValueError(f"labels must have shape [batch] = ({batch},), got {labels.shape}.")
    return jax.nn.one_hot(labels, self.num_classes)

  def _check_images(self, x):
    if x.shape[1:] != self.image_shape:
      expected = ", ".join(map(str, self.image_shape))
      raise ValueError(
        f"x must have shape [batch, *image_shape] = [batch, {expected}], got {x.shape}."
      )

  def encode(self, x: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """q(z|x): (mean, logvar), each [batch, latent]."""
    self._check_images(x)
    y = self._one_hot(labels, x.shape[0])
    h = x.astype(jnp.float32)
    if self.likelihood.integer_data:
      h = h / 127.5 - 1.0  # 8-bit pixels to [-1, 1]
    if self.architecture == "mlp":
      h = h.reshape(x.shape[0], -1)
      if y is not None:
        h = jnp.concatenate([h, y], axis=-1)
    elif y is not None:  # the label as constant extra channels
      h = jnp.concatenate(
        [h, jnp.broadcast_to(y[:, None, None, :], (*h.shape[:3], y.shape[-1]))], -1
      )
    mean, logvar = jnp.split(self.encoder(h), 2, axis=-1)
    return mean, logvar

  def decoder_output(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """The likelihood head's parameters for every pixel: [batch, pixels, outputs_per_pixel]."""
    y = self._one_hot(labels, z.shape[0])
    if y is not None:
      z = jnp.concatenate([z, y], axis=-1)
    return self.decoder(z).reshape(z.shape[0], math.prod(self.image_shape), -1)

  def log_likelihood(
    self, x: jax.Array, z: jax.Array, labels: jax.Array | None = None
  ) -> jax.Array:
    """log p(x|z), summed over pixels: [batch]."""
    return self.likelihood.log_prob(x.reshape(x.shape[0], -1), self.decoder_output(z, labels))

  def decode_mean(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """The mean image of p(x|z) in [0, 1], [batch, *image_shape]: for pictures."""
    return self.likelihood.mean(self.decoder_output(z, labels)).reshape(
      z.shape[0], *self.image_shape
    )

  def callables(self, labels: jax.Array | None = None):
    """The (encode, log_likelihood) pair that vae_jax.objectives take."""
    return (lambda x: self.encode(x, labels)), (lambda x, z: self.log_likelihood(x, z, labels))
