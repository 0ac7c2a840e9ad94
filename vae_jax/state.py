"""Train state, seeds and initialization: the model and optimizer a config describes.

The train state is a pytree {params, opt_state, step} with a leading seed axis:
config.num_seeds independent runs train at once under jax.vmap. All randomness
derives from (seed, step): each seed's key splits into streams for
initialization, shuffling (fold_in(shuffle, epoch)) and the steps
(fold_in(step, t)). So the state needs no RNG, and a run resumed from a
checkpoint repeats exactly what an uninterrupted run does.
"""

import contextlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vae_jax import models, sweeps


def make_model(
  config: ml_collections.ConfigDict, image_shape, num_classes: int, rngs: nnx.Rngs
) -> models.VAE | models.TwoStochasticLayerVAE:
  """The VAE that config describes."""
  shared = dict(
    image_shape=image_shape,
    latent_dim=config.latent_dim,
    hidden=tuple(config.hidden),
    likelihood=config.likelihood,
    activation=config.activation,
    gaussian_logvar=config.gaussian_logvar,
    num_components=config.num_components,
    weight_init=config.weight_init,
    dtype=jnp.dtype(config.dtype),
    rngs=rngs,
  )
  if config.stochastic_layers == 2:
    return models.TwoStochasticLayerVAE(
      top_latent_dim=config.top_latent_dim, top_hidden=tuple(config.top_hidden), **shared
    )
  return models.VAE(
    architecture=config.architecture,
    conv_channels=tuple(config.conv_channels),
    num_classes=num_classes if config.conditional else 0,
    prior=config.prior,
    prior_components=config.prior_components,
    posterior=config.posterior,
    flow_steps=config.flow_steps,
    logvar_range=tuple(config.logvar_range) or None,
    **shared,
  )


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int, learning_rate=None
) -> optax.ScalarOrSchedule:
  """Constant, cosine decay, or Burda et al. 2015's: 3^i epochs at lr * 10^(-i/7), i = 0..7;
  peaking at learning_rate (a sweep member's), config.learning_rate when None."""
  peak = config.learning_rate if learning_rate is None else learning_rate
  total_steps = config.num_epochs * steps_per_epoch
  if config.lr_schedule == "constant":
    return peak  # a number: no schedule counter to update at every step
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(peak, total_steps)
  boundaries = np.cumsum([3**i for i in range(7)]) * steps_per_epoch
  return optax.piecewise_constant_schedule(peak, {int(b): 10 ** (-1 / 7) for b in boundaries})


def normalize_each_gradient(eps: float = 1e-7) -> optax.GradientTransformation:
  """Divides each parameter's gradient by its own L2 norm (+ eps): chained before Adam, it
  is Tomczak & Welling's AdamNormGrad (their utils/optimizer.py, with their eps)."""
  return optax.stateless(
    lambda updates, params=None: jax.tree.map(
      lambda g: g / (jnp.sqrt(jnp.sum(jnp.square(g))) + eps), updates
    )
  )


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int, hparams: dict | None = None
) -> optax.GradientTransformation:
  """Adam with the config's learning-rate schedule and moments (AdamNormGrad where
  config.adam_normgrad); a sweep member's learning rate and moments from its hparams.

  Every member's optimizer state has the same structure (Adam's moments and count), so
  the members stack on one axis; their hyperparameters are traced values of the step."""
  hparams = hparams or sweeps.hparams(config)
  adam = optax.adam(
    learning_rate_schedule(config, steps_per_epoch, hparams["learning_rate"]),
    b1=hparams["adam_b1"],
    b2=hparams["adam_b2"],
    eps=hparams["adam_eps"],
  )
  return optax.chain(normalize_each_gradient(), adam) if config.adam_normgrad else adam


def seed_keys(config: ml_collections.ConfigDict) -> jax.Array:
  """One key per member: seed i of a multi-seed run is the run with seed config.seed + i;
  in a sweep, each combination's seeds are those again (vae_jax.sweeps)."""
  seeds = [member["seed"] for member in sweeps.member_settings(config)]
  return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.int32))


def purpose_keys(seed_key):
  """Separate streams for initialization, shuffling and the steps."""
  return {
    name: jax.random.fold_in(seed_key, i) for i, name in enumerate(("init", "shuffle", "step"))
  }


def matmul_precision(name: str):
  """A context for tracing float32 matmuls at `name`; "default" leaves JAX's setting."""
  if name == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name)


def init_state(
  make_model,
  optimizer: optax.GradientTransformation,
  seed_key: jax.Array,
  *,
  early_stopping: bool = False,
):
  """One seed's train state: make_model(rngs) initialized from the seed's "init" stream;
  with early_stopping, also its state (see init_early_stopping)."""
  params = nnx.state(make_model(nnx.Rngs(purpose_keys(seed_key)["init"])), nnx.Param)
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  if early_stopping:
    state["early_stopping"] = init_early_stopping(params)
  return state


def init_early_stopping(params) -> dict:
  """Early stopping's part of a seed's train state, checkpointed with the rest: the best
  validation ELBO so far, its epoch and parameters, the epochs since, and whether the
  seed has stopped (its best is then final)."""
  return {
    "best_params": jax.tree.map(jnp.copy, params),
    "best_elbo": jnp.full((), -jnp.inf, jnp.float32),
    "best_epoch": jnp.zeros((), jnp.int32),
    "epochs_without_improvement": jnp.zeros((), jnp.int32),
    "stopped": jnp.zeros((), bool),
  }


def update_early_stopping(
  early_stopping: dict, params, valid_elbo: jax.Array, epoch, *, patience: int, warmup_epochs: int
) -> dict:
  """One seed's early-stopping state after an epoch with this validation ELBO.

  An improvement keeps the parameters; the epochs after warm-up without one are counted,
  and at `patience` of them the seed stops. A stopped seed's state no longer changes."""
  active = ~early_stopping["stopped"]
  improved = active & (valid_elbo > early_stopping["best_elbo"])
  counted = active & ~improved & (epoch > warmup_epochs)
  without = jnp.where(improved, 0, early_stopping["epochs_without_improvement"] + counted)
  return {
    "best_params": jax.tree.map(
      lambda new, best: jnp.where(improved, new, best), params, early_stopping["best_params"]
    ),
    "best_elbo": jnp.where(improved, valid_elbo, early_stopping["best_elbo"]),
    "best_epoch": jnp.where(improved, epoch, early_stopping["best_epoch"]),
    "epochs_without_improvement": without,
    "stopped": early_stopping["stopped"] | (without >= patience),
  }
