"""ELBO and IWAE bounds, their gradient estimators, and importance-sampled log p(x).

Objectives take plain callables, so any model (or a researcher's function) plugs in::

  encode(x) -> (mean, logvar)        q(z|x), diagonal Gaussian, each [batch, latent];
                                     or a distribution (vae_jax.posteriors)
  log_likelihood(x, z) -> [batch]    log p(x|z) for one z of shape [batch, latent]
  log_prior(z) -> [...]              log p(z) for z of shape [..., latent]; None: N(0, I)

With a log_prior other than None the KL is estimated by Monte Carlo; a prior's own
parameters (a mixture's means, a VampPrior's pseudo-inputs) get their full
gradient under every estimator. The K Monte Carlo samples are vmapped, never looped.
Every result is per-example, [batch]; the caller reduces.

Gradient estimators. Each objective returns a value equal to the bound, and a
gradient equal to the named estimator::

  "reparam"  plain reparameterization gradient.
  "stl"      sticking the landing (Roeder et al. 2017): the score term of
             log q(z|x) is dropped by stopping the gradient to q's parameters.
  "dreg"     doubly reparameterized IWAE gradient (Tucker et al. 2018): the
             encoder gets sum_k w_k^2 d log w_k / dz_k dz_k / dphi, the decoder the
             usual sum_k w_k d log w_k / dtheta (w the normalized weights).
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vae_jax import distributions, posteriors

#: encode(x) -> (mean, logvar) of q(z|x), each [batch, latent], or q(z|x) as a distribution
#: with sample_and_log_prob and log_prob (vae_jax.posteriors).
Encoder = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
#: log_likelihood(x, z) -> log p(x|z), [batch], for one z of shape [batch, latent].
LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]
#: log_prior(z) -> log p(z), [...], for z of shape [..., latent], summed over the last axis.
LogPrior = Callable[[jax.Array], jax.Array]

#: The gradient estimators, the values of config.estimator and of the objectives' `estimator`.
ESTIMATORS = ("reparam", "stl", "dreg")


class ElboTerms(NamedTuple):
  """The two terms of the ELBO, per example: ELBO = reconstruction - kl.

  Attributes:
    reconstruction: E_q[log p(x|z)], the K-sample average, [batch].
    kl: KL(q(z|x) || p(z)), analytic or its K-sample estimate, [batch].
    kl_per_dimension: the analytic KL of each latent dimension, [batch, latent]
      (for free bits and diagnostics, whichever KL the objective uses); None with a
      log_prior or a posterior distribution.
  """

  reconstruction: jax.Array
  kl: jax.Array
  kl_per_dimension: jax.Array


def _encode(encode: Encoder, x: jax.Array):
  """Calls encode and checks that it returns two [batch, latent] float arrays, or a
  distribution (vae_jax.posteriors), which is returned as it is."""
  if x.ndim < 1:
    raise ValueError(f"x must have a leading batch axis, got shape {x.shape}.")
  out = encode(x)
  if posteriors.is_distribution(out):
    missing = [m for m in ("sample_and_log_prob", "log_prob") if not hasattr(out, m)]
    if missing:
      raise ValueError(
        f"encode(x) returned a {type(out).__name__}, which lacks {', '.join(missing)}: "
        "return (mean, logvar), or a distribution with distrax's sample_and_log_prob "
        "and log_prob (see vae_jax.posteriors)."
      )
    return out
  if len(out) != 2:
    raise ValueError(f"encode(x) must return (mean, logvar), got {len(out)} values.")
  mean, logvar = (jnp.asarray(a) for a in out)
  expected = (x.shape[0], "latent")
  for name, value in (("mean", mean), ("logvar", logvar)):
    if value.ndim != 2 or value.shape[0] != x.shape[0]:
      raise ValueError(
        f"encode(x) returned {name} of shape {value.shape}; expected [batch, latent] = "
        f"{expected} for x of shape {x.shape}."
      )
    distributions.check_floating(f"encode(x) {name}", value)
  if mean.shape != logvar.shape:
    raise ValueError(
      f"encode(x) returned mean{mean.shape} and logvar{logvar.shape}; they must match."
    )
  return mean, logvar


def _log_likelihood_over_samples(
  log_likelihood: LogLikelihood, x: jax.Array, z_KxBxZ: jax.Array
) -> jax.Array:
  """log p(x|z_k) for each of the K samples, vmapped over K: [K, batch]."""

  def one_sample(z_BxZ):
    out = jnp.asarray(log_likelihood(x, z_BxZ))
    if out.shape != (x.shape[0],):
      raise ValueError(
        f"log_likelihood(x, z) returned shape {out.shape}; expected [batch] = "
        f"({x.shape[0]},) for x of shape {x.shape} and z of shape {z_BxZ.shape}. "
        "Sum over the data dimensions inside log_likelihood."
      )
    return out

  if z_KxBxZ.shape[0] == 1:  # a vmap of size 1 only slows XLA's CPU matmuls down
    return one_sample(z_KxBxZ[0])[None]
  return jax.vmap(one_sample)(z_KxBxZ)


def _check_estimator(estimator: str, allowed: tuple[str, ...], objective: str) -> None:
  if estimator not in allowed:
    raise ValueError(
      f"estimator={estimator!r} is not available for {objective}; choose one of {allowed}."
    )


class _PosteriorSamples(NamedTuple):
  z: jax.Array  # [K, batch, latent]
  eps: jax.Array  # the standard normal noise z was made from, [K, batch, latent]
  mean: jax.Array  # of q(z|x), [batch, latent]
  logvar: jax.Array  # of q(z|x), [batch, latent]


class _DistributionSamples(NamedTuple):
  z: jax.Array  # [K, batch, latent]
  log_q: jax.Array  # log q(z|x) of each sample, [K, batch]
  posterior: object  # what encode returned


def _sample_posterior(
  key: jax.Array, x: jax.Array, encode: Encoder, num_samples: int
) -> _PosteriorSamples | _DistributionSamples:
  """Encodes x and draws K reparameterized samples: z = mean + exp(logvar / 2) * eps for
  (mean, logvar), or the distribution's own sample_and_log_prob."""
  distributions.check_num_samples(num_samples)
  q = _encode(encode, x)
  if posteriors.is_distribution(q):
    z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
    z, log_q = jnp.asarray(z), jnp.asarray(log_q)
    if z.ndim != 3 or z.shape[:2] != (num_samples, x.shape[0]) or log_q.shape != z.shape[:2]:
      raise ValueError(
        f"encode(x)'s distribution sampled z of shape {z.shape} and log_q of shape "
        f"{log_q.shape}; expected [K, batch, latent] and [K, batch] = "
        f"({num_samples}, {x.shape[0]}, latent) and ({num_samples}, {x.shape[0]}): give it "
        "batch shape [batch] and event shape [latent]."
      )
    return _DistributionSamples(z, log_q, q)
  mean, logvar = q
  eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
  return _PosteriorSamples(mean[None] + jnp.exp(0.5 * logvar)[None] * eps, eps, mean, logvar)


def _log_prior_of(log_prior: LogPrior | None, z_KxBxZ: jax.Array) -> jax.Array:
  """log p(z_k), [K, batch]: log_prior's, or N(0, I)'s."""
  if log_prior is None:
    return distributions.log_standard_normal(z_KxBxZ)
  return _log_prior(log_prior, z_KxBxZ)


def _log_prior(log_prior: LogPrior, z_KxBxZ: jax.Array) -> jax.Array:
  """log_prior(z) for the K samples, checked to be [K, batch]."""
  out = jnp.asarray(log_prior(z_KxBxZ))
  if out.shape != z_KxBxZ.shape[:-1]:
    raise ValueError(
      f"log_prior(z) returned shape {out.shape} for z of shape {z_KxBxZ.shape}; expected "
      f"{z_KxBxZ.shape[:-1]}. Sum over the last (latent) axis inside log_prior."
    )
  return out


def _log_prior_minus_log_q(
  z_KxBxZ: jax.Array,
  mean: jax.Array,
  logvar: jax.Array,
  eps: jax.Array | None = None,
  log_prior: LogPrior | None = None,
) -> jax.Array:
  """log p(z_k) - log q(z_k|x) for q's own samples z_k: [K, batch].

  (z - mean)^2 / exp(logvar) is eps^2: given eps, log q needs no division (and stays
  finite for any logvar), and its gradient is exact, since z - mean = exp(logvar / 2)
  eps for every parameter value. Without eps (STL, DReG: q's parameters held constant,
  gradients along z only), the standardized z is recomputed from z.
  """
  if eps is None:
    eps = (z_KxBxZ - mean[None]) * jnp.exp(-0.5 * logvar)[None]
  if log_prior is None:  # N(0, I): the log(2 pi) terms cancel
    return -0.5 * jnp.sum(jnp.square(z_KxBxZ) - jnp.square(eps) - logvar[None], axis=-1)
  log_q = distributions.log_standard_normal(eps) - 0.5 * jnp.sum(logvar, axis=-1)[None]
  return _log_prior(log_prior, z_KxBxZ) - log_q


def log_weights(
  key: jax.Array,
  x: ArrayLike,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  num_samples: int,
  *,
  log_prior: LogPrior | None = None,
) -> jax.Array:
  """Importance log-weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x).

  Args:
    key: a JAX random key.
    x: a batch of data, [batch, ...].
    encode: x -> (mean, logvar) of q(z|x), each [batch, latent], or q(z|x) as a
      distribution over z with sample_and_log_prob and log_prob (vae_jax.posteriors),
      whose KL is then sampled.
    log_likelihood: (x, z) -> log p(x|z), [batch], for z of shape [batch, latent].
    num_samples: K.
    log_prior: z -> log p(z), [...] for z of shape [..., latent]; None is N(0, I).

  Returns:
    Log-weights, [K, batch].

  Example:
    A posterior equal to the exact one (z ~ N(0, 1), x | z ~ N(z, 1): p(z|x) = N(x/2, 1/2))
    makes every log-weight log p(x) = log N(x; 0, 2):

    >>> import math, jax, jax.numpy as jnp, vae_jax
    >>> encode = lambda x: (x / 2, jnp.full_like(x, math.log(0.5)))
    >>> log_likelihood = lambda x, z: vae_jax.log_normal(x, z, 0.0)
    >>> vae_jax.log_weights(jax.random.key(0), jnp.ones((1, 1)), encode, log_likelihood, 3)
    Array([[-1.516],
           [-1.516],
           [-1.516]], dtype=float32)
  """
  x = jnp.asarray(x)
  q = _sample_posterior(key, x, encode, num_samples)
  log_px_given_z = _log_likelihood_over_samples(log_likelihood, x, q.z)
  if isinstance(q, _DistributionSamples):
    return log_px_given_z + _log_prior_of(log_prior, q.z) - q.log_q
  return log_px_given_z + _log_prior_minus_log_q(q.z, q.mean, q.logvar, q.eps, log_prior)


def iwae_bound(log_weights: ArrayLike) -> jax.Array:
  """IWAE bound logsumexp_k(log w_k) - log K, samples on axis 0 (Burda et al. 2015).

  Args:
    log_weights: [K, ...].

  Returns:
    The bound, [...].

  Example:
    >>> import jax.numpy as jnp, vae_jax
    >>> vae_jax.iwae_bound(jnp.log(jnp.array([[1.0], [3.0]])))   # log((1 + 3) / 2)
    Array([0.693], dtype=float32)
  """
  log_weights = jnp.asarray(log_weights)
  if log_weights.ndim < 1:
    raise ValueError("log_weights needs a leading sample axis [K, ...], got a scalar.")
  return jax.nn.logsumexp(log_weights, axis=0) - math.log(log_weights.shape[0])


def elbo_terms(
  key: jax.Array,
  x: ArrayLike,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  *,
  num_samples: int = 1,
  analytic_kl: bool = True,
  estimator: str = "reparam",
  log_prior: LogPrior | None = None,
) -> ElboTerms:
  """The reconstruction and KL terms of the ELBO, each per example.

  The reconstruction term is a K-sample Monte Carlo average. The KL is
  analytic, or with analytic_kl=False the K-sample average of
  log q(z|x) - log p(z) at the same samples.

  Args:
    key, x, encode, log_likelihood, num_samples, log_prior: as in log_weights.
    analytic_kl: closed-form KL to N(0, I), or its Monte Carlo estimate (the only
      choice with a log_prior).
    estimator: "reparam" or "stl" (STL needs analytic_kl=False).

  Returns:
    ElboTerms of [batch] arrays; kl_per_dimension, [batch, latent], is the closed-form
    KL of each dimension to N(0, 1), and None with a log_prior (which need not factorize)
    or a posterior distribution.

  Example:
    >>> import jax, jax.numpy as jnp, vae_jax
    >>> encode = lambda x: (jnp.zeros((x.shape[0], 2)), jnp.zeros((x.shape[0], 2)))  # q = p(z)
    >>> log_likelihood = lambda x, z: vae_jax.log_bernoulli(x, jnp.zeros_like(x))
    >>> terms = vae_jax.elbo_terms(jax.random.key(0), jnp.ones((3, 4)), encode, log_likelihood)
    >>> terms.reconstruction, terms.kl                          # 4 log 0.5 and 0, per example
    (Array([-2.773, -2.773, -2.773], dtype=float32), Array([0., 0., 0.], dtype=float32))
  """
  _check_estimator(estimator, ("reparam", "stl"), "the ELBO")
  if estimator == "stl" and analytic_kl:
    raise ValueError(
      "estimator='stl' needs analytic_kl=False: sticking the landing drops the score "
      "term of a sampled log q(z|x), and the analytic KL has no such term."
    )
  if log_prior is not None and analytic_kl:
    raise ValueError(
      "a log_prior has no closed-form KL here: pass analytic_kl=False to estimate the KL "
      "by Monte Carlo (log q(z|x) - log p(z) at the K samples)."
    )
  x = jnp.asarray(x)
  q = _sample_posterior(key, x, encode, num_samples)
  reconstruction = jnp.mean(_log_likelihood_over_samples(log_likelihood, x, q.z), axis=0)
  if isinstance(q, _DistributionSamples):
    if analytic_kl:
      raise ValueError(
        f"encode(x) returned a distribution ({type(q.posterior).__name__}), which has no "
        "closed-form KL here: pass analytic_kl=False to estimate the KL by Monte Carlo."
      )
    log_q = q.log_q
    if estimator == "stl":
      log_q = posteriors.stop_parameter_gradients(q.posterior).log_prob(q.z)
    kl = jnp.mean(log_q - _log_prior_of(log_prior, q.z), axis=0)
    return ElboTerms(reconstruction, kl, None)
  kl_per_dimension = None
  if log_prior is None:
    kl_per_dimension = distributions.kl_normal_std_per_dimension(q.mean, q.logvar)
  if analytic_kl:
    kl = jnp.sum(kl_per_dimension, axis=-1)
  elif estimator == "stl":
    mean, logvar = jax.lax.stop_gradient((q.mean, q.logvar))
    kl = -jnp.mean(_log_prior_minus_log_q(q.z, mean, logvar, log_prior=log_prior), axis=0)
  else:
    kl = -jnp.mean(_log_prior_minus_log_q(q.z, q.mean, q.logvar, q.eps, log_prior), axis=0)
  return ElboTerms(reconstruction, kl, kl_per_dimension)


def elbo(
  key: jax.Array,
  x: ArrayLike,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  *,
  num_samples: int = 1,
  beta: float | jax.Array = 1.0,
  analytic_kl: bool = True,
  estimator: str = "reparam",
  free_bits: float = 0.0,
  log_prior: LogPrior | None = None,
) -> jax.Array:
  """Evidence lower bound E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), per example.

  With beta=1 and free_bits=0 this is the ELBO; otherwise it is the weighted
  training objective (beta-VAE, Higgins et al. 2017; KL warm-up passes
  beta = beta * kl_warmup(step, steps), Bowman et al. 2016; Sønderby et al. 2016).

  Args:
    key, x, encode, log_likelihood, num_samples, log_prior: as in log_weights.
    beta: weight of the KL term; may be a traced scalar (a warm-up schedule).
    analytic_kl: closed-form KL to N(0, I), or its K-sample Monte Carlo estimate
      (needed with a log_prior).
    estimator: "reparam" or "stl" (STL needs analytic_kl=False).
    free_bits: lambda >= 0, a floor on the KL of each latent dimension of
      each example: the KL term becomes sum_i max(lambda, KL_i) (Kingma et
      al. 2016 apply the floor to minibatch averages; this per-example form
      keeps the objective pure and per-example). Needs analytic_kl=True.

  Returns:
    The objective, [batch].

  References:
    Kingma & Welling 2013, https://arxiv.org/abs/1312.6114.
    Roeder et al. 2017 (STL), https://arxiv.org/abs/1703.09194.
    Kingma et al. 2016 (free bits), https://arxiv.org/abs/1606.04934.

  Example:
    >>> import math, jax, jax.numpy as jnp, vae_jax
    >>> x = jnp.array([[1.0], [-0.5]])
    >>> encode = lambda x: (x / 2, jnp.full_like(x, math.log(0.5)))   # the exact posterior
    >>> log_likelihood = lambda x, z: vae_jax.log_normal(x, z, 0.0)
    >>> vae_jax.elbo(jax.random.key(0), x, encode, log_likelihood, num_samples=4, analytic_kl=False)
    Array([-1.516, -1.328], dtype=float32)
  """
  if free_bits < 0:
    raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}.")
  if free_bits > 0 and not analytic_kl:
    raise ValueError(
      "free_bits needs analytic_kl=True: flooring single-sample KL estimates is biased."
    )
  terms = elbo_terms(
    key,
    x,
    encode,
    log_likelihood,
    num_samples=num_samples,
    analytic_kl=analytic_kl,
    estimator=estimator,
    log_prior=log_prior,
  )
  return weighted_elbo(terms, beta=beta, free_bits=free_bits)


def weighted_elbo(
  terms: ElboTerms, *, beta: float | jax.Array = 1.0, free_bits: float = 0.0
) -> jax.Array:
  """reconstruction - beta * KL from ElboTerms, with the free-bits floor; see elbo."""
  kl = terms.kl
  # A traced free_bits (a sweep's) takes the floor always: at 0 it is the analytic KL.
  if not isinstance(free_bits, (int, float)) or free_bits > 0:
    kl = jnp.sum(jnp.maximum(terms.kl_per_dimension, free_bits), axis=-1)
  return terms.reconstruction - beta * kl


def _scale_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity in value; multiplies the gradient flowing back through x by scale."""
  return jax.lax.stop_gradient(x) + scale * (x - jax.lax.stop_gradient(x))


def iwae(
  key: jax.Array,
  x: ArrayLike,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  *,
  num_samples: int,
  estimator: str = "reparam",
  log_prior: LogPrior | None = None,
) -> jax.Array:
  """Importance-weighted bound logsumexp_k(log w_k) - log K (Burda et al. 2015).

  The value is the IWAE bound for every estimator; the gradient is the one
  named by `estimator` (see the module docstring). "stl" for the IWAE bound is
  biased (Tucker et al. 2018); "dreg" is its unbiased, low-variance fix and
  costs one extra forward pass of log_likelihood.

  Args:
    key, x, encode, log_likelihood, num_samples, log_prior: as in log_weights. STL and
      DReG hold q's parameters constant in log q only: a prior's parameters get their
      full gradient.
    estimator: "reparam", "stl" or "dreg".

  Returns:
    The IWAE bound, [batch].

  References:
    Burda et al. 2015, https://arxiv.org/abs/1509.00519.
    Tucker et al. 2018 (DReG), https://arxiv.org/abs/1810.04152.

  Example:
    >>> import math, jax, jax.numpy as jnp, vae_jax
    >>> x = jnp.array([[1.0], [-0.5]])
    >>> encode = lambda x: (x / 2, jnp.zeros_like(x))           # the right mean, too wide
    >>> log_likelihood = lambda x, z: vae_jax.log_normal(x, z, 0.0)
    >>> bound = lambda k: vae_jax.iwae(jax.random.key(0), x, encode, log_likelihood, num_samples=k)
    >>> bool(jnp.all(bound(1) < bound(1000)))                   # tighter with more samples
    True
    >>> bound(1000).tolist()                   # near log p(x) = [-1.516, -1.328], below it
    [-1.5, -1.3]
  """
  _check_estimator(estimator, ESTIMATORS, "the IWAE bound")
  x = jnp.asarray(x)
  q = _sample_posterior(key, x, encode, num_samples)
  z = q.z
  if estimator == "reparam":
    if isinstance(q, _DistributionSamples):
      log_p_minus_log_q = _log_prior_of(log_prior, z) - q.log_q
    else:
      log_p_minus_log_q = _log_prior_minus_log_q(z, q.mean, q.logvar, q.eps, log_prior)
    return iwae_bound(_log_likelihood_over_samples(log_likelihood, x, z) + log_p_minus_log_q)
  # log q(z|x) sees q's parameters as constants: its gradient flows along z only.
  if isinstance(q, _DistributionSamples):
    constant_q = posteriors.stop_parameter_gradients(q.posterior)

    def log_p_minus_log_q_at(z_KxBxZ):
      return _log_prior_of(log_prior, z_KxBxZ) - constant_q.log_prob(z_KxBxZ)
  else:
    mean, logvar = jax.lax.stop_gradient((q.mean, q.logvar))

    def log_p_minus_log_q_at(z_KxBxZ):
      return _log_prior_minus_log_q(z_KxBxZ, mean, logvar, log_prior=log_prior)

  def log_weights_at(z_KxBxZ):
    return _log_likelihood_over_samples(log_likelihood, x, z_KxBxZ) + log_p_minus_log_q_at(z_KxBxZ)

  log_w = log_weights_at(z)
  bound = iwae_bound(log_w)
  if estimator != "dreg":
    return bound
  # DReG surrogate sum_k w_k log w_k(z'_k), where z' equals z but passes back
  # w_k times its gradient: the sample path gets w_k^2, the decoder w_k.
  weights = jax.lax.stop_gradient(jax.nn.softmax(log_w, axis=0))
  surrogate = jnp.sum(weights * log_weights_at(_scale_gradient(z, weights[..., None])), axis=0)
  # The value of the bound with the gradient of the surrogate; (s - s) is an exact zero.
  return jax.lax.stop_gradient(bound) + (surrogate - jax.lax.stop_gradient(surrogate))


class LogLikelihoodEstimate(NamedTuple):
  """Importance-sampled log p(x) and its Monte Carlo standard error, per example.

  Attributes:
    log_px: the estimate of log p(x), [batch].
    standard_error: its delta-method Monte Carlo standard error, [batch].
  """

  log_px: jax.Array
  standard_error: jax.Array


def importance_log_likelihood(
  key: jax.Array,
  x: ArrayLike,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  *,
  num_samples: int,
  chunk_size: int = 100,
  log_prior: LogPrior | None = None,
) -> jax.Array:
  """Importance-sampled estimate of log p(x) with q(z|x) as proposal.

  log p(x) ~= logsumexp_k(log w_k) - log K, the IWAE bound with K = num_samples
  (5,000 is the standard in papers); see importance_log_likelihood_from_log_weights,
  which also gives the estimate's Monte Carlo standard error.

  Args:
    key, x, encode, log_likelihood, log_prior: as in log_weights.
    num_samples, chunk_size: as in importance_log_likelihood_from_log_weights.

  Returns:
    log p(x), [batch].

  Example:
    >>> import math, jax, jax.numpy as jnp, vae_jax
    >>> x = jnp.array([[1.0], [-0.5]])
    >>> encode = lambda x: (x / 2, jnp.zeros_like(x))           # not the exact posterior
    >>> log_likelihood = lambda x, z: vae_jax.log_normal(x, z, 0.0)
    >>> vae_jax.importance_log_likelihood(
    ...     jax.random.key(0), x, encode, log_likelihood, num_samples=5000).tolist()
    [-1.51, -1.33]
  """
  x = jnp.asarray(x)
  return importance_log_likelihood_from_log_weights(
    lambda key, size: log_weights(key, x, encode, log_likelihood, size, log_prior=log_prior),
    key,
    num_samples=num_samples,
    chunk_size=chunk_size,
  ).log_px


def importance_log_likelihood_from_log_weights(
  sample_log_weights: Callable[[jax.Array, int], jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  chunk_size: int = 100,
) -> LogLikelihoodEstimate:
  """Importance-sampled log p(x) and its standard error, for any model's log-weights.

  The K samples are drawn chunk_size at a time in a lax.scan with a streaming
  logsumexp, so memory is O(chunk_size * batch) whatever K is. Chunk i uses
  fold_in(key, i): the estimate depends on chunk_size through the random
  stream only.

  Args:
    sample_log_weights: (key, k) -> k log-weights per example, [k, batch], e.g.
      a hierarchical model's log p(x, h) - log q(h|x).
    key: a JAX random key.
    num_samples: K, the total number of importance samples.
    chunk_size: samples drawn per step; the last chunk may be smaller.

  Returns:
    A LogLikelihoodEstimate of two [batch] arrays: log p(x), and the delta-method
    standard error of the estimate, sqrt((mean(w^2) / mean(w)^2 - 1) / (K - 1)).

  Example:
    >>> import jax, jax.numpy as jnp, vae_jax
    >>> def sample_log_weights(key, k):                         # w ~ Exp(1): E[w] = 1, log p(x) = 0
    ...   return jnp.log(jax.random.exponential(key, (k, 2)))
    >>> estimate = vae_jax.importance_log_likelihood_from_log_weights(
    ...     sample_log_weights, jax.random.key(0), num_samples=10000)
    >>> estimate.log_px.tolist(), estimate.standard_error.tolist()   # 0, within about 0.01
    ([0.0..., 0.0...], [0.01, 0.01])
  """
  distributions.check_num_samples(num_samples)
  distributions.check_num_samples(chunk_size, "chunk_size")
  chunk_size = min(chunk_size, num_samples)
  num_full_chunks, remainder = divmod(num_samples, chunk_size)
  # Accumulate in the default float type (float32, or float64 under x64),
  # whatever precision the model computes in.
  accumulator_dtype = jnp.result_type(float)

  def chunk_sums(index, size):
    log_w = sample_log_weights(jax.random.fold_in(key, index), size)
    if log_w.ndim != 2 or log_w.shape[0] != size:
      raise ValueError(
        f"sample_log_weights(key, {size}) returned shape {log_w.shape}; expected [{size}, batch]."
      )
    log_w = log_w.astype(accumulator_dtype)
    return jax.nn.logsumexp(log_w, axis=0), jax.nn.logsumexp(2.0 * log_w, axis=0)

  # Carries log sum_k w_k and log sum_k w_k^2: first the full chunks, then the rest.
  batch = jax.eval_shape(lambda: chunk_sums(0, chunk_size))[0].shape
  empty = jnp.full(batch, -jnp.inf, accumulator_dtype)

  def step(carry, index):
    return jax.tree.map(jnp.logaddexp, carry, chunk_sums(index, chunk_size)), None

  (log_sum_w, log_sum_w2), _ = jax.lax.scan(step, (empty, empty), jnp.arange(num_full_chunks))
  if remainder:
    rest = chunk_sums(num_full_chunks, remainder)
    log_sum_w, log_sum_w2 = jnp.logaddexp(log_sum_w, rest[0]), jnp.logaddexp(log_sum_w2, rest[1])
  log_k = math.log(num_samples)
  log_px = log_sum_w - log_k
  # mean(w^2) / mean(w)^2 - 1 >= 0, computed in log space with expm1.
  excess = jnp.maximum(jnp.expm1(log_sum_w2 + log_k - 2.0 * log_sum_w), 0.0)
  standard_error = jnp.sqrt(excess / max(num_samples - 1, 1))
  return LogLikelihoodEstimate(log_px, standard_error)


def kl_warmup(step: ArrayLike, warmup_steps: int) -> jax.Array:
  """Linear KL warm-up weight min(1, step / warmup_steps); 1 when warmup_steps is 0.

  Multiply beta by it (Bowman et al. 2016; Sønderby et al. 2016).

  Example:
    >>> import vae_jax
    >>> vae_jax.kl_warmup(250, 1000), vae_jax.kl_warmup(5000, 1000)
    (Array(0.25, dtype=float32), Array(1., dtype=float32))
  """
  if isinstance(warmup_steps, (int, float)):  # a constant: no warm-up, no division
    if warmup_steps <= 0:
      return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  ramp = jnp.asarray(step, jnp.float32) / jnp.maximum(warmup_steps, 1)  # a sweep's values
  return jnp.where(warmup_steps > 0, jnp.minimum(1.0, ramp), 1.0)
