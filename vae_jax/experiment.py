"""Experiment: what a config and a dataset determine, and the jitted functions on them.

One device call runs `steps_per_call` steps as a lax.scan (a whole epoch by
default) for every seed, on a (seeds, data) mesh over all devices; the per-epoch
test ELBO is one more jitted call. The loop around them is vae_jax/train.py; the
final evaluation and pictures are vae_jax/report.py.
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vae_jax import checkpoints, data, evaluation, losses, models, parallel, sweeps
from vae_jax import config as config_lib
from vae_jax import state as state_lib

#: The file in which a workdir names the model of one's own it was trained with.
MODEL_FILE = "model.json"


def _class_name(model) -> str:
  """module.Class of a model, with the module a script run by `python -m` was imported as."""
  module = type(model).__module__
  if module == "__main__":
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec else module
  return f"{module}.{type(model).__qualname__}"


class Experiment:
  """Everything derived from a config and a dataset: the model, optimizer and jitted functions."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    *,
    loss_fn=None,
    model: models.LatentVariableModel | None = None,
    devices=None,
  ):
    """loss_fn and model as in train.train_and_evaluate; devices: the mesh's devices (all
    of them when None; scripts/bench.py passes those of a GPU it compiles for without one)."""
    config_lib.validate_config(config)
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
    self.early_stopping = config.early_stopping_epochs > 0
    if self.early_stopping and not len(dataset.validation_images):
      raise ValueError(
        f"early_stopping_epochs={config.early_stopping_epochs} needs a validation split, and "
        f"dataset {config.dataset!r} has none here: hold one out with validation_size (e.g. "
        "10000 for MNIST), or set early_stopping_epochs=0."
      )
    if model is None:
      self.make_model = lambda rngs: state_lib.make_model(
        config, dataset.image_shape, dataset.num_classes, rngs
      )
      self.model_name = ""  # the model the config describes
    else:  # every seed starts from the given module's parameters
      models.check_model(model)
      self.make_model = lambda rngs: model
      self.model_name = _class_name(model)
    abstract_model = nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0)))
    self.graphdef = nnx.graphdef(abstract_model)
    self.integer_data = abstract_model.integer_data
    self.conditional = abstract_model.num_classes > 0
    self.loss_fn = loss_fn or losses.LOSSES[config.objective](
      config, steps_per_epoch=self.steps_per_epoch
    )
    self.optimizer = state_lib.make_optimizer(config, self.steps_per_epoch)
    # A (seeds, data) mesh over every device (see parallel.py): the state is split along
    # its seed axis, each step's batch along "data", and the training data by rows. The
    # state is committed to these shardings, so that a state restored from a checkpoint
    # hits the same compiled step as a fresh one.
    # Members: the seeds, or a sweep's combinations x seeds (vae_jax/sweeps.py).
    self.num_members = sweeps.num_members(config)
    self.member_values = sweeps.member_values(config)  # {swept field: [members]}
    self.mesh = parallel.make_mesh(self.num_members, devices)
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
    self.evaluate_examples = jax.jit(
      self._evaluate_examples, static_argnames="block_size", out_shardings=self.sharding
    )
    # One jitted copy: per-leaf jnp.copy dispatches cost ~3% of a K=1 epoch on CPU.
    self.copy_state = jax.jit(
      lambda state: jax.tree.map(jnp.copy, state), out_shardings=self.state_sharding
    )
    # One member's slice of a stacked tree (its params, or its swept values).
    self.take_member = jax.jit(
      lambda tree, member: jax.tree.map(lambda a: a[member], tree), out_shardings=self.sharding
    )
    # Each member's first non-finite step (-1: none; always -1 without a sweep), replicated.
    self.diverged_at = jax.jit(
      lambda state: state.get("diverged_at", jnp.full(self.num_members, -1, jnp.int32)),
      out_shardings=self.sharding,
    )
    self.freeze_members = jax.jit(self._freeze_members, out_shardings=self.state_sharding)
    self.update_early_stopping = jax.jit(
      self._update_early_stopping, donate_argnums=0, out_shardings=self.state_sharding
    )
    # Early stopping's numbers without the parameters, replicated: what every process reads.
    self.early_stopping_numbers = jax.jit(
      lambda state: {k: v for k, v in state["early_stopping"].items() if k != "best_params"},
      out_shardings=self.sharding,
    )

  def map_members(self, fn, *args):
    """fn over the leading member axis of args (the seeds, or a sweep's members): jax.vmap,
    or a plain call for one member.

    Under vmap, sharding constraints inside fn gain the seeds mesh axis on the member
    axis (spmd_axis_name), so each member's batch is split over its own devices.

    With one member a plain call is about 20% faster on CPU: vmap would turn every
    matmul into a batched matmul of batch 1, which XLA runs on a slower path.
    """
    if self.num_members > 1:
      return jax.vmap(fn, spmd_axis_name=parallel.SEEDS)(*args)
    out = fn(*jax.tree.map(lambda a: a[0], args))
    return jax.tree.map(lambda a: a[None], out)

  def train_inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Seed keys (split over the seeds axis) and the training set (rows split over "data")."""
    keys = jax.jit(lambda: state_lib.seed_keys(self.config), out_shardings=self.state_sharding)()
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

  def model(self, params, hparams=None) -> models.LatentVariableModel:
    """The model with one member's params (an NNX module, merged from the graph
    definition); `hparams`, a member's values, sets the swept ones the model reads."""
    model = nnx.merge(self.graphdef, params)
    if hparams and "gaussian_logvar" in self.member_values:  # a Gaussian's fixed variance
      model.likelihood.fixed_logvar = hparams["gaussian_logvar"]
    return model

  @staticmethod
  def swept(state) -> dict:
    """The sweep members' values in a train state, {field: [members]}; {} without a sweep."""
    return state.get("hparams", {})

  def restore(self, workdir: str) -> tuple[int, dict]:
    """The newest intact checkpoint of a workdir of this config: (step, train state)."""
    self.check_model_of(workdir)
    checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=self.config.max_checkpoints)
    try:
      return checkpointer.restore(self.abstract_state())
    finally:
      checkpointer.close()

  def record_model(self, workdir: str) -> None:
    """Names this experiment's model of one's own in workdir (no file for the config's)."""
    path = os.path.join(workdir, MODEL_FILE)
    if self.model_name:
      with open(path, "w") as f:
        json.dump({"model": self.model_name}, f)
    elif os.path.exists(path):  # a run started over in the workdir of another model
      os.remove(path)

  def check_model_of(self, workdir: str) -> None:
    """Refuses a workdir trained with a model of one's own when this experiment has
    another (or the config's): its checkpoints would not fit and would look damaged."""
    path = os.path.join(workdir, MODEL_FILE)
    if not os.path.exists(path):  # the config's model, or a workdir from before the file
      return
    with open(path) as f:
      trained = json.load(f)["model"]
    if not self.model_name:
      raise ValueError(
        f"{workdir} was trained with a model of one's own, {trained}: pass a module of the "
        "same structure (model=... to train_and_evaluate or restore_model; "
        "experiments.evaluate --model=MODULE:FUNCTION, e.g. experiments.hvae:model_for_config)."
      )
    trained_class = trained.rsplit(".", 1)[-1]
    if trained_class != self.model_name.rsplit(".", 1)[-1]:  # the class: modules move
      raise ValueError(
        f"{workdir} was trained with {trained}, and this model is {self.model_name}: pass "
        f"a {trained_class} of the same structure."
      )

  # --- State -------------------------------------------------------------------------

  def _initial_state(self, seed_key, swept):
    state = state_lib.init_state(
      self.make_model, self.optimizer, seed_key, early_stopping=self.early_stopping
    )
    if swept:  # a sweep member's values and divergence, kept with its state (checkpointed)
      state["hparams"] = swept
      state["diverged_at"] = jnp.full((), -1, jnp.int32)  # its first non-finite step; -1
    return state

  def final_params(self, state):
    """The parameters a run reports: the best validation epoch's with early stopping, else
    the last."""
    return state["early_stopping"]["best_params"] if self.early_stopping else state["params"]

  def _freeze_members(self, state, last_good_state, diverged_at):
    """The state with each member whose diverged_at >= 0 put back to last_good_state and
    marked diverged from that step: it trains no further, and the others go on."""
    frozen = diverged_at >= 0

    def pick(new, old):
      return jnp.where(frozen.reshape(-1, *[1] * (new.ndim - 1)), old, new)

    state = jax.tree.map(pick, state, last_good_state)
    return {**state, "diverged_at": jnp.where(frozen, diverged_at, state["diverged_at"])}

  def _update_early_stopping(self, state, valid_elbo, epoch):
    """The state with every member's early stopping updated by its validation ELBO,
    [members]; the epochs of KL warm-up (a sweep member's own) are not counted."""
    warmup_epochs = self.swept(state).get(
      "kl_warmup_epochs", jnp.full(self.num_members, self.config.kl_warmup_epochs)
    )

    def update(early_stopping, params, valid_elbo, warmup_epochs):
      return state_lib.update_early_stopping(
        early_stopping,
        params,
        valid_elbo,
        epoch,
        patience=self.config.early_stopping_epochs,
        warmup_epochs=warmup_epochs,
      )

    early_stopping = jax.vmap(update)(
      state["early_stopping"], state["params"], valid_elbo, warmup_epochs
    )
    return {**state, "early_stopping": early_stopping}

  def initial_state(self):
    """The train state of every seed, stacked on a leading axis, created in place on the mesh."""
    initial_state = jax.jit(
      lambda keys, swept: self.map_members(self._initial_state, keys, swept),
      out_shardings=self.state_sharding,
    )
    return initial_state(state_lib.seed_keys(self.config), self.member_values)

  def abstract_state(self):
    """Shapes, dtypes and shardings of the train state (jax.eval_shape: nothing is computed)."""
    shapes = jax.eval_shape(
      jax.vmap(self._initial_state), state_lib.seed_keys(self.config), self.member_values
    )
    return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.state_sharding), shapes
    )

  # --- Training ----------------------------------------------------------------------

  def _loss(self, params, x, labels, key, step, hparams):
    """The loss to minimize and the metrics to report (see losses.checked_loss)."""
    labels = labels if self.conditional else None
    model = self.model(params, hparams)
    return losses.checked_loss(self.loss_fn, model, key, x, labels, step, hparams)

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
    # The config's constants, and a sweep member's own values (traced) where it has them.
    hparams = sweeps.hparams(self.config, state.get("hparams"))
    x, key_objective = self.step_inputs(images, step_key, step)
    (_, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(
      state["params"], x, labels, key_objective, step, hparams
    )
    optimizer = state_lib.make_optimizer(self.config, self.steps_per_epoch, hparams)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {
      **state,  # early stopping's part changes only between epochs
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
    steps]: the diagnosis of a call that went non-finite (see train.first_failures).
    """
    batch_size = self.config.batch_size

    def one_seed(state, seed_key):
      keys = state_lib.purpose_keys(seed_key)
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

    with state_lib.matmul_precision(self.config.matmul_precision):
      return self.map_members(one_seed, state, keys)

  # --- Evaluation --------------------------------------------------------------------

  def _evaluate(self, params, swept, test_x, test_labels) -> dict[str, jax.Array]:
    """Per-member test ELBO, reconstruction and KL (one sample, analytic KL): each
    [members]; swept: the members' values (Experiment.swept)."""

    def one_member(params, swept):
      terms = evaluation.test_elbo_terms(
        self.model(params, swept),
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

    with state_lib.matmul_precision(self.config.matmul_precision):
      return self.map_members(one_member, params, swept)

  def _evaluate_examples(
    self, params, swept, x, labels, start, *, block_size
  ) -> dict[str, jax.Array]:
    """One member's per-example evaluation (evaluation.evaluate_examples) of the block_size
    examples of x from `start` on, over all devices. Past the end of x the last example
    is repeated (drop those rows). Results do not depend on how the set is cut into
    blocks whose sizes are multiples of eval_batch_size."""
    config = self.config
    index = jnp.minimum(start + jnp.arange(block_size), x.shape[0] - 1)
    with state_lib.matmul_precision(config.eval_matmul_precision):
      return evaluation.evaluate_examples_on_devices(
        self.model(params, swept),
        x[index],
        labels[index],
        jax.random.key(1),
        first_index=start,
        batch_size=config.eval_batch_size,
        num_samples=config.eval_num_samples,
        chunk_size=config.eval_chunk_size,
        iwae_samples=tuple(config.eval_iwae_samples),
        devices=self.mesh.devices.flatten(),
      )
