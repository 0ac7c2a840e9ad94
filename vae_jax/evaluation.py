"""Test-set evaluation: ELBO, IWAE bounds, importance-sampled log-likelihood, diagnostics.

Everything is batched over the whole set with lax.map (no per-example Python
loop) and split over devices when there are several.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax import objectives, posteriors


def map_batches(fn: Callable, arrays: tuple, batch_size: int) -> jax.Array:
  """fn over consecutive batches of arrays (leading axis N) with lax.map; results [N, ...].

  The last batch is padded by repeating the final example and the padding is
  dropped from the result, so every example is counted once.
  """
  n = arrays[0].shape[0]
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n

  def batched(a):
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape(num_batches, batch_size, *a.shape[1:])

  out = jax.lax.map(lambda args: fn(*args), tuple(batched(a) for a in arrays))
  return jax.tree.map(lambda o: o.reshape(num_batches * batch_size, *o.shape[2:])[:n], out)


def test_elbo_terms(model, x, labels, key, *, batch_size: int) -> objectives.ElboTerms:
  """Per-example ELBO terms over a test set: one sample, the analytic KL where there is one."""

  def one_batch(x, labels, index):
    return model.elbo_terms(
      jax.random.fold_in(key, index[0]),
      x,
      labels if model.num_classes else None,
      analytic_kl=model.has_analytic_kl,
    )

  return map_batches(one_batch, (x, labels, jnp.arange(x.shape[0])), batch_size)


#: The numbers of samples K of the IWAE bounds that evaluate_examples reports by default.
IWAE_SAMPLES = (1, 5, 50)
#: A latent dimension is active when Cov_x(E_q[z_i]) exceeds this (Burda et al. 2015).
ACTIVE_UNIT_THRESHOLD = 0.01


def evaluate_examples(
  model,
  x: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  *,
  batch_size: int,
  num_samples: int,
  chunk_size: int,
  iwae_samples: tuple[int, ...] = IWAE_SAMPLES,
  indices: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Every per-example quantity of the evaluation, batched over the whole set with lax.map.

  Returns a dict of [N] arrays (and [N, latent] ones): elbo, reconstruction, kl
  (one sample, the analytic KL where there is one), kl_per_dimension,
  posterior_mean, iwae_K for each K in iwae_samples, log_likelihood (the
  importance-sampled estimate with num_samples samples, drawn chunk_size at a
  time) and log_likelihood_mc_stderr (its Monte Carlo standard error).

  The batch starting at example i draws its samples from fold_in(key, i), with
  i from `indices` (default 0..N-1): the results do not depend on how the
  examples are split over devices, as long as the batches are the same.
  """

  def one_batch(x, labels, index):
    labels = labels if model.num_classes else None
    keys = jax.random.split(jax.random.fold_in(key, index[0]), 2 + len(iwae_samples))
    terms = model.elbo_terms(keys[0], x, labels, analytic_kl=model.has_analytic_kl)
    estimate = objectives.importance_log_likelihood_from_log_weights(
      lambda key, size: model.log_weights(key, x, labels, num_samples=size),
      keys[1],
      num_samples=num_samples,
      chunk_size=chunk_size,
    )
    out = {
      "elbo": terms.reconstruction - terms.kl,
      "reconstruction": terms.reconstruction,
      "kl": terms.kl,
      "kl_per_dimension": terms.kl_per_dimension,  # None where the prior does not factorize
      "posterior_mean": posteriors.location(model.encode(x, labels)),
      "log_likelihood": estimate.log_px,
      "log_likelihood_mc_stderr": estimate.standard_error,
    }
    for k, key_k in zip(iwae_samples, keys[2:]):
      out[f"iwae_{k}"] = objectives.iwae_bound(model.log_weights(key_k, x, labels, num_samples=k))
    return out

  indices = jnp.arange(x.shape[0]) if indices is None else indices
  return map_batches(one_batch, (x, labels, indices), batch_size)


def evaluate_examples_on_devices(
  model,
  x: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  *,
  devices=None,
  first_index: int | jax.Array = 0,
  **kwargs,
) -> dict[str, jax.Array]:
  """evaluate_examples with the examples split over devices (all of them by default).

  Each device runs the batches of its contiguous share; the set is padded to a
  multiple of devices x batch_size, so the batches, their keys and therefore
  the results are those of a single-device run. x may be a block of a larger set
  that starts at example first_index (a multiple of batch_size): its results are
  then those of the whole set's run. Call it inside jax.jit.
  """
  devices = jax.devices() if devices is None else devices
  if len(devices) == 1:
    indices = first_index + jnp.arange(x.shape[0])
    return evaluate_examples(model, x, labels, key, indices=indices, **kwargs)
  n, per_call = x.shape[0], len(devices) * kwargs["batch_size"]
  pad = -n % per_call
  indices = first_index + jnp.arange(n + pad)

  def padded(a):
    return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  graphdef, state = nnx.split(model)
  data_spec, replicated = jax.sharding.PartitionSpec("data"), jax.sharding.PartitionSpec()

  def local(state, x, labels, indices):
    return evaluate_examples(nnx.merge(graphdef, state), x, labels, key, indices=indices, **kwargs)

  out = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(replicated, data_spec, data_spec, data_spec),
    out_specs=data_spec,
    check_vma=False,  # the IS scan's carry starts replicated and becomes per-device
  )(state, padded(x), padded(labels), indices)
  return jax.tree.map(lambda a: a[:n], out)


def summarize(examples: dict[str, np.ndarray], *, num_pixels: int, bits_per_dim: bool) -> dict:
  """Means over examples with their standard errors, active units, KL per dimension.

  Args:
    examples: evaluate_examples' output, as numpy arrays.
    num_pixels: dimensions per example, for bits/dim.
    bits_per_dim: also report the likelihoods in bits per dimension (8-bit data).
  """
  n = len(examples["elbo"])
  summary = {"num_examples": n}
  for name, values in examples.items():
    if values is None or values.ndim != 1 or name == "log_likelihood_mc_stderr":
      continue
    values = np.asarray(values, np.float64)
    summary[name] = float(values.mean())
    summary[f"{name}_stderr"] = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    if bits_per_dim and name != "kl" and name != "reconstruction":
      summary[f"{name}_bits_per_dim"] = -summary[name] / (num_pixels * np.log(2.0))
  # The Monte Carlo error of the IS estimate itself, next to the spread over examples.
  summary["log_likelihood_mc_stderr"] = float(np.mean(examples["log_likelihood_mc_stderr"]))
  activity = np.var(np.asarray(examples["posterior_mean"], np.float64), axis=0, ddof=1)
  summary["active_units"] = int(np.sum(activity > ACTIVE_UNIT_THRESHOLD))
  summary["latent_activity"] = activity.tolist()
  if examples.get("kl_per_dimension") is not None:
    summary["kl_per_dimension"] = np.mean(examples["kl_per_dimension"], axis=0).tolist()
  return summary
