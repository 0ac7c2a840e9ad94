"""Tests for vae_jax.evaluation, vae_jax.plots and experiments/evaluate.py."""

import json
import os
import textwrap

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import make_small_dataset, tiny_config

from vae_jax import evaluation, models, plots, report
from vae_jax.experiment import Experiment


def test_evaluation_reports_the_exact_log_likelihood_within_its_standard_error():
  scipy_stats = pytest.importorskip("scipy.stats")
  vae, mean_x, cov_x = helpers.two_layer_linear_gaussian()
  x_flat = np.random.default_rng(2).multivariate_normal(mean_x, cov_x, size=24)
  exact = scipy_stats.multivariate_normal(mean_x, cov_x).logpdf(x_flat)
  x = jnp.asarray(x_flat.reshape(24, 2, 3, 1), jnp.float32)
  labels = jnp.zeros(24, jnp.int32)
  examples = jax.device_get(
    jax.jit(
      lambda x, labels: evaluation.evaluate_examples(
        vae, x, labels, jax.random.key(0), batch_size=10, num_samples=5000, chunk_size=1000
      )
    )(x, labels)
  )
  # Per example: within 5 Monte Carlo standard errors of the truth.
  error = examples["log_likelihood"] - exact
  assert np.all(np.abs(error) < 5 * examples["log_likelihood_mc_stderr"] + 1e-3), error
  summary = evaluation.summarize(examples, num_pixels=6, bits_per_dim=False)
  # The reported mean: within its standard error (over examples) of the exact mean.
  assert abs(summary["log_likelihood"] - exact.mean()) < summary["log_likelihood_stderr"]
  # The bounds climb towards it with K and stay below it.
  assert summary["iwae_1"] < summary["iwae_5"] < summary["iwae_50"] < exact.mean() + 0.01
  assert summary["num_examples"] == 24 and len(summary["kl_per_dimension"]) == 5


def test_active_units_counts_the_dimensions_that_vary_with_x():
  vae = models.VAE(
    image_shape=(4, 4, 1), latent_dim=6, hidden=(), likelihood="bernoulli", rngs=nnx.Rngs(0)
  )
  layer = vae.encoder.layers[0]  # x -> (mean, logvar), one linear layer
  kernel = np.array(layer.kernel[...])
  kernel[:, [0, 2, 5]] = 0.0  # these means are the bias, whatever x is: dead units
  kernel[:, [1, 3, 4]] *= 10.0
  layer.kernel[...] = jnp.asarray(kernel)
  x = (jax.random.uniform(jax.random.key(0), (200, 4, 4, 1)) > 0.5).astype(jnp.float32)
  examples = jax.device_get(
    evaluation.evaluate_examples(
      vae,
      x,
      jnp.zeros(200, jnp.int32),
      jax.random.key(1),
      batch_size=50,
      num_samples=10,
      chunk_size=10,
      iwae_samples=(2,),
    )
  )
  summary = evaluation.summarize(examples, num_pixels=16, bits_per_dim=True)
  assert summary["active_units"] == 3
  activity = np.asarray(summary["latent_activity"])
  assert np.all(activity[[0, 2, 5]] < 1e-10) and np.all(activity[[1, 3, 4]] > 0.01)
  # Bits/dim: -nats / (pixels * ln 2).
  np.testing.assert_allclose(
    summary["log_likelihood_bits_per_dim"], -summary["log_likelihood"] / (16 * np.log(2))
  )


@pytest.fixture(scope="module")
def small_models():
  plain = models.VAE(image_shape=(28, 28, 1), latent_dim=2, hidden=(16,), rngs=nnx.Rngs(0))
  conditional = models.VAE(
    image_shape=(28, 28, 1), latent_dim=3, hidden=(16,), num_classes=10, rngs=nnx.Rngs(0)
  )
  x = (jax.random.uniform(jax.random.key(0), (16, 28, 28, 1)) > 0.5).astype(jnp.float32)
  return plain, conditional, x


def _check_picture(picture, height, width, channels=1):
  assert picture.dtype == np.uint8 and picture.shape == (height, width, channels)
  assert picture.std() > 0  # not blank


def test_picture_functions(small_models):
  plain, conditional, x = small_models
  labels = jnp.arange(16) % 10
  # Grids are scaled 2x (28-pixel digits shown 56 pixels tall), with 1-pixel (2x) padding.
  _check_picture(plots.prior_samples(plain, jax.random.key(0), rows=3, columns=4), 176, 234)
  rows = plots.prior_samples(
    conditional, jax.random.key(0), rows=10, columns=2, labels=jnp.repeat(jnp.arange(10), 2)
  )
  _check_picture(rows, 582, 118)
  _check_picture(plots.reconstructions(plain, x, x, columns=8), 234, 466)
  _check_picture(plots.reconstructions(conditional, x, x, labels, columns=8), 234, 466)
  _check_picture(plots.latent_manifold(plain, size=5), 292, 292)
  with pytest.raises(ValueError, match="2-D latent"):
    plots.latent_manifold(conditional)
  _check_picture(plots.interpolations(plain, x[:3], x[3:6], steps=7), 176, 408)
  for means in (
    np.random.default_rng(0).normal(size=(50, 2)),
    np.ones((50, 5)) * np.arange(50)[:, None],
  ):
    scatter = plots.latent_scatter(means, np.arange(50) % 10)
    assert scatter.dtype == np.uint8 and scatter.ndim == 3 and scatter.shape[-1] == 3
  for num_epochs in (3, plots.LOG_SCALE_EPOCHS):  # a linear, then a log epoch axis
    records = [
      {"epoch": e, "train/loss": 90 + 100 / e, "test/elbo": -91 - 100 / e}
      for e in range(1, num_epochs + 1)
    ]
    curves = plots.training_curves(records)
    assert curves.dtype == np.uint8 and curves.shape[-1] == 3 and curves.std() > 0
  # A caption longer than the plot is wide wraps: nothing reaches the picture's edges.
  caption = "binarized_mnist, static binarization, epoch 242 (the best of 292), test ELBO -90.8"
  for picture in (
    plots.training_curves(records, title=caption * 2),
    plots.latent_scatter(means, title=caption * 2),
  ):
    assert picture[:, :2].min() == 255 and picture[:, -2:].min() == 255


def test_image_grids_scale_up_with_nearest_neighbour():
  images = np.random.default_rng(0).uniform(size=(2, 20, 10, 1))
  grid = plots.image_grid(images, columns=2, padding=0)  # 20 pixels tall: 3x
  assert grid.shape == (60, 60, 1)
  np.testing.assert_array_equal(
    grid[::3, ::3], plots.image_grid(images, columns=2, padding=0, scale=1)
  )
  np.testing.assert_array_equal(grid[1::3, 2::3], grid[::3, ::3])  # each pixel a 3x3 block


def test_annotate_writes_a_title_and_one_label_per_row():
  picture = np.full((100, 50, 1), 128, np.uint8)
  out = plots.annotate(picture, "a title\nsecond line", row_labels=["first", "second"])
  assert out.dtype == np.uint8 and out.shape[-1] == 3
  top, left = out.shape[0] - 100, out.shape[1] - 50
  assert top >= 40 and left > 20  # two title lines; a label column
  np.testing.assert_array_equal(out[top:, left:, 0], 128)  # the picture, unchanged
  assert (out[:top] < 128).any()  # dark title text on white
  for row in range(2):  # a label beside each half of the picture
    assert (out[top + 50 * row : top + 50 * (row + 1), :left] < 128).any()
  assert (out[top:, :left] == 255).mean() > 0.5  # and white around them


def test_manifold_walks_the_gaussian_quantiles(small_models):
  """The grid's corners decode the extreme quantiles: top-left is (low z1, high z2)."""
  plain, _, _ = small_models
  calls = []

  class Recorder:
    latent_dim, has_analytic_kl = 2, True

    def decode_mean(self, z, labels=None):
      calls.append(np.asarray(z))
      return jnp.zeros((z.shape[0], 2, 2, 1)) + 0.5

  plots.latent_manifold(Recorder(), size=4)
  z = calls[0].reshape(4, 4, 2)
  quantile = float(jax.scipy.special.ndtri(0.875))
  np.testing.assert_allclose(z[0, 0], [-quantile, quantile], rtol=1e-5)
  np.testing.assert_allclose(z[-1, -1], [quantile, -quantile], rtol=1e-5)


EIGHT_DEVICES = textwrap.dedent(
  """
  import os
  os.environ["JAX_PLATFORMS"] = "cpu"  # 8 simulated CPU devices, also on a GPU machine
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax, jax.numpy as jnp, numpy as np
  from flax import nnx
  from vae_jax import evaluation, models
  assert jax.device_count() == 8
  vae = models.VAE(image_shape=(28, 28, 1), latent_dim=3, hidden=(16,), rngs=nnx.Rngs(0))
  x = (jax.random.uniform(jax.random.key(0), (100, 28, 28, 1)) > 0.5).astype(jnp.float32)
  labels = jnp.zeros(100, jnp.int32)
  kwargs = dict(batch_size=5, num_samples=60, chunk_size=20)
  def run(devices):
    fn = lambda x, labels: evaluation.evaluate_examples_on_devices(
        vae, x, labels, jax.random.key(3), devices=devices, **kwargs)
    return jax.device_get(jax.jit(fn)(x, labels))
  one, eight = run(jax.devices()[:1]), run(jax.devices())
  for name in one:
    np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)
  print("same on 8 devices", sorted(one))
  """
)


def test_evaluation_over_eight_devices_equals_one_device():
  result = helpers.run_python("-c", EIGHT_DEVICES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "same on 8 devices" in result.stdout


def test_evaluate_entry_point_writes_every_field(tmp_path):
  workdir = str(tmp_path / "run")
  trained = helpers.run_module(
    "experiments.train",
    "--config=experiments/configs/smoke.py",
    f"--workdir={workdir}",
    "--config.latent_dim=2",
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  result = helpers.run_module(
    "experiments.evaluate", f"--workdir={workdir}", "--num_samples=40", "--iwae_samples=1,5"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, "eval.json")))
  for field in (
    "test_elbo",
    "test_elbo_stderr",
    "test_iwae_1",
    "test_iwae_5",
    "test_iwae_5_stderr",
    "test_log_likelihood",
    "test_log_likelihood_stderr",
    "test_log_likelihood_mc_stderr",
    "test_active_units",
    "test_kl_per_dimension",
    "test_latent_activity",
    "binarization",
    "binarization_seed",
    "log_likelihood_num_samples",
    "iwae_samples",
    "command",
    "steps",
  ):
    assert field in report, field
  assert report["log_likelihood_num_samples"] == 40 and report["iwae_samples"] == [1, 5]
  assert len(report["test_kl_per_dimension"]) == 2
  assert report["test_elbo"] <= report["test_iwae_5"] + 1.0 <= report["test_log_likelihood"] + 2.0
  assert "| log_likelihood |" in open(os.path.join(workdir, "eval.md")).read()
  for name in (
    "samples",
    "reconstructions",
    "interpolations",
    "latent_scatter",
    "manifold",
    "training_curves",
  ):
    assert os.path.getsize(os.path.join(workdir, f"{name}.png")) > 0, name
    assert f'src="{name}.png"' in open(os.path.join(workdir, "index.html")).read(), name
  # What a person reads at the end: the numbers with their errors, and where the files are.
  assert "test log p(x), IS with 40 samples" in result.stdout
  assert f"{report['test_log_likelihood']:.2f} ± " in result.stdout
  assert "index.html" in result.stdout
  # The training run's summary carries the same evaluation.
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert "test_iwae_50" in summary and "test_active_units" in summary


def test_eval_md_shows_counts_as_integers_bounds_with_their_errors_and_rounded_settings():
  page = report.markdown(
    {
      "dataset": "mnist",
      "test_num_examples": 10000,
      "test_elbo": -92.40173,
      "test_elbo_stderr": 0.25530,
      "test_active_units": 23,
      "iwae_samples": [1, 5, 50],
      "evaluation_seconds": 180.56638677300361,
    },
    "test",
  )
  assert "| num_examples | 10,000 |" in page
  assert "| elbo | -92.402 ± 0.255 |" in page
  assert "| active_units | 23 |" in page
  # The settings read as index.html's do: seconds rounded, absent ones left out.
  assert "- iwae_samples: [1, 5, 50]\n" in page
  assert "- evaluation_seconds: 180.6\n" in page
  assert "command" not in page


def test_evaluation_in_blocks_equals_one_pass():
  """The final evaluation goes through in blocks (for its progress bar); the result is
  that of one pass over the whole set."""
  dataset = make_small_dataset()  # 100 test images: ten blocks of 10
  experiment = Experiment(tiny_config(eval_batch_size=10, eval_iwae_samples=(1, 3)), dataset)
  params = experiment.initial_state()["params"]
  x, labels = experiment.eval_inputs(dataset.test_images, dataset.test_labels)
  (blocked,) = report.full_evaluation(experiment, params, {}, x, labels)
  one_pass = experiment.evaluate_examples(
    experiment.take_member(params, 0), {}, x, labels, 0, block_size=100
  )
  expected = evaluation.summarize(jax.device_get(one_pass), num_pixels=784, bits_per_dim=False)
  assert sorted(blocked) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(blocked[name], value, rtol=1e-6, err_msg=name)


def test_pictures_show_the_same_examples_across_classes():
  labels = np.array([3, 1, 1, 0, 3, 2, 0, 1, 2, 2, 0])
  shown = report.display_examples(labels, 4, 8)
  np.testing.assert_array_equal(labels[shown], [0, 1, 2, 3, 0, 1, 2, 3])
  np.testing.assert_array_equal(shown, [3, 1, 5, 0, 6, 2, 8, 4])  # each class in order
  np.testing.assert_array_equal(report.display_examples(labels, 0, 3), [0, 5, 10])
