"""The loss seam: loss_fn(model, key, x, labels, step) -> (loss, metrics).

The built-in objectives are entries of LOSSES, factories that read their options
from the config; a researcher's loss_fn takes the same arguments and goes through
the same jitted, scanned, seed-vmapped and sharded step. `labels` is None for
unconditional models; `step` is the global step (a traced int32), for schedules
such as KL warm-up.
"""

import jax.numpy as jnp
import ml_collections

from vae_jax import objectives


def elbo_loss(config: ml_collections.ConfigDict, *, warmup_steps: int):
  """-ELBO (beta, free bits and KL warm-up from the config) and its terms as metrics."""

  def loss_fn(model, key, x, labels, step):
    terms = model.elbo_terms(
      key,
      x,
      labels,
      num_samples=config.num_samples,
      analytic_kl=config.analytic_kl,
      estimator=config.estimator,
    )
    beta = config.beta * objectives.kl_warmup(step, warmup_steps)
    value = objectives.weighted_elbo(terms, beta=beta, free_bits=config.free_bits)
    # One reduction for the loss and the metrics: each would be a kernel of its own.
    objective, reconstruction, kl = jnp.mean(
      jnp.stack([value, terms.reconstruction, terms.kl]), axis=1
    )
    return -objective, {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

  return loss_fn


def iwae_loss(config: ml_collections.ConfigDict, *, warmup_steps: int):
  """-IWAE bound with config.num_samples samples and config.estimator's gradient."""
  del warmup_steps  # the IWAE bound has no KL term to warm up

  def loss_fn(model, key, x, labels, step):
    value = model.iwae(key, x, labels, num_samples=config.num_samples, estimator=config.estimator)
    return -jnp.mean(value), {}  # the bound is -loss

  return loss_fn


#: The built-in objectives by name, each a factory `(config, *, warmup_steps) -> loss_fn`.
LOSSES = {"elbo": elbo_loss, "iwae": iwae_loss}
#: The values of config.objective.
OBJECTIVES = tuple(LOSSES)


def checked_loss(loss_fn, model, key, x, labels, step):
  """loss_fn's (loss, metrics), checked to be scalars; "loss" joins the metrics (the
  built-ins log no copy of it: the IWAE bound, or the ELBO at beta = 1, is -loss)."""
  loss, metrics = loss_fn(model, key, x, labels, step)
  named = {"loss": loss, **metrics}
  for name, value in named.items():
    if jnp.shape(value) != ():
      raise ValueError(
        f"loss_fn must return a scalar loss and a dict of scalar metrics; its {name!r} has "
        f"shape {jnp.shape(value)}. Reduce over the batch (e.g. jnp.mean) inside loss_fn."
      )
  return loss, named
