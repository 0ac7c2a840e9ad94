"""vae_jax: variational autoencoders in JAX; pure objectives, Flax NNX models, fast training."""

from vae_jax.distributions import (
  kl_normal,
  kl_normal_per_dimension,
  kl_normal_std,
  kl_normal_std_per_dimension,
  log_bernoulli,
  log_categorical,
  log_discretized_logistic,
  log_discretized_logistic_mixture,
  log_normal,
  log_normal_per_dimension,
  log_standard_normal,
  reparameterize,
)
from vae_jax.objectives import (
  ElboTerms,
  LogLikelihoodEstimate,
  LogPrior,
  elbo,
  elbo_terms,
  importance_log_likelihood,
  importance_log_likelihood_from_log_weights,
  iwae,
  iwae_bound,
  kl_warmup,
  log_weights,
)

__version__ = "0.1.0"
