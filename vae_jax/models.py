"""The VAEs (Flax NNX) and the LatentVariableModel protocol that training uses of a model.

Their networks are in vae_jax/networks.py, their likelihood heads in
vae_jax/likelihoods.py, their priors in vae_jax/priors.py. A VAE exposes the two
callables that vae_jax.objectives take:

  encode, log_likelihood = model.callables(labels)   # labels only for conditional VAEs

Data are images [batch, height, width, channels]: floats in [0, 1] for the
Bernoulli and Gaussian likelihoods, integers in [0, 255] for the discretized
logistic mixture and the 256-way categorical. Modules hold no RNG state: all
randomness comes from keys passed to the objectives.
"""

import math
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import distributions, likelihoods, networks, objectives, posteriors, priors


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

  image_shape: tuple[int, ...]  #: of one example, [height, width, channels]
  latent_dim: int  #: the size of the z that encode returns and decode_mean takes
  num_classes: int  #: > 0 for a conditional model, whose every method then needs labels
  has_analytic_kl: bool  #: elbo_terms(analytic_kl=True) works, and p(z) is N(0, I)
  integer_data: bool  #: the model reads 8-bit integers (else floats in [0, 1])

  def encode(self, x: jax.Array, labels: jax.Array | None = None):
    """q(z|x): (mean, logvar), each [batch, latent_dim], or a distribution over z with
    sample_and_log_prob and log_prob (vae_jax.posteriors)."""

  def decode_mean(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Mean images of p(x|z) in [0, 1], `[batch, *image_shape]`."""

  def decode_prior(
    self, key: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """Mean images of p(x|z) at draws from the prior, `[num_samples, *image_shape]`."""

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


#: The protocol's attributes, then its methods, read off the class; check_model asks for each.
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
    self.likelihood = likelihoods.make_likelihood(
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
  whose parameters train with the model's. `posterior` is a name in
  posteriors.POSTERIORS: "diagonal" (encode returns (mean, logvar)), "full_covariance"
  or "iaf" with `flow_steps` steps (encode returns a distribution, whose KL is sampled).
  `logvar_range` = (low, high) clips the diagonal posterior's log-variance, as the
  Hardtanh(-6, 2) of Tomczak & Welling 2018 (its gradient is 0 outside the range).
  `activation` may be networks.GATED and `weight_init` a name in networks.WEIGHT_INITS
  (both for the MLP architecture).
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
    posterior: str = "diagonal",
    flow_steps: int = 2,
    logvar_range: tuple[float, float] | None = None,
    weight_init: str = "lecun_normal",
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if posterior not in posteriors.POSTERIORS:
      raise ValueError(f"Unknown posterior {posterior!r}; choose one of {posteriors.POSTERIORS}.")
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
    if isinstance(prior, priors.VampPrior) and posterior != "diagonal":
      raise ValueError(
        "prior='vampprior' is a mixture of the encoder's diagonal posteriors: use "
        "posterior='diagonal' with it."
      )
    self.prior = prior
    self.posterior = posterior
    # KL(q(z|x) || p(z)) in closed form: for a diagonal posterior and the N(0, I) prior.
    self.has_analytic_kl = isinstance(prior, priors.StandardNormal) and posterior == "diagonal"
    encoder_outputs = posteriors.encoder_outputs(posterior, latent_dim)
    outputs = self.likelihood.outputs_per_pixel
    if logvar_range is not None and (posterior != "diagonal" or len(logvar_range) != 2):
      raise ValueError(
        f"logvar_range={logvar_range!r} clips the diagonal posterior's log-variance: give "
        "(low, high) with posterior='diagonal', or None."
      )
    self.logvar_range = None if logvar_range is None else tuple(map(float, logvar_range))
    if architecture != "mlp" and (activation == networks.GATED or weight_init != "lecun_normal"):
      raise ValueError(
        f"activation={activation!r} and weight_init={weight_init!r} are options of the MLP "
        "networks: use architecture='mlp', or an activation of networks.ACTIVATIONS and "
        "weight_init='lecun_normal'."
      )
    if architecture == "mlp":
      mlp = dict(activation=activation, dtype=dtype, weight_init=weight_init, rngs=rngs)
      self.encoder = networks.MLP(num_pixels + num_classes, hidden, encoder_outputs, **mlp)
      self.decoder = networks.MLP(
        latent_dim + num_classes,
        hidden[::-1],
        num_pixels * outputs,
        float32_first_layer=True,  # it takes latent samples
        **mlp,
      )
    elif architecture == "conv":
      height, width, channels = self.image_shape
      self.encoder = networks.ConvEncoder(
        (height, width, channels + num_classes),
        conv_channels,
        hidden,
        encoder_outputs,
        activation=activation,
        dtype=dtype,
        rngs=rngs,
      )
      self.decoder = networks.ConvDecoder(
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
    if posterior == "full_covariance":  # start as the diagonal posterior: L's lower part 0
      last = (self.encoder if architecture == "mlp" else self.encoder.mlp).layers[-1]
      last.kernel[...] = last.kernel[...].at[:, 2 * latent_dim :].set(0.0)
    if posterior == "iaf":  # (only then: a diagonal VAE's state is what it always was)
      self.flow = nnx.List(
        [
          posteriors.AutoregressiveNetwork(latent_dim, latent_dim, hidden[-1], rngs=rngs)
          for _ in range(flow_steps)
        ]
      )

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

  def encode(self, x: jax.Array, labels: jax.Array | None = None):
    """q(z|x): (mean, logvar), each [batch, latent], for the diagonal posterior; else the
    posterior distribution (vae_jax.posteriors)."""
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
    out = self.encoder(h).astype(jnp.float32)
    if self.posterior == "full_covariance":
      return posteriors.full_covariance(out, self.latent_dim)
    if self.posterior == "iaf":
      return posteriors.iaf(out, self.latent_dim, list(self.flow))
    mean, logvar = jnp.split(out, 2, axis=-1)
    if self.logvar_range is not None:
      logvar = jnp.clip(logvar, *self.logvar_range)
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
    """The mean image of p(x|z) in [0, 1], `[batch, *image_shape]`: for pictures."""
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
    """The ELBO's reconstruction and KL terms per example (objectives.elbo_terms), with
    the model's prior."""
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
    """Mean images of p(x|z) for z drawn from the prior: `[num_samples, *image_shape]`."""
    return self.decode_mean(self.prior.sample(key, num_samples, self.encode), labels)


class TwoStochasticLayerVAE(_ImageModel):
  """Burda et al. 2015's VAE with two stochastic layers, x -> h1 -> h2 (Gaussian).

  q(h1|x) q(h2|h1) and p(h2) p(h1|h2) p(x|h1), each conditional a diagonal
  Gaussian (or the likelihood head) whose parameters come from an MLP. The
  paper's MNIST model, as in the authors' code (github.com/yburda/iwae):
  784-200-200-[100]-100-100-[50], tanh, so hidden=(200, 200), latent_dim=100,
  top_hidden=(100, 100), top_latent_dim=50, the defaults.

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
    hidden: Sequence[int] = (200, 200),
    top_hidden: Sequence[int] = (100, 100),
    likelihood: str = "bernoulli",
    activation: str = "tanh",
    gaussian_logvar: float = 0.0,
    num_components: int = 10,
    weight_init: str = "lecun_normal",
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
    mlp = dict(activation=activation, dtype=dtype, weight_init=weight_init, rngs=rngs)
    latent_mlp = dict(mlp, float32_first_layer=True)  # networks that take latent samples
    self.q_h1 = networks.MLP(num_pixels, hidden, 2 * latent_dim, **mlp)
    self.q_h2 = networks.MLP(latent_dim, top_hidden, 2 * top_latent_dim, **latent_mlp)
    self.p_h1 = networks.MLP(top_latent_dim, top_hidden[::-1], 2 * latent_dim, **latent_mlp)
    self.p_x = networks.MLP(latent_dim, tuple(hidden)[::-1], num_pixels * outputs, **latent_mlp)

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
    """The mean image of p(x|h1) in [0, 1], `[batch, *image_shape]`."""
    out = self._f32(self.p_x, h1).reshape(h1.shape[0], math.prod(self.image_shape), -1)
    return self.likelihood.mean(out).reshape(h1.shape[0], *self.image_shape)

  def decode_prior(
    self, key: jax.Array, labels: jax.Array | None = None, *, num_samples: int
  ) -> jax.Array:
    """Mean images of p(x|h1) at ancestral draws: h2 from the prior, h1 from p(h1|h2).

    h1 is drawn, not set to p(h1|h2)'s mean: with few active units in h2, that mean
    barely moves, and every sample would be the same image."""
    self._check_labels(labels)
    key_h2, key_h1 = jax.random.split(key)
    h2 = jax.random.normal(key_h2, (num_samples, self.top_latent_dim))
    h1_mean, h1_logvar = jnp.split(self._f32(self.p_h1, h2), 2, -1)
    return self.decode_mean(distributions.reparameterize(key_h1, h1_mean, h1_logvar, 1)[0])

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
