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

from vae_jax import models


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
    **shared,
  )


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.ScalarOrSchedule:
  """Constant, cosine decay, or Burda et al. 2015's: 3^i epochs at lr * 10^(-i/7), i = 0..7."""
  total_steps = config.num_epochs * steps_per_epoch
  if config.lr_schedule == "constant":
    return config.learning_rate  # a number: no schedule counter to update at every step
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(config.learning_rate, total_steps)
  boundaries = np.cumsum([3**i for i in range(7)]) * steps_per_epoch
  return optax.piecewise_constant_schedule(
    config.learning_rate, {int(b): 10 ** (-1 / 7) for b in boundaries}
  )


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """Adam with the config's learning-rate schedule and moments."""
  return optax.adam(
    learning_rate_schedule(config, steps_per_epoch),
    b1=config.adam_b1,
    b2=config.adam_b2,
    eps=config.adam_eps,
  )


def seed_keys(config: ml_collections.ConfigDict) -> jax.Array:
  """One key per seed: seed i of a multi-seed run is the run with seed config.seed + i."""
  return jax.vmap(jax.random.key)(config.seed + jnp.arange(config.num_seeds))


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


def init_state(make_model, optimizer: optax.GradientTransformation, seed_key: jax.Array):
  """One seed's train state: make_model(rngs) initialized from the seed's "init" stream."""
  params = nnx.state(make_model(nnx.Rngs(purpose_keys(seed_key)["init"])), nnx.Param)
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
