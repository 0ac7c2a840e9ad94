"""Shared by the tests: a model whose log p(x) is known in closed form, and subprocess runs."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax import models


def two_layer_linear_gaussian():
  """A TwoStochasticLayerVAE whose every conditional is linear-Gaussian, so log p(x) is exact.

  h2 ~ N(0, I), h1 | h2 ~ N(A h2 + a, diag(exp(s))), x | h1 ~ N(B h1 + b, I);
  the encoder is a good linear proposal that is not the exact posterior.
  """
  vae = models.TwoStochasticLayerVAE(
    image_shape=(2, 3, 1),
    latent_dim=3,
    top_latent_dim=2,
    hidden=(),
    top_hidden=(),
    likelihood="gaussian",
    gaussian_logvar=0.0,
    rngs=nnx.Rngs(0),
  )
  rng = np.random.default_rng(0)
  a_matrix, a_bias, s = rng.normal(size=(2, 3)), rng.normal(size=3), 0.3 * rng.normal(size=3)
  b_matrix, b_bias = rng.normal(size=(3, 6)), rng.normal(size=6)
  p_h1 = vae.p_h1.layers[0]
  p_h1.kernel[...] = jnp.asarray(np.concatenate([a_matrix, np.zeros((2, 3))], 1), jnp.float32)
  p_h1.bias[...] = jnp.asarray(np.concatenate([a_bias, s]), jnp.float32)
  vae.p_x.layers[0].kernel[...] = jnp.asarray(b_matrix, jnp.float32)
  vae.p_x.layers[0].bias[...] = jnp.asarray(b_bias, jnp.float32)
  # A good but inexact proposal: the exact posterior means (linear in x, and in h1),
  # twice the exact marginal variances, no correlations. Overdispersed, so the
  # importance weights have light tails and IS-5000 is accurate.
  prior_cov_h1 = a_matrix.T @ a_matrix + np.diag(np.exp(s))
  post_cov_h1 = np.linalg.inv(np.linalg.inv(prior_cov_h1) + b_matrix @ b_matrix.T)
  kernel_h1 = b_matrix.T @ post_cov_h1
  bias_h1 = a_bias @ np.linalg.inv(prior_cov_h1) @ post_cov_h1 - b_bias @ kernel_h1
  noise_precision = np.diag(np.exp(-s))
  post_cov_h2 = np.linalg.inv(np.eye(2) + a_matrix @ noise_precision @ a_matrix.T)
  kernel_h2 = noise_precision @ a_matrix.T @ post_cov_h2
  bias_h2 = -a_bias @ kernel_h2
  for layer, kernel, bias, cov in (
    (vae.q_h1.layers[0], kernel_h1, bias_h1, post_cov_h1),
    (vae.q_h2.layers[0], kernel_h2, bias_h2, post_cov_h2),
  ):
    size = kernel.shape[1]
    layer.kernel[...] = jnp.asarray(np.concatenate([kernel, np.zeros_like(kernel)], 1), jnp.float32)
    layer.bias[...] = jnp.asarray(
      np.concatenate([bias, np.log(2 * np.diag(cov))[:size]]), jnp.float32
    )
  cov_h1 = a_matrix.T @ a_matrix + np.diag(np.exp(s))
  cov_x = b_matrix.T @ cov_h1 @ b_matrix + np.eye(6)
  mean_x = a_bias @ b_matrix + b_bias
  return vae, mean_x, cov_x


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  """python -m module args, from the repository root."""
  return run_python("-m", module, *args)


def run_python(*args: str) -> subprocess.CompletedProcess:
  """A fresh Python process (e.g. one with XLA_FLAGS set before jax loads)."""
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
  )


def start_python(*args: str) -> subprocess.Popen:
  """run_python without waiting: for processes that must run side by side."""
  return subprocess.Popen(
    [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
