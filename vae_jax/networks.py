"""Flax NNX network bodies: the MLP, and the conv encoder and decoder for 28x28 and 32x32 images."""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

#: The values of config.activation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "tanh": jnp.tanh,
  "relu": jax.nn.relu,
  "elu": jax.nn.elu,
  "gelu": jax.nn.gelu,
  "softplus": jax.nn.softplus,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name` (one of ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class MLP(nnx.Module):
  """Dense layers with an activation between them, none after the last.

  `dtype` is the precision of the matmuls (float32 accumulation either way);
  `float32_first_layer` keeps the first one in float32 whatever `dtype` is: the
  networks that take latent samples use it, because bfloat16's 8-bit mantissa
  would move a sample z by up to abs(z)/256, a sizeable part of a posterior
  standard deviation (it cost IWAE K=50 about 3 nats of test ELBO).
  """

  def __init__(
    self,
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str,
    dtype: jnp.dtype = jnp.float32,
    float32_first_layer: bool = False,
    rngs: nnx.Rngs,
  ):
    sizes = [in_features, *hidden, out_features]
    dtypes = [jnp.float32 if float32_first_layer else dtype] + [dtype] * (len(sizes) - 2)
    self.layers = nnx.List(
      [
        nnx.Linear(a, b, dtype=d, preferred_element_type=jnp.float32, rngs=rngs)
        for a, b, d in zip(sizes[:-1], sizes[1:], dtypes, strict=True)
      ]
    )
    self.activation = activation_fn(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = self.activation(layer(x))
    return self.layers[-1](x)


class ConvEncoder(nnx.Module):
  """Two stride-2 3x3 convolutions and a dense layer: 28x28 or 32x32 images -> features."""

  def __init__(self, image_shape, channels, hidden, out_features, *, activation, dtype, rngs):
    height, width, in_channels = image_shape
    c1, c2 = channels
    conv = dict(
      strides=2, padding="SAME", dtype=dtype, preferred_element_type=jnp.float32, rngs=rngs
    )
    self.conv1 = nnx.Conv(in_channels, c1, (3, 3), **conv)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), **conv)
    flat = math.ceil(height / 4) * math.ceil(width / 4) * c2
    self.mlp = MLP(flat, hidden, out_features, activation=activation, dtype=dtype, rngs=rngs)
    self.activation = activation_fn(activation)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = self.activation(self.conv1(x_BxHxWxC))
    h = self.activation(self.conv2(h))
    return self.mlp(h.reshape(h.shape[0], -1))


class ConvDecoder(nnx.Module):
  """Dense layers to a (H/4)x(W/4) map, then two stride-2 transposed convolutions."""

  def __init__(
    self, in_features, image_shape, channels, hidden, out_channels, *, activation, dtype, rngs
  ):
    height, width, _ = image_shape
    if height % 4 or width % 4:
      raise ValueError(f"ConvDecoder needs height and width divisible by 4, got {image_shape}.")
    c1, c2 = channels
    self.start_shape = (height // 4, width // 4, c2)
    self.mlp = MLP(
      in_features,
      hidden,
      math.prod(self.start_shape),
      activation=activation,
      dtype=dtype,
      float32_first_layer=True,  # it takes latent samples
      rngs=rngs,
    )
    deconv = dict(strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs)  # no f32-out option
    self.deconv1 = nnx.ConvTranspose(c2, c1, (3, 3), **deconv)
    self.deconv2 = nnx.ConvTranspose(c1, out_channels, (3, 3), **deconv)
    self.activation = activation_fn(activation)

  def __call__(self, z_BxF: jax.Array) -> jax.Array:
    h = self.activation(self.mlp(z_BxF)).reshape(z_BxF.shape[0], *self.start_shape)
    h = self.activation(self.deconv1(h))
    return self.deconv2(h)
