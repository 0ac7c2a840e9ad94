"""Flax NNX encoders, decoders, likelihood heads and VAEs; modules hold parameters only.

A VAE exposes the two callables that vae_jax.objectives take:

  encode, log_likelihood = model.callables(labels)   # labels only for conditional VAEs

Data are images [batch, height, width, channels]: floats in [0, 1] for the
Bernoulli and Gaussian likelihoods, integers in [0, 255] for the discretized
logistic mixture and the 256-way categorical. Modules hold no RNG state: all
randomness comes from keys passed to the objectives.
"""

import math
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import distributions, objectives, priors

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
  """Dense layers with an activation between them, none after the last.

  `dtype` is the precision of the matmuls (float32 accumulation either way);
  `float32_first_layer` keeps the first one in float32 whatever `dtype` is: the
  networks that take latent samples use it, because bfloat16's 8-bit mantissa
  would move a sample z by up to |z|/256, a sizeable part of a posterior
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
    # A floor on the scale, as in PixelCNN++: a bin is 2/255 wide, and scales far below
    # it only sharpen a mass that is already ~1 while their gradients overflow.
    return logits, jnp.tanh(means), jnp.maximum(log_scales, -7.0)

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
    self.activation = _activation(activation)

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
    self.activation = _activation(activation)

  def __call__(self, z_BxF: jax.Array) -> jax.Array:
    h = self.activation(self.mlp(z_BxF)).reshape(z_BxF.shape[0], *self.start_shape)
    h = self.activation(self.deconv1(h))
    return self.deconv2(h)


# --- The VAEs ---------------------------------------------------------------------------


def _check_image_shape(x: jax.Array, image_shape: tuple[int, ...]) -> None:
  if x.shape[1:] != image_shape:
    expected = ", ".join(map(str, image_shape))
    raise ValueError(
      f"x must have shape [batch, *image_shape] = [batch, {expected}], got {x.shape}."
    )


def _network_inputs(x: jax.Array, integer_data: bool) -> jax.Array:
  """Images as float32 network inputs: 8-bit integers scaled to [-1, 1]."""
  h = x.astype(jnp.float32)
  return h / 127.5 - 1.0 if integer_data else h


class LatentVariableModel(Protocol):
  """What training, evaluation and the pictures use of a model: all of it, nothing else.

  Both VAE classes implement it; so can a researcher's NNX module, which then trains
  through train_and_evaluate(config, workdir, model=...) with everything the library
  does. Every method takes `labels` ([batch] class indices, or None) right after its
  data; keys come first, sample counts are keyword-only.
  """

  image_shape: tuple[int, ...]  # of one example: [height, width, channels]
  latent_dim: int  # the size of the z that encode returns and decode_mean takes
  num_classes: int  # > 0: a conditional model; every method then needs labels
  has_analytic_kl: bool  # elbo_terms(analytic_kl=True) works, and p(z) is N(0, I)
  integer_data: bool  # the model reads 8-bit integers (else floats in [0, 1])

  def encode(self, x: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z|x), each [batch, latent_dim]."""

  def decode_mean(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Mean images of p(x|z) in [0, 1], [batch, *image_shape]."""

  def decode_prior(
    self, key: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """Mean images of p(x|z) at draws from the prior, [num_samples, *image_shape]."""

  def elbo_terms(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int = 1,
    analytic_kl: bool = True,
    estimator: str = "reparam",
  ) -> objectives.ElboTerms:
    """The ELBO's reconstruction and KL terms per example (objectives.elbo_terms)."""

  def log_weights(
    self, key: jax.Array, x: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """log p(x, z_k) - log q(z_k|x), [num_samples, batch]: IWAE bounds and IS log p(x)."""

  def iwae(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int,
    estimator: str = "reparam",
  ) -> jax.Array:
    """The IWAE bound per example, with the gradient of `estimator`, [batch]."""


# The protocol's attributes, then its methods, read off the class.
PROTOCOL_MEMBERS = tuple(LatentVariableModel.__annotations__) + tuple(
  name for name, member in vars(LatentVariableModel).items() if callable(member) and name[0] != "_"
)


def check_model(model) -> None:
  """Raises a TypeError naming what `model` lacks of LatentVariableModel."""
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
  missing = [name for name in PROTOCOL_MEMBERS if not hasattr(model, name)]
  if missing:
    raise TypeError(
      f"{type(model).__name__} does not implement vae_jax.models.LatentVariableModel: it "
      f"lacks {', '.join(missing)}. See the protocol's docstring for each one's signature."
    )


class _ImageModel(nnx.Module):
  """What both VAEs share: the image shape, the likelihood head and the input checks."""

  def _set_likelihood(self, image_shape, likelihood, *, gaussian_logvar, num_components):
    self.image_shape = tuple(image_shape)
    self.likelihood = make_likelihood(
      likelihood,
      math.prod(self.image_shape),
      gaussian_logvar=gaussian_logvar,
      num_components=num_components,
    )

  @property
  def integer_data(self) -> bool:
    return self.likelihood.integer_data

  def _flat_inputs(self, x: jax.Array) -> jax.Array:
    """Checked images as the networks' inputs, [batch, pixels]."""
    _check_image_shape(x, self.image_shape)
    return _network_inputs(x, self.integer_data).reshape(x.shape[0], -1)


class VAE(_ImageModel):
  """A one-stochastic-layer VAE, optionally conditioned on a class label (Sohn et al. 2015).

  The encoder maps an image (and the one-hot label) to the mean and log-variance
  of q(z|x); the decoder maps z (and the label) to the likelihood head's
  parameters for every pixel. `prior` is a name in priors.PRIORS, or a prior of
  your own: an NNX module with log_prob(z, encode) -> [...] and
  sample(key, num_samples, encode) -> [num_samples, latent_dim] (see priors.py),
  whose parameters train with the model's.
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
    prior: str | nnx.Module = "standard_normal",
    prior_components: int = 500,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self._set_likelihood(
      image_shape, likelihood, gaussian_logvar=gaussian_logvar, num_components=num_components
    )
    self.latent_dim = latent_dim
    self.num_classes = num_classes
    num_pixels = math.prod(self.image_shape)
    if isinstance(prior, str):
      prior = priors.make_prior(
        prior,
        latent_dim=latent_dim,
        image_shape=self.image_shape,
        num_components=prior_components,
        rngs=rngs,
      )
    if isinstance(prior, priors.VampPrior) and (num_classes or self.integer_data):
      raise ValueError(
        "prior='vampprior' needs an unconditional model of pixels in [0, 1] (its pseudo-"
        "inputs are images the encoder reads): use another prior, or num_classes=0 and a "
        "bernoulli or gaussian likelihood."
      )
    self.prior = prior
    # KL(q(z|x) || p(z)) in closed form: for the N(0, I) prior only.
    self.has_analytic_kl = isinstance(prior, priors.StandardNormal)
    outputs = self.likelihood.outputs_per_pixel
    if architecture == "mlp":
      self.encoder = MLP(
        num_pixels + num_classes,
        hidden,
        2 * latent_dim,
        activation=activation,
        dtype=dtype,
        rngs=rngs,
      )
      self.decoder = MLP(
        latent_dim + num_classes,
        hidden[::-1],
        num_pixels * outputs,
        activation=activation,
        dtype=dtype,
        float32_first_layer=True,  # it takes latent samples
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
        dtype=dtype,
        rngs=rngs,
      )
      self.decoder = ConvDecoder(
        latent_dim + num_classes,
        self.image_shape,
        conv_channels,
        hidden[::-1],
        channels * outputs,
        activation=activation,
        dtype=dtype,
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

  def encode(self, x: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """q(z|x): (mean, logvar), each [batch, latent]."""
    y = self._one_hot(labels, x.shape[0])
    if self.architecture == "mlp":
      h = self._flat_inputs(x)
      if y is not None:
        h = jnp.concatenate([h, y], axis=-1)
    else:
      _check_image_shape(x, self.image_shape)
      h = _network_inputs(x, self.integer_data)
      if y is not None:  # the label as constant extra channels
        h = jnp.concatenate(
          [h, jnp.broadcast_to(y[:, None, None, :], (*h.shape[:3], y.shape[-1]))], -1
        )
    # The networks may compute in bfloat16; the distributions always see float32.
    mean, logvar = jnp.split(self.encoder(h).astype(jnp.float32), 2, axis=-1)
    return mean, logvar

  def decoder_output(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """The likelihood head's parameters for every pixel: [batch, pixels, outputs_per_pixel]."""
    y = self._one_hot(labels, z.shape[0])
    if y is not None:
      z = jnp.concatenate([z, y], axis=-1)
    out = self.decoder(z).astype(jnp.float32)
    return out.reshape(z.shape[0], math.prod(self.image_shape), -1)

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

  def log_prior(self):
    """The prior as the objectives' log_prior: None for N(0, I) (closed forms apply)."""
    if self.has_analytic_kl:
      return None
    return lambda z: self.prior.log_prob(z, self.encode)

  # The rest of LatentVariableModel.

  def elbo_terms(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int = 1,
    analytic_kl: bool = True,
    estimator: str = "reparam",
  ) -> objectives.ElboTerms:
    return objectives.elbo_terms(
      key,
      x,
      *self.callables(labels),
      num_samples=num_samples,
      analytic_kl=analytic_kl,
      estimator=estimator,
      log_prior=self.log_prior(),
    )

  def log_weights(
    self, key: jax.Array, x: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """log p(x, z_k) - log q(z_k|x), [K, batch]."""
    return objectives.log_weights(
      key, x, *self.callables(labels), num_samples, log_prior=self.log_prior()
    )

  def iwae(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int,
    estimator: str = "reparam",
  ) -> jax.Array:
    """The IWAE bound with the gradient of `estimator` (objectives.iwae), [batch]."""
    return objectives.iwae(
      key,
      x,
      *self.callables(labels),
      num_samples=num_samples,
      estimator=estimator,
      log_prior=self.log_prior(),
    )

  def decode_prior(
    self, key: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """Mean images of p(x|z) for z drawn from the prior: [num_samples, *image_shape]."""
    return self.decode_mean(self.prior.sample(key, num_samples, self.encode), labels)


class TwoStochasticLayerVAE(_ImageModel):
  """Burda et al. 2015's VAE with two stochastic layers, x -> h1 -> h2 (Gaussian).

  q(h1|x) q(h2|h1) and p(h2) p(h1|h2) p(x|h1), each conditional a diagonal
  Gaussian (or the likelihood head) whose parameters come from an MLP. The
  paper's MNIST model: 784-100-100-[100]-50-50-[50], tanh, so hidden=(100, 100),
  latent_dim=100, top_hidden=(50, 50), top_latent_dim=50.

  There is no closed-form KL, so the objectives are built from log-weights:
  `log_weights` for IWAE and importance sampling, `elbo_terms` (Monte Carlo
  KL) for the ELBO; gradients are plain reparameterization gradients. The
  K samples run as one batch of K * batch rows through every layer.
  """

  num_classes = 0
  has_analytic_kl = False

  def __init__(
    self,
    *,
    image_shape: Sequence[int],
    latent_dim: int = 100,
    top_latent_dim: int = 50,
    hidden: Sequence[int] = (100, 100),
    top_hidden: Sequence[int] = (50, 50),
    likelihood: str = "bernoulli",
    activation: str = "tanh",
    gaussian_logvar: float = 0.0,
    num_components: int = 10,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self._set_likelihood(
      image_shape, likelihood, gaussian_logvar=gaussian_logvar, num_components=num_components
    )
    self.latent_dim = latent_dim
    self.top_latent_dim = top_latent_dim
    num_pixels = math.prod(self.image_shape)
    outputs = self.likelihood.outputs_per_pixel
    top_hidden = tuple(top_hidden)
    mlp = dict(activation=activation, dtype=dtype, rngs=rngs)
    latent_mlp = dict(mlp, float32_first_layer=True)  # networks that take latent samples
    self.q_h1 = MLP(num_pixels, hidden, 2 * latent_dim, **mlp)
    self.q_h2 = MLP(latent_dim, top_hidden, 2 * top_latent_dim, **latent_mlp)
    self.p_h1 = MLP(top_latent_dim, top_hidden[::-1], 2 * latent_dim, **latent_mlp)
    self.p_x = MLP(latent_dim, tuple(hidden)[::-1], num_pixels * outputs, **latent_mlp)

  def _check_labels(self, labels):
    if labels is not None:
      raise ValueError("TwoStochasticLayerVAE is unconditional: pass labels=None.")

  @staticmethod
  def _f32(network, h):
    """network(h) in float32, whatever precision the network computes in."""
    return network(h).astype(jnp.float32)

  def encode(self, x: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """q(h1|x): (mean, logvar), each [batch, latent_dim]."""
    self._check_labels(labels)
    mean, logvar = jnp.split(self._f32(self.q_h1, self._flat_inputs(x)), 2, axis=-1)
    return mean, logvar

  def decode_mean(self, h1: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """The mean image of p(x|h1) in [0, 1], [batch, *image_shape]."""
    out = self._f32(self.p_x, h1).reshape(h1.shape[0], math.prod(self.image_shape), -1)
    return self.likelihood.mean(out).reshape(h1.shape[0], *self.image_shape)

  def decode_prior(
    self, key: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """Mean images of p(x|h1) at the mean of p(h1|h2), h2 drawn from the prior."""
    self._check_labels(labels)
    h2 = jax.random.normal(key, (num_samples, self.top_latent_dim))
    h1_mean, _ = jnp.split(self._f32(self.p_h1, h2), 2, -1)
    return self.decode_mean(h1_mean)

  def _log_weight_terms(self, key, x, num_samples):
    """log q - log p per dimension of [h1, h2], [K, batch, latents]; log p(x|h1), [K, batch]."""
    x_flat = x.reshape(x.shape[0], -1)
    key_h1, key_h2 = jax.random.split(key)
    q1_mean, q1_logvar = self.encode(x)
    h1 = distributions.reparameterize(key_h1, q1_mean, q1_logvar, num_samples)  # [K, B, Z1]
    q2_mean, q2_logvar = jnp.split(self._f32(self.q_h2, h1), 2, axis=-1)
    h2 = distributions.reparameterize(key_h2, q2_mean, q2_logvar, 1)[0]  # [K, B, Z2]
    p1_mean, p1_logvar = jnp.split(self._f32(self.p_h1, h2), 2, axis=-1)
    log_normal_per_dimension = distributions.log_normal_per_dimension
    zero = jnp.zeros((), h2.dtype)
    log_q_minus_log_p = jnp.concatenate(
      [
        log_normal_per_dimension(h1, q1_mean, q1_logvar)
        - log_normal_per_dimension(h1, p1_mean, p1_logvar),
        log_normal_per_dimension(h2, q2_mean, q2_logvar) - log_normal_per_dimension(h2, zero, zero),
      ],
      axis=-1,
    )
    out = self._f32(self.p_x, h1).reshape(num_samples, x.shape[0], x_flat.shape[-1], -1)
    return log_q_minus_log_p, self.likelihood.log_prob(x_flat, out)

  def log_weights(
    self, key: jax.Array, x: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """log p(x, h1, h2) - log q(h1, h2|x) for K samples, [K, batch]."""
    self._check_labels(labels)
    distributions.check_num_samples(num_samples)
    log_q_minus_log_p, log_px = self._log_weight_terms(key, x, num_samples)
    return log_px - jnp.sum(log_q_minus_log_p, axis=-1)

  def iwae(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int,
    estimator: str = "reparam",
  ) -> jax.Array:
    """The IWAE bound, [batch], with its plain reparameterization gradient."""
    if estimator != "reparam":
      raise ValueError(
        f"estimator={estimator!r}: TwoStochasticLayerVAE trains with 'reparam' gradients only."
      )
    return objectives.iwae_bound(self.log_weights(key, x, labels, num_samples=num_samples))

  def elbo_terms(
    self,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    num_samples: int = 1,
    analytic_kl: bool = False,
    estimator: str = "reparam",
  ) -> objectives.ElboTerms:
    """E_q log p(x|h1) and the K-sample KL(q(h1, h2|x) || p(h1, h2)), per example.

    kl_per_dimension holds each latent dimension's share of that Monte Carlo
    KL, [batch, latent_dim + top_latent_dim].
    """
    if analytic_kl or estimator != "reparam":
      raise ValueError(
        "TwoStochasticLayerVAE has no closed-form KL: use analytic_kl=False and "
        "estimator='reparam'."
      )
    self._check_labels(labels)
    distributions.check_num_samples(num_samples)
    log_q_minus_log_p, log_px = self._log_weight_terms(key, x, num_samples)
    kl_per_dimension = jnp.mean(log_q_minus_log_p, axis=0)
    return objectives.ElboTerms(
      jnp.mean(log_px, axis=0), jnp.sum(kl_per_dimension, axis=-1), kl_per_dimension
    )
