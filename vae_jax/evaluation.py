"""Test-set evaluation in batches: ELBO terms and the importance-sampled log-likelihood."""

from typing import Callable

import jax
import jax.numpy as jnp

from vae_jax import objectives


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
  """Per-example ELBO terms (one sample, analytic KL) over a whole test set."""

  def one_batch(x, labels, index):
    encode, log_likelihood = model.callables(labels if model.num_classes else None)
    return objectives.elbo_terms(jax.random.fold_in(key, index[0]), x, encode, log_likelihood)

  return map_batches(one_batch, (x, labels, jnp.arange(x.shape[0])), batch_size)


def test_log_likelihood(
  model, x, labels, key, *, batch_size: int, num_samples: int, chunk_size: int
) -> objectives.LogLikelihoodEstimate:
  """Per-example importance-sampled log p(x) (and its standard error) over a test set."""

  def one_batch(x, labels, index):
    encode, log_likelihood = model.callables(labels if model.num_classes else None)
    return objectives.importance_log_likelihood(
      jax.random.fold_in(key, index[0]),
      x,
      encode,
      log_likelihood,
      num_samples=num_samples,
      chunk_size=chunk_size,
      return_standard_error=True,
    )

  return map_batches(one_batch, (x, labels, jnp.arange(x.shape[0])), batch_size)
