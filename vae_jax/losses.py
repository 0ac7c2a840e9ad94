"""The loss seam: loss_fn(model, key, x, labels, step) -> (loss, metrics).

The built-in objectives are entries of LOSSES, factories that read their options
from the config; a researcher's loss_fn takes the same arguments and goes through
the same jitted, scanned, seed-vmapped and sharded step. `labels` is None for
unconditional models; `step` is the global step (a traced int32), for schedules
such as KL warm-up. A loss that declares a sixth argument `hparams` receives the member's
hyperparameters (vae_jax.sweeps.hparams): the config's values, or a sweep member's.
"""

import inspect

import jax.numpy as jnp
import ml_collections

from vae_jax import objectives


def elbo_loss(config: ml_collections.ConfigDict, *, steps_per_epoch: int):
  """-ELBO (beta, free bits and KL warm-up from the member's hparams) and its terms as
  metrics."""

  def loss_fn(model, key, x, labels, step, hparams):
    terms = model.elbo_terms(
      key,
      x,
      labels,
      num_samples=config.num_samples,
      analytic_kl=config.analytic_kl,
      estimator=config.estimator,
    )
    warmup_steps = hparams["kl_warmup_epochs"] * steps_per_epoch
    beta = hparams["beta"] * objectives.kl_warmup(step, warmup_steps)
    value = objectives.weighted_elbo(terms, beta=beta, free_bits=hparams["free_bits"])
    # One reduction for the loss and the metrics: each would be a kernel of its own.
    objective, reconstruction, kl = jnp.mean(
      jnp.stack([value, terms.reconstruction, terms.kl]), axis=1
    )
    return -objective, {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

  return loss_fn


def iwae_loss(config: ml_collections.ConfigDict, *, steps_per_epoch: int):
  """-IWAE bound with config.num_samples samples and config.estimator's gradient."""
  del steps_per_epoch  # the IWAE bound has no KL term to warm up

  def loss_fn(model, key, x, labels, step):
    value = model.iwae(key, x, labels, num_samples=config.num_samples, estimator=config.estimator)
    return -jnp.mean(value), {}  # the bound is -loss

  return loss_fn


#: The built-in objectives by name, each a factory `(config, *, steps_per_epoch) -> loss_fn`.
LOSSES = {"elbo": elbo_loss, "iwae": iwae_loss}
#: The values of config.objective.
OBJECTIVES = tuple(LOSSES)


def takes_hparams(loss_fn) -> bool:
  """Whether loss_fn declares an `hparams` argument (the member's swept values)."""
  try:
    return "hparams" in inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):  # a callable without a signature: the five arguments
    return False


def checked_loss(loss_fn, model, key, x, labels, step, hparams):
  """loss_fn's (loss, metrics), checked to be scalars; "loss" joins the metrics (the
  built-ins log no copy of it: the IWAE bound, or the ELBO at beta = 1, is -loss).
  hparams goes to a loss that declares it."""
  extra = {"hparams": hparams} if takes_hparams(loss_fn) else {}
  loss, metrics = loss_fn(model, key, x, labels, step, **extra)
  named = {"loss": loss, **metrics}
  for name, value in named.items():
    if jnp.shape(value) != ():
      raise ValueError(
        f"loss_fn must return a scalar loss and a dict of scalar metrics; its {name!r} has "
        f"shape {jnp.shape(value)}. Reduce over the batch (e.g. jnp.mean) inside loss_fn."
      )
  return loss, named
