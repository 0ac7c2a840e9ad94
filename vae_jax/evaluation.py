"""Test-set evaluation in batches: ELBO terms and the importance-sampled log-likelihood."""

from typing import Callable

import jax
import jax.numpy as jnp

from vae_jax import models, objectives


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
  analytic_kl = not isinstance(model, models.TwoStochasticLayerVAE)

  def one_batch(x, labels, index):
    return model.elbo_terms(
      jax.random.fold_in(key, index[0]),
      x,
      labels if model.num_classes else None,
      analytic_kl=analytic_kl,
    )

  return map_batches(one_batch, (x, labels, jnp.arange(x.shape[0])), batch_size)


def test_log_likelihood(
  model, x, labels, key, *, batch_size: int, num_samples: int, chunk_size: int
) -> objectives.LogLikelihoodEstimate:
  """Per-example importance-sampled log p(x) (and its standard error) over a test set."""

  def one_batch(x, labels, index):
    labels = labels if model.num_classes else None
    return objectives.importance_log_likelihood_from_log_weights(
      lambda key, size: model.log_weights(key, x, size, labels),
      jax.random.fold_in(key, index[0]),
      num_samples=num_samples,
      chunk_size=chunk_size,
      return_standard_error=True,
    )

  return map_batches(one_batch, (x, labels, jnp.arange(x.shape[0])), batch_size)
