"""Tests for vae_jax.models, vae_jax.train and the experiments/train.py entry point."""

import json
import os
import re
import signal
import socket
import sys
from unittest import mock

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vae_jax
from experiments.configs import burda2015_iwae_k50_2layer
from vae_jax import checkpoints, data, likelihoods, models, networks, train
from vae_jax import state as state_lib
from vae_jax.config import build_config, validate_config
from vae_jax.experiment import Experiment
from vae_jax.state import make_model


def make_small_dataset():
  """400 train / 100 test digits of the embedded MNIST: fast, and real."""
  full = data.load_mnist_5k()
  pick_train, pick_test = np.arange(0, 4000, 10), np.arange(0, 1000, 10)
  return data.make_dataset(
    (full.train_images[pick_train], full.train_labels[pick_train]),
    (full.test_images[pick_test], full.test_labels[pick_test]),
    num_classes=10,
  )


@pytest.fixture(scope="module")
def small_dataset():
  return make_small_dataset()


def tiny_config(**overrides):
  config = build_config(
    dict(
      hidden=(32,),
      latent_dim=4,
      batch_size=50,
      num_epochs=2,
      eval_batch_size=50,
      eval_num_samples=20,
      eval_chunk_size=10,
      checkpoint_every_epochs=1,
    )
  )
  config.update(overrides)
  return config


def _num_params(module):
  return sum(p.size for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


# --- Models -------------------------------------------------------------------------------


def test_embedded_dataset_split():
  dataset = data.load_mnist_5k()
  assert dataset.train_images.shape == (4000, 28, 28, 1) and dataset.train_images.dtype == np.uint8
  assert dataset.test_images.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [100] * 10)
  assert 0.12 < dataset.train_images.mean() / 255 < 0.14  # MNIST's mean grey level is about 0.13


def test_burda_architecture_parameter_count_and_shapes():
  vae = models.VAE(image_shape=(28, 28, 1), latent_dim=50, hidden=(200, 200), rngs=nnx.Rngs(0))
  encoder = (784 * 200 + 200) + (200 * 200 + 200) + (200 * 100 + 100)
  decoder = (50 * 200 + 200) + (200 * 200 + 200) + (200 * 784 + 784)
  assert _num_params(vae) == encoder + decoder
  x = jnp.zeros((3, 28, 28, 1))
  mean, logvar = vae.encode(x)
  assert mean.shape == logvar.shape == (3, 50)
  assert vae.log_likelihood(x, mean).shape == (3,)
  assert vae.decode_mean(mean).shape == (3, 28, 28, 1)
  # Conditional: the one-hot label adds 10 inputs to each network.
  cvae = models.VAE(
    image_shape=(28, 28, 1), latent_dim=50, hidden=(200, 200), num_classes=10, rngs=nnx.Rngs(0)
  )
  assert _num_params(cvae) == encoder + decoder + 2 * 10 * 200
  with pytest.raises(ValueError, match="needs labels"):
    cvae.encode(x)
  with pytest.raises(ValueError, match=r"= \[batch, 28, 28, 1\], got \(3, 784\)"):
    vae.encode(jnp.zeros((3, 784)))


def test_burda_two_stochastic_layer_parameter_count_and_shapes():
  # The authors' code's widths (yburda/iwae): 784-200-200-[100]-100-100-[50].
  vae = models.TwoStochasticLayerVAE(image_shape=(28, 28, 1), rngs=nnx.Rngs(0))
  q_h1 = (784 * 200 + 200) + (200 * 200 + 200) + (200 * 200 + 200)
  q_h2 = (100 * 100 + 100) + (100 * 100 + 100) + (100 * 100 + 100)
  p_h1 = (50 * 100 + 100) + (100 * 100 + 100) + (100 * 200 + 200)
  p_x = (100 * 200 + 200) + (200 * 200 + 200) + (200 * 784 + 784)
  assert _num_params(vae) == q_h1 + q_h2 + p_h1 + p_x
  # The 2-layer config builds the same model.
  config = burda2015_iwae_k50_2layer.get_config()
  model = make_model(config, (28, 28, 1), num_classes=0, rngs=nnx.Rngs(0))
  assert _num_params(model) == _num_params(vae)
  x = (jax.random.uniform(jax.random.key(0), (3, 28, 28, 1)) > 0.5).astype(jnp.float32)
  assert vae.log_weights(jax.random.key(1), x, num_samples=7).shape == (7, 3)
  terms = vae.elbo_terms(jax.random.key(1), x, num_samples=7)
  assert terms.kl_per_dimension.shape == (3, 150)
  # The ELBO terms and the log-weights are one computation on the same samples.
  np.testing.assert_allclose(
    terms.reconstruction - terms.kl,
    vae.log_weights(jax.random.key(1), x, num_samples=7).mean(axis=0),
    rtol=1e-5,
  )
  assert vae.decode_prior(jax.random.key(2), num_samples=5).shape == (5, 28, 28, 1)
  with pytest.raises(ValueError, match="no closed-form KL"):
    vae.elbo_terms(jax.random.key(1), x, analytic_kl=True)


def test_two_stochastic_layers_prior_samples_are_ancestral_draws():
  # h2 ~ N(0, I) and h1 | h2 ~ N(A'h2 + a, diag(exp(s))), so h1 ~ N(a, A'A + diag(exp(s))).
  # Decoding at p(h1|h2)'s mean instead would leave out diag(exp(s)).
  vae, _, _ = helpers.two_layer_linear_gaussian()
  layer = vae.p_h1.layers[0]
  a_matrix, a_bias, s = (
    np.asarray(v) for v in (layer.kernel[:, :3], layer.bias[:3], layer.bias[3:])
  )
  with mock.patch.object(models.TwoStochasticLayerVAE, "decode_mean", lambda self, h1: h1):
    h1 = np.asarray(vae.decode_prior(jax.random.key(0), num_samples=40_000))
  cov_h1 = a_matrix.T @ a_matrix + np.diag(np.exp(s))
  scale = np.sqrt(np.diag(cov_h1))
  np.testing.assert_allclose((h1.mean(0) - a_bias) / scale, 0, atol=0.03)
  np.testing.assert_allclose(
    np.cov(h1.T) / np.outer(scale, scale), cov_h1 / np.outer(scale, scale), atol=0.03
  )


def test_two_stochastic_layers_importance_sampling_recovers_exact_log_likelihood():
  scipy_stats = pytest.importorskip("scipy.stats")
  vae, mean_x, cov_x = helpers.two_layer_linear_gaussian()
  x_flat = np.random.default_rng(1).multivariate_normal(mean_x, cov_x, size=16)
  exact = scipy_stats.multivariate_normal(mean_x, cov_x).logpdf(x_flat)
  x = jnp.asarray(x_flat.reshape(16, 2, 3, 1), jnp.float32)
  estimate = vae_jax.importance_log_likelihood_from_log_weights(
    lambda key, k: vae.log_weights(key, x, num_samples=k),
    jax.random.key(0),
    num_samples=5000,
    chunk_size=1000,
  )
  error = np.asarray(estimate.log_px) - exact
  assert np.all(np.abs(error) < 5 * np.asarray(estimate.standard_error) + 1e-3), error
  # The ELBO is below log p(x) by a clear margin with this poor proposal.
  elbo = vae.log_weights(jax.random.key(1), x, num_samples=2000).mean(axis=0)
  assert np.all(np.asarray(elbo) < exact - 0.05)


@pytest.mark.parametrize("likelihood", likelihoods.LIKELIHOODS)
@pytest.mark.parametrize(
  "architecture, image_shape", [("mlp", (28, 28, 1)), ("conv", (28, 28, 1)), ("conv", (32, 32, 3))]
)
def test_every_likelihood_head_and_architecture(likelihood, architecture, image_shape):
  vae = models.VAE(
    image_shape=image_shape,
    latent_dim=3,
    hidden=(16,),
    conv_channels=(4, 8),
    likelihood=likelihood,
    architecture=architecture,
    num_classes=10,
    rngs=nnx.Rngs(0),
  )
  integer = vae.integer_data
  x = jax.random.randint(jax.random.key(0), (2, *image_shape), 0, 256).astype(jnp.uint8)
  x = x if integer else (x > 127).astype(jnp.float32)
  labels = jnp.array([3, 7])
  value = vae_jax.elbo(jax.random.key(1), x, *vae.callables(labels), num_samples=2)
  assert value.shape == (2,) and np.all(np.isfinite(value)) and np.all(value < 0)
  picture = vae.decode_mean(jnp.zeros((2, 3)), labels)
  assert picture.shape == (2, *image_shape) and np.all((picture >= 0) & (picture <= 1))


def test_a_gated_dense_layer_is_its_linear_map_times_the_sigmoid_of_its_gate():
  layer = networks.GatedDense(3, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 3))
  h = x @ layer.h.kernel[...] + layer.h.bias[...][None]
  g = x @ layer.g.kernel[...] + layer.g.bias[...][None]
  np.testing.assert_allclose(layer(x), h / (1.0 + np.exp(-np.asarray(g))), rtol=1e-6)
  mlp = networks.MLP(5, (4, 3), 2, activation="gated", rngs=nnx.Rngs(0))
  assert [type(layer).__name__ for layer in mlp.layers] == ["GatedDense", "GatedDense", "Linear"]


@pytest.mark.parametrize("weight_init, variance", [("lecun_normal", 1.0), ("he_normal", 2.0)])
def test_weight_inits_have_their_variance_over_fan_in(weight_init, variance):
  mlp = networks.MLP(400, (300,), 300, activation="relu", weight_init=weight_init, rngs=nnx.Rngs(0))
  kernel = np.asarray(mlp.layers[0].kernel[...])
  # 120,000 draws: the sample variance is within 1.5% of the true one at 3 sigma.
  np.testing.assert_allclose(kernel.var() * 400, variance, rtol=0.015)
  assert abs(kernel.mean()) < 3 * np.sqrt(variance / 400 / kernel.size)


def test_the_log_variance_range_clips_the_posterior_and_stops_its_gradient_outside():
  vae = models.VAE(
    image_shape=(4, 4, 1), latent_dim=3, hidden=(8,), logvar_range=(-0.1, 0.1), rngs=nnx.Rngs(0)
  )
  last = vae.encoder.layers[-1]
  last.bias[...] = last.bias[...].at[3:].set(jnp.array([-5.0, 0.0, 5.0]))  # low, inside, high
  x = jnp.zeros((2, 4, 4, 1))
  _, logvar = vae.encode(x)
  np.testing.assert_allclose(logvar[:, 0], -0.1)
  np.testing.assert_allclose(logvar[:, 2], 0.1)
  graphdef, params = nnx.split(vae, nnx.Param)

  def log_variance_sum(params):
    return jnp.sum(nnx.merge(graphdef, params).encode(x)[1])

  bias_gradient = jax.grad(log_variance_sum)(params)["encoder"]["layers"][1]["bias"][...]
  np.testing.assert_array_equal(bias_gradient[3:], [0.0, 2.0, 0.0])  # 2 images, inside only
  with pytest.raises(ValueError, match="logvar_range"):
    validate_config(build_config(dict(logvar_range=(1.0, -1.0))))


def test_adam_normgrad_is_adam_on_gradients_of_unit_norm():
  config = build_config(dict(adam_normgrad=True, learning_rate=0.1))
  optimizer = state_lib.make_optimizer(config, steps_per_epoch=10)
  params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.5])}
  opt_state = optimizer.init(params)
  # The authors' AdamNormGrad (their utils/optimizer.py) written out for two steps.
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(v) for k, v in params.items()}
  expected = {k: np.asarray(p, np.float64) for k, p in params.items()}
  for t, grads in enumerate([{"w": [3.0, 4.0], "b": [-2.0]}, {"w": [0.0, 1e-3], "b": [7.0]}], 1):
    as_arrays = {k: jnp.asarray(g) for k, g in grads.items()}
    updates, opt_state = optimizer.update(as_arrays, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for k, g in grads.items():
      g = np.asarray(g) / (np.linalg.norm(g) + 1e-7)
      m[k] = 0.9 * m[k] + 0.1 * g
      v[k] = 0.999 * v[k] + 0.001 * g**2
      step = 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
      expected[k] -= step * m[k] / (np.sqrt(v[k]) + 1e-8)
  for k in params:
    np.testing.assert_allclose(params[k], expected[k], rtol=1e-5)


# --- Training ---------------------------------------------------------------------------


def test_golden_one_step(small_dataset):
  """A fixed first step. If a deliberate change to initialization, the objective or the
  optimizer moves these numbers, check the change, then update them from the failure message."""
  experiment = Experiment(tiny_config(steps_per_call=1), small_dataset)
  state = experiment.initial_state()
  state, step_metrics = experiment.train_chunk(state, *experiment.train_inputs())
  got = [-float(step_metrics["loss"][0]), float(step_metrics["gradient_norm"][0])]
  np.testing.assert_allclose(
    got, GOLDEN_OBJECTIVE_AND_GRADIENT_NORM, rtol=1e-4, err_msg=f"got {got}"
  )


def test_a_call_reports_its_mean_metrics_and_its_last_gradient_norm(small_dataset):
  """One call of 4 steps reports the mean of the 4 steps' metrics and the fourth step's
  gradient norm: the same as 4 calls of 1 step, and as the per-step diagnosis."""
  calls = {}
  for steps_per_call, num_calls in ((4, 1), (1, 4)):
    experiment = Experiment(tiny_config(steps_per_call=steps_per_call), small_dataset)
    state, inputs = experiment.initial_state(), experiment.train_inputs()
    if steps_per_call == 4:
      _, per_step = experiment.trace_chunk(state, *inputs)
    calls[steps_per_call] = []
    for _ in range(num_calls):
      state, call_metrics = experiment.train_chunk(state, *inputs)
      calls[steps_per_call].append(jax.device_get(call_metrics))
  (four,), ones = calls[4], calls[1]
  for name in ("loss", "elbo", "kl"):
    np.testing.assert_allclose(four[name], np.mean([m[name] for m in ones], 0), rtol=1e-5)
    np.testing.assert_allclose(four[name], np.mean(per_step[name], 1), rtol=1e-5)
  np.testing.assert_allclose(four["gradient_norm"], ones[3]["gradient_norm"], rtol=1e-5)
  np.testing.assert_allclose(four["gradient_norm"], per_step["gradient_norm"][:, 3], rtol=1e-5)
  assert np.all(np.diff(per_step["gradient_norm"][0]) != 0)  # four different steps


def import_bench():
  """scripts/bench.py, whose minimal hand-written loop the library is measured against."""
  scripts = os.path.join(helpers.REPO, "scripts")
  if scripts not in sys.path:
    sys.path.insert(0, scripts)
  import bench

  return bench


@pytest.mark.parametrize("num_samples", [1, 50])
def test_a_step_launches_no_more_kernels_than_a_minimal_hand_written_loop(num_samples):
  """Per-step overhead (stacked metrics, a lax.cond that the GPU compiler if-converts,
  extra reductions) shows up as kernels in the compiled scan body: at Burda et al.'s
  batch of 20 a GPU step is launch-bound, so each one costs time. Compiled for the
  current backend (CPU, or the GPU where there is one) beside scripts/bench.py's
  minimal loop of the same model and estimator."""
  bench = import_bench()

  with jax.numpy_rank_promotion("allow"):  # the minimal loop broadcasts its biases implicitly
    config = bench.iwae_or_elbo_config(num_samples, batch_size=20)
    library, minimal = bench.step_kernels(data.load_mnist_5k(), config)
  assert library <= minimal, f"{library} kernels per step; the minimal loop has {minimal}"


def test_the_minimal_loop_that_sums_its_loss_trains_the_same():
  """bench.py --minimal_loop_loss: the loop also sums its loss (-ELBO of binary images, so
  positive), without changing a step."""
  bench = import_bench()

  images = jnp.asarray(data.load_mnist_5k().train_images[:200])
  config = bench.iwae_or_elbo_config(1, batch_size=20)

  def one_epoch(loss_value):  # 10 steps
    epoch, state = bench.baseline_epoch_fn(config, 200, loss_value=loss_value)
    (params, _), loss_sum = epoch(state, images, jax.random.key(3))
    return params, loss_sum

  with jax.numpy_rank_promotion("allow"):  # the minimal loop broadcasts its biases implicitly
    (params, no_loss), (params_with_loss, loss_sum) = one_epoch(False), one_epoch(True)
  assert no_loss is None
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_with_loss)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert 0 < loss_sum / 10 < 1000, loss_sum  # 784 log 2 = 543 nats at logits 0


def test_bfloat16_networks_take_latent_samples_in_float32():
  """1.5 and 1.5 + 1e-3 are the same bfloat16 number; the first layer of every network
  that takes latent samples must still tell them apart (pixels need no such care)."""
  bf16 = dict(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  mlp_vae = models.VAE(image_shape=(28, 28, 1), latent_dim=4, hidden=(16,), **bf16)
  conv_vae = models.VAE(
    image_shape=(28, 28, 1), latent_dim=4, hidden=(16,), architecture="conv", **bf16
  )
  two_layer = models.TwoStochasticLayerVAE(
    image_shape=(28, 28, 1), latent_dim=4, top_latent_dim=3, hidden=(16,), top_hidden=(8,), **bf16
  )
  assert jnp.bfloat16(1.5) == jnp.bfloat16(1.5 + 1e-3)
  for first_layer, size in (
    (mlp_vae.decoder.layers[0], 4),
    (conv_vae.decoder.mlp.layers[0], 4),
    (two_layer.p_x.layers[0], 4),
    (two_layer.q_h2.layers[0], 4),
    (two_layer.p_h1.layers[0], 3),
  ):
    z = jnp.full((1, size), 1.5)
    assert np.all(np.asarray(first_layer(z) != first_layer(z + 1e-3)))
  # ... and the rest computes in bfloat16.
  h = jnp.full((1, 16), 1.5)
  np.testing.assert_array_equal(mlp_vae.decoder.layers[1](h), mlp_vae.decoder.layers[1](h + 1e-3))


def test_bfloat16_step_is_finite_and_close_to_float32(small_dataset):
  """bf16 matmuls with float32 parameters and log-densities: one step, the same inputs."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    experiment = Experiment(
      tiny_config(steps_per_call=1, dtype=dtype, objective="iwae", num_samples=5), small_dataset
    )
    state = experiment.initial_state()
    initial = jax.tree.map(np.array, state)  # train_chunk donates state
    new_state, step_metrics = experiment.train_chunk(state, *experiment.train_inputs())
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state["params"]))
    moves = jax.tree.map(lambda new, old: new - old, new_state["params"], initial["params"])
    results[dtype] = (-float(step_metrics["loss"][0]), moves)
  (objective32, moves32), (objective16, moves16) = results["float32"], results["bfloat16"]
  assert np.isfinite(objective16)
  # bf16 keeps 8 bits of mantissa: the objective (~550 nats) agrees to 0.2%.
  np.testing.assert_allclose(objective16, objective32, rtol=2e-3)
  # Adam's first step moves each parameter by about lr * sign(gradient): the gradients'
  # signs agree for nearly every parameter (a wrong bf16 gradient would give ~50%).
  same = [
    np.mean(np.sign(a) == np.sign(b))
    for a, b in zip(jax.tree.leaves(moves32), jax.tree.leaves(moves16))
  ]
  assert min(same) > 0.9, same


GOLDEN_OBJECTIVE_AND_GRADIENT_NORM = [-576.6083374023438, 58.57913589477539]


def _run_chunks(experiment, state, num_calls):
  keys, images, labels = experiment.train_inputs()
  for _ in range(num_calls):
    state, _ = experiment.train_chunk(state, keys, images, labels)
  return state


def test_vmapped_seeds_equal_separate_runs(small_dataset):
  together = Experiment(tiny_config(num_seeds=2, seed=5), small_dataset)
  state = _run_chunks(together, together.initial_state(), 3)
  for i in range(2):
    alone = Experiment(tiny_config(num_seeds=1, seed=5 + i), small_dataset)
    separate = _run_chunks(alone, alone.initial_state(), 3)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a[i], b[0], rtol=2e-5, atol=2e-6),
      state["params"],
      separate["params"],
    )


SHARDED_TRAINING = """
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"  # simulated CPU devices, also on a GPU machine
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[2]}"
import jax, numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from test_train import sharded_training_run, tiny_config
from vae_jax import data
from vae_jax.experiment import Experiment
assert jax.device_count() == int(sys.argv[2])
results = {}
for num_seeds in (1, 2):
  params, all_reduces, mesh_shape = sharded_training_run(num_seeds)
  results[f"params_{num_seeds}"] = params
  print(f"seeds {num_seeds}: mesh {mesh_shape}, all-reduces {all_reduces}")
np.savez(sys.argv[1], **results)
try:
  Experiment(tiny_config(batch_size=50), data.load_mnist_5k())
except ValueError as error:
  print(error)
"""


def sharded_training_run(num_seeds):
  """10 IWAE steps with a global batch of 80 per seed: the flattened parameters (all seeds),
  the number of all-reduces in the compiled step and the mesh shape."""
  full = data.load_mnist_5k()
  dataset = data.make_dataset(
    (full.train_images[:801], full.train_labels[:801]),  # 801: the rows need padding on 8
    (full.test_images[:80], full.test_labels[:80]),
    num_classes=10,
  )
  config = tiny_config(
    batch_size=80, steps_per_call=5, objective="iwae", num_samples=3, num_seeds=num_seeds
  )
  experiment = Experiment(config, dataset)
  state = experiment.initial_state()
  args = experiment.train_inputs()
  compiled = experiment.train_chunk.lower(state, *args).compile().as_text()
  for _ in range(2):
    state, _ = experiment.train_chunk(state, *args)
  leaves = jax.tree.leaves(jax.device_get(state["params"]))
  params = np.concatenate([np.ravel(leaf) for leaf in leaves])
  return params, compiled.count("all-reduce"), dict(experiment.mesh.shape)


def test_sharded_training_over_eight_devices_equals_one_device(tmp_path):
  """Data parallelism (1 seed: batch split 8 ways) and seeds x data (2 seeds on a 2 x 4
  mesh) give the parameters of a one-device run; an indivisible batch is refused.
  Both run on CPU devices, so that on a GPU machine too they compare like with like."""
  results = {}
  for devices in (8, 1):
    out = str(tmp_path / f"params_{devices}.npz")
    result = helpers.run_python("-c", SHARDED_TRAINING, out, str(devices))
    assert result.returncode == 0, result.stderr[-3000:]
    results[devices] = (result.stdout, np.load(out))
  stdout, sharded = results[8]
  assert "seeds 1: mesh {'seeds': 1, 'data': 8}" in stdout
  assert "seeds 2: mesh {'seeds': 2, 'data': 4}" in stdout
  assert "all-reduces 0" not in stdout  # the gradients really are summed over devices
  assert "batch_size=50 must be divisible by the 8 devices that share each batch" in stdout
  stdout, one_device = results[1]
  assert "seeds 2: mesh {'seeds': 1, 'data': 1}, all-reduces 0" in stdout
  for num_seeds in (1, 2):
    np.testing.assert_allclose(
      sharded[f"params_{num_seeds}"], one_device[f"params_{num_seeds}"], rtol=1e-5, atol=1e-5
    )


MULTI_PROCESS_TRAINING = """
import os, sys
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["JAX_PLATFORMS"] = "cpu"  # simulated CPU devices, also on a GPU machine
devices = 1 if port == "alone" else 2  # the reference: one process, one device
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from test_train import make_small_dataset, multi_process_config
from vae_jax import train
distributed = {} if port == "alone" else dict(
  distributed=True,
  coordinator_address=f"localhost:{port}",
  num_processes=2,
  process_id=process_id,
)
summary = train.train_and_evaluate(
  multi_process_config(**distributed), workdir, dataset=make_small_dataset()
)
import jax
print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")
print(f"training_seconds {summary['training_seconds']:.4f}")
"""


def multi_process_config(**overrides):
  """2 seeds: on 2 processes x 2 devices each seed's state lives on one process only."""
  return tiny_config(num_seeds=2, eval_num_samples=10, eval_iwae_samples=(1, 2), **overrides)


@pytest.mark.skipif(
  sys.platform == "win32", reason="jaxlib has no CPU collectives across processes on Windows"
)
def test_two_processes_train_like_one(small_dataset, tmp_path):
  """jax.distributed on localhost: 2 processes x 2 CPU devices train, checkpoint once per
  epoch, write metrics and the summary once, and end with the parameters of a 1-device run."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  workdir = str(tmp_path / "two_processes")
  processes = [
    helpers.start_python("-c", MULTI_PROCESS_TRAINING, str(i), port, workdir) for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
  assert "process 0 of 2, 4 devices" in outputs[0][0]
  assert "process 1 of 2, 4 devices" in outputs[1][0]
  seconds = [re.search(r"training_seconds (\S+)", out).group(1) for out, _ in outputs]
  assert seconds[0] == seconds[1] and float(seconds[0]) > 0  # process 0's sum, on both

  reference = str(tmp_path / "one_process")
  alone = helpers.run_python("-c", MULTI_PROCESS_TRAINING, "0", "alone", reference)
  assert alone.returncode == 0, alone.stderr[-3000:]
  summary = json.load(open(os.path.join(reference, "summary.json")))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]
  # Restored through the current (1-device) experiment's shardings, as a resume would.
  abstract_state = Experiment(multi_process_config(), small_dataset).abstract_state()
  two, one = [
    checkpoints.Checkpointer(w, max_to_keep=3).restore(abstract_state)[1]
    for w in (workdir, reference)
  ]
  # Summation order differs; Adam's normalized step turns that into ~1e-5 on weights whose
  # gradients are near zero. A wrong batch or seed would differ by many steps of lr = 1e-3.
  for a, b in zip(jax.tree.leaves(two["params"]), jax.tree.leaves(one["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [1, 2]  # written by process 0 alone
  summary_two = json.load(open(os.path.join(workdir, "summary.json")))
  assert "x 4" in summary_two["device"]
  np.testing.assert_allclose(
    summary_two["test_log_likelihood"], summary["test_log_likelihood"], rtol=1e-4
  )
  assert os.path.exists(os.path.join(workdir, "samples.png"))


def test_no_retracing_across_epochs_and_after_restore(small_dataset, tmp_path):
  experiment = Experiment(tiny_config(steps_per_call=4), small_dataset)
  state = _run_chunks(experiment, experiment.initial_state(), 5)  # crosses epochs
  checkpointer = checkpoints.Checkpointer(str(tmp_path), max_to_keep=1)
  checkpointer.save(5, state)
  step, state = checkpointer.restore(experiment.abstract_state())
  assert step == 5
  _run_chunks(experiment, state, 2)
  checkpointer.close()
  assert experiment.train_chunk._cache_size() == 1


def _final_params(workdir):
  config = json.load(open(os.path.join(workdir, "config.json")))
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=3)
  step = checkpointer.latest_step()
  restored = checkpointer.manager.restore(step)
  checkpointer.close()
  return step, config, restored


def interrupt_at_call(monkeypatch, call: int):
  """Makes every Experiment send this process a real SIGTERM during its `call`-th device
  call; returns the original Experiment.__init__ (to undo it with monkeypatch.setattr)."""
  original_init, calls = Experiment.__init__, []

  def init_with_interrupt(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    jitted = self.train_chunk

    def interrupting_chunk(*chunk_args):
      calls.append(None)
      if len(calls) == call:
        os.kill(os.getpid(), signal.SIGTERM)
      return jitted(*chunk_args)

    self.train_chunk = interrupting_chunk

  monkeypatch.setattr(Experiment, "__init__", init_with_interrupt)
  return original_init


@pytest.mark.parametrize(
  "posterior",
  [{}, dict(posterior="iaf", flow_steps=2, analytic_kl=False)],
  ids=["diagonal", "iaf"],
)
def test_interrupted_and_resumed_run_is_bit_identical(
  small_dataset, tmp_path, monkeypatch, posterior
):
  config = tiny_config(
    num_epochs=3, steps_per_call=2, lr_schedule="cosine", kl_warmup_epochs=1, **posterior
  )
  summary = train.train_and_evaluate(config, str(tmp_path / "straight"), dataset=small_dataset)
  assert np.isfinite(summary["test_log_likelihood"])  # IS evaluated, pictures drawn
  assert (tmp_path / "straight" / "latent_scatter.png").exists()

  # A real SIGTERM arrives during the 3rd device call: mid-epoch (4 calls per epoch).
  original_init = interrupt_at_call(monkeypatch, 3)
  interrupted = str(tmp_path / "interrupted")
  with pytest.raises(SystemExit) as exit_info:
    train.train_and_evaluate(config, interrupted, dataset=small_dataset)
  assert exit_info.value.code == 128 + signal.SIGTERM
  checkpointer = checkpoints.Checkpointer(interrupted, max_to_keep=3)
  assert checkpointer.latest_step() == 6  # 3 calls x 2 steps, mid-epoch
  checkpointer.close()
  monkeypatch.setattr(Experiment, "__init__", original_init)
  train.train_and_evaluate(config, interrupted, dataset=small_dataset)  # the same call resumes

  step_a, _, straight = _final_params(str(tmp_path / "straight"))
  step_b, _, resumed = _final_params(interrupted)
  assert step_a == step_b == 24
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_divergence_stops_with_the_step_and_term_and_keeps_the_last_good_state(
  small_dataset, tmp_path
):
  config = tiny_config(learning_rate=1e30, adam_eps=1e-30)
  with pytest.raises(FloatingPointError, match=r"step \d+ \(seed 0\): non-finite .*") as error:
    train.train_and_evaluate(config, str(tmp_path), dataset=small_dataset)
  step, _, state = _final_params(str(tmp_path))
  assert f"last good state (step {step})" in str(error.value)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_two_stochastic_layer_iwae_trains_and_evaluates(small_dataset, tmp_path):
  config = tiny_config(
    stochastic_layers=2,
    hidden=(32,),
    latent_dim=8,
    top_hidden=(16,),
    top_latent_dim=4,
    objective="iwae",
    num_samples=5,
    num_epochs=3,
  )
  summary = train.train_and_evaluate(config, str(tmp_path), dataset=small_dataset)
  lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert lines[-1]["train/loss"] < lines[0]["train/loss"] - 10  # it learns
  assert np.isfinite(summary["test_elbo"]) and np.isfinite(summary["test_log_likelihood"])
  assert summary["test_log_likelihood"] > summary["test_elbo"]
  assert os.path.getsize(os.path.join(tmp_path, "samples.png")) > 0
  with pytest.raises(ValueError, match="Monte Carlo KL"):
    validate_config(tiny_config(stochastic_layers=2, analytic_kl=True))


# --- The entry point -------------------------------------------------------------------------


def _run_entry_point(*args):
  return helpers.run_module("experiments.train", *args)


def test_main_job_smoke_run_writes_everything(tmp_path):
  workdir = str(tmp_path / "run")
  result = _run_entry_point("--config=experiments/configs/smoke.py", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for field in (
    "test_elbo",
    "test_log_likelihood",
    "test_log_likelihood_stderr",
    "binarization",
    "command",
  ):
    assert field in summary, field
  assert summary["test_log_likelihood"] >= summary["test_elbo"] - 1.0  # IS estimate vs the bound
  assert summary["command"].startswith(
    "python -m experiments.train --config=experiments/configs/smoke.py"
  )
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [line["epoch"] for line in lines] == [1, 2]
  assert all(np.isfinite(line["test/elbo"]) for line in lines)
  for name in ("samples.png", "reconstructions.png", "config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  assert "epoch 2/2" in result.stderr


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.num_epochs=many", "num_epochs"),
    ("--config.binarization=none", "Bernoulli likelihood needs binary pixels"),
    ("--config.objective=elbo_plus", "objective='elbo_plus'"),
    ("--config.learning_rate=-1e-3", "learning_rate=-0.001 must be > 0"),
    ("--config.max_checkpoints=0", "max_checkpoints=0 must be >= 1"),
    ("--config.checkpoint_every_epochs=0", "checkpoint_every_epochs=0 must be >= 1"),
    ("--config.hidden=0", "hidden=(0,) must be a non-empty tuple of positive integers"),
    ("--config=experiments/configs/no_such_file.py", "no_such_file.py"),
  ],
)
def test_bad_flags_fail_before_any_work(tmp_path, flag, message):
  workdir = str(tmp_path / "never")
  result = _run_entry_point("--config=experiments/configs/smoke.py", f"--workdir={workdir}", flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr  # one clear line, not a trace
  assert not os.path.exists(workdir)


# --- Research code through the same loop: loss_fn and model ------------------------------


def beta_elbo_with_its_own_metric(model, key, x, labels, step):
  """A researcher's loss: a beta-ELBO (beta = 4) that logs the rate under its own name."""
  terms = model.elbo_terms(key, x, labels)
  rate, distortion = jnp.mean(terms.kl), -jnp.mean(terms.reconstruction)
  return distortion + 4.0 * rate, {"rate": rate, "distortion": distortion}


class TinyLinearVAE(nnx.Module):
  """A researcher's own model, written against the protocol from scratch: one linear
  layer each way, Bernoulli pixels, N(0, I) prior, built from the pure objectives."""

  image_shape = (28, 28, 1)
  num_classes = 0
  has_analytic_kl = True
  integer_data = False

  def __init__(self, latent_dim: int, *, rngs: nnx.Rngs):
    self.latent_dim = latent_dim
    self.encoder = nnx.Linear(784, 2 * latent_dim, rngs=rngs)
    self.decoder = nnx.Linear(latent_dim, 784, rngs=rngs)

  def encode(self, x, labels=None):
    return tuple(jnp.split(self.encoder(x.reshape(x.shape[0], -1)), 2, axis=-1))

  def _log_likelihood(self, x, z):
    return vae_jax.log_bernoulli(x.reshape(x.shape[0], -1), self.decoder(z))

  def decode_mean(self, z, labels=None):
    return jax.nn.sigmoid(self.decoder(z)).reshape(z.shape[0], *self.image_shape)

  def decode_prior(self, key, labels=None, *, num_samples):
    return self.decode_mean(jax.random.normal(key, (num_samples, self.latent_dim)))

  def elbo_terms(
    self, key, x, labels=None, *, num_samples=1, analytic_kl=True, estimator="reparam"
  ):
    return vae_jax.elbo_terms(
      key,
      x,
      self.encode,
      self._log_likelihood,
      num_samples=num_samples,
      analytic_kl=analytic_kl,
      estimator=estimator,
    )

  def log_weights(self, key, x, labels=None, *, num_samples):
    return vae_jax.log_weights(key, x, self.encode, self._log_likelihood, num_samples)

  def iwae(self, key, x, labels=None, *, num_samples, estimator="reparam"):
    return vae_jax.iwae(
      key, x, self.encode, self._log_likelihood, num_samples=num_samples, estimator=estimator
    )


def test_a_loss_fn_trains_through_the_loop_and_logs_its_own_metrics(small_dataset, tmp_path):
  config = tiny_config(num_seeds=2)  # vmapped seeds too
  summary = train.train_and_evaluate(
    config, str(tmp_path), loss_fn=beta_elbo_with_its_own_metric, dataset=small_dataset
  )
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2]
  for record in records:
    assert {"train/loss", "train/rate", "train/distortion"} <= set(record)
    assert "train/elbo" not in record  # the built-in ELBO's metrics are not logged
    np.testing.assert_allclose(
      record["train/loss"], record["train/distortion"] + 4.0 * record["train/rate"], rtol=1e-5
    )
  assert len(records[0]["train/rate_per_seed"]) == 2
  assert np.isfinite(summary["test_log_likelihood"])


def test_a_loss_fn_that_is_not_a_scalar_is_refused(small_dataset, tmp_path):
  def per_example(model, key, x, labels, step):
    return -model.elbo_terms(key, x, labels).reconstruction, {}

  with pytest.raises(ValueError, match=r"'loss' has shape \(50,\).*jnp.mean"):
    train.train_and_evaluate(
      tiny_config(), str(tmp_path), loss_fn=per_example, dataset=small_dataset
    )


def test_a_users_model_trains_and_is_evaluated_through_the_same_paths(small_dataset, tmp_path):
  model = TinyLinearVAE(latent_dim=2, rngs=nnx.Rngs(0))
  summary = train.train_and_evaluate(
    tiny_config(objective="iwae", num_samples=3), str(tmp_path), model=model, dataset=small_dataset
  )
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["train/loss"] < records[0]["train/loss"]  # it learns
  assert summary["test_iwae_50"] <= summary["test_log_likelihood"] + 0.5
  for picture in ("samples", "reconstructions", "manifold", "latent_scatter"):
    assert (tmp_path / f"{picture}.png").exists(), picture


def test_a_model_that_lacks_part_of_the_protocol_is_refused_by_name(small_dataset, tmp_path):
  class EncoderOnly(nnx.Module):
    image_shape, num_classes, has_analytic_kl, integer_data, latent_dim = (28, 28, 1), 0, 1, 0, 2

    def encode(self, x, labels=None):
      return x, x

  with pytest.raises(TypeError, match="lacks decode_mean, decode_prior, elbo_terms, log_weights"):
    train.train_and_evaluate(
      tiny_config(), str(tmp_path), model=EncoderOnly(), dataset=small_dataset
    )
  with pytest.raises(TypeError, match="flax.nnx.Module"):
    train.train_and_evaluate(tiny_config(), str(tmp_path), model=object(), dataset=small_dataset)


@pytest.mark.parametrize("posterior", ["full_covariance", "iaf"])
def test_a_posterior_distribution_trains_through_a_loss_of_ones_own(
  small_dataset, tmp_path, posterior
):
  """encode returns a distribution; the loss takes the DReG gradient, which asks the
  posterior for log q(z) with its parameters held constant."""

  def iwae_dreg(model, key, x, labels, step):
    encode, log_likelihood = model.callables(labels)
    bound = vae_jax.iwae(key, x, encode, log_likelihood, num_samples=3, estimator="dreg")
    return -jnp.mean(bound), {}

  config = tiny_config(posterior=posterior, analytic_kl=False)
  summary = train.train_and_evaluate(
    config, str(tmp_path), loss_fn=iwae_dreg, dataset=small_dataset
  )
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["train/loss"] < records[0]["train/loss"]  # it learns
  assert np.isfinite(summary["test_log_likelihood"]) and summary["test_active_units"] >= 0
