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


#: The hidden units of config.activation beyond ACTIVATIONS: Dauphin et al.'s gated linear
#: unit, h(x) * sigmoid(g(x)) with two dense maps (GatedDense), as Tomczak & Welling 2018 use.
GATED = "gated"
#: The values of config.weight_init: the initializers of the MLPs' kernels (biases start
#: at 0). "lecun_normal" is Flax's default (truncated normal, variance 1 / fan_in);
#: "he_normal" is a normal of variance 2 / fan_in, as in Tomczak & Welling's code.
WEIGHT_INITS = {
  "lecun_normal": nnx.initializers.lecun_normal(),
  "he_normal": nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name` (one of ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class GatedDense(nnx.Module):
  """h(x) * sigmoid(g(x)), h and g dense maps: a gated hidden layer (Dauphin et al. 2017),
  the hidden layer of Tomczak & Welling 2018's VAEs."""

  def __init__(self, in_features: int, out_features: int, **linear):
    """linear: the keyword arguments of both nnx.Linear maps (dtype, kernel_init, rngs...)."""
    self.h = nnx.Linear(in_features, out_features, **linear)
    self.g = nnx.Linear(in_features, out_features, **linear)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.h(x) * jax.nn.sigmoid(self.g(x))


class MLP(nnx.Module):
  """Dense layers with an activation between them, none after the last.

  `activation` is a name in ACTIVATIONS, or GATED for GatedDense hidden layers (which
  take no further activation); `weight_init` a name in WEIGHT_INITS.

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
    weight_init: str = "lecun_normal",
    rngs: nnx.Rngs,
  ):
    if weight_init not in WEIGHT_INITS:
      raise ValueError(f"Unknown weight_init {weight_init!r}; choose one of {list(WEIGHT_INITS)}.")
    gated = activation == GATED
    self.activation = (lambda h: h) if gated else activation_fn(activation)
    sizes = [in_features, *hidden, out_features]
    dtypes = [jnp.float32 if float32_first_layer else dtype] + [dtype] * (len(sizes) - 2)
    hidden_layer = GatedDense if gated else nnx.Linear
    linear = dict(
      preferred_element_type=jnp.float32, kernel_init=WEIGHT_INITS[weight_init], rngs=rngs
    )
    self.layers = nnx.List(
      [hidden_layer(a, b, dtype=d, **linear) for a, b, d in zip(sizes[:-2], sizes[1:-1], dtypes)]
      + [nnx.Linear(sizes[-2], sizes[-1], dtype=dtypes[-1], **linear)]
    )

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
