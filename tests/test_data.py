"""Tests for vae_jax.data: TFDS loading (mocked and real), Frey faces, binarization, bad input."""

import glob
import os
import shutil
from unittest import mock

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data
from vae_jax.config import build_config, validate_config
from vae_jax.experiment import Experiment

SHARED_DATA = os.environ.get(
  "VAE_JAX_SHARED_DATA", os.path.join(helpers.REPO, "..", "shared", "data")
)
needs_shared_data = pytest.mark.skipif(
  not os.path.isdir(SHARED_DATA),
  reason=f"no copies of the original files at {SHARED_DATA} (set VAE_JAX_SHARED_DATA)",
)


def _needs_tensorflow():
  pytest.importorskip("tensorflow", reason="preparing TFDS datasets needs TensorFlow (.[prepare])")


# --- TFDS loading paths, with tfds.testing.mock_data ---------------------------------------


@pytest.mark.parametrize(
  "name, image_shape, num_classes, has_validation",
  [
    ("mnist", (28, 28, 1), 10, False),
    ("binarized_mnist", (28, 28, 1), 0, True),
    ("fashion_mnist", (28, 28, 1), 10, False),
    ("cifar10", (32, 32, 3), 10, False),
    ("omniglot", (28, 28, 1), 1623, False),
  ],
)
def test_tfds_loading_paths(tmp_path, name, image_shape, num_classes, has_validation):
  _needs_tensorflow()
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.data_sources.array_record import ArrayRecordDataSource

  def read_one_by_one(source, keys):
    return [source[i] for i in keys]

  # mock_data's stand-in record reader cannot read in batches (its __getitems__ is given
  # no `self`, TFDS 4.9.10), so batched reads go through its one-record reads here.
  with (
    tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE),
    mock.patch.object(ArrayRecordDataSource, "__getitems__", read_one_by_one),
  ):
    dataset = data.load(name, data_dir=str(tmp_path), validation_size=10)
  assert dataset.image_shape == image_shape and dataset.num_classes == num_classes
  for images, labels in [
    (dataset.train_images, dataset.train_labels),
    (dataset.validation_images, dataset.validation_labels),
    (dataset.test_images, dataset.test_labels),
  ]:
    assert images.dtype == np.uint8 and labels.dtype == np.int32 and len(images) == len(labels)
  # A standard validation split is used as it is; otherwise the last 10 training images.
  assert len(dataset.train_images) == (40 if has_validation else 30)
  assert len(dataset.validation_images) == (40 if has_validation else 10)


# --- Real files from ../shared/data ------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_data_dir(tmp_path_factory):
  """mnist and binarized_mnist prepared once from the original files."""
  if not os.path.isdir(SHARED_DATA):
    pytest.skip(f"no copies of the original files at {SHARED_DATA}")
  _needs_tensorflow()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in ("mnist", "binarized_mnist"):
    data.prepare_tfds(name, data_dir=data_dir, manual_dir=SHARED_DATA)
  return data_dir


def test_real_mnist(prepared_data_dir):
  dataset = data.load("mnist", data_dir=prepared_data_dir, validation_size=10_000)
  assert dataset.train_images.shape == (50_000, 28, 28, 1)
  assert dataset.validation_images.shape == dataset.test_images.shape == (10_000, 28, 28, 1)
  all_train = np.concatenate([dataset.train_images, dataset.validation_images])
  all_labels = np.concatenate([dataset.train_labels, dataset.validation_labels])
  # MNIST's published per-class counts and its mean grey level, 33.32 / 255.
  np.testing.assert_array_equal(
    np.bincount(all_labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  )
  np.testing.assert_array_equal(
    np.bincount(dataset.test_labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  )
  assert abs(all_train.mean() - 33.318) < 0.01
  assert all_train.min() == 0 and all_train.max() == 255


def test_a_damaged_prepared_file_names_its_folder_and_the_command(prepared_data_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(prepared_data_dir, data_dir)
  (record,) = glob.glob(str(data_dir / "mnist" / "*" / "mnist-test.array_record*"))
  with open(record, "r+b") as f:
    f.truncate(os.path.getsize(record) // 2)
  with pytest.raises(ValueError, match="Could not read 'mnist' prepared in .*mnist") as error:
    data.load("mnist", data_dir=str(data_dir))
  assert "prepare it again with: python scripts/prepare_data.py --dataset=mnist" in str(error.value)


def test_real_binarized_mnist_equals_the_amat_files(prepared_data_dir):
  dataset = data.load("binarized_mnist", data_dir=prepared_data_dir, validation_size=10_000)
  assert dataset.train_images.shape == (50_000, 28, 28, 1)  # its own split, nothing held out
  assert dataset.validation_images.shape == dataset.test_images.shape == (10_000, 28, 28, 1)
  assert dataset.num_classes == 0
  amat = np.loadtxt(os.path.join(SHARED_DATA, "binarized_mnist", "binarized_mnist_test.amat"))
  # The same images, in some order: compare the sorted rows.
  ours = np.sort((dataset.test_images.reshape(10_000, -1) // 255).astype(np.int64), axis=0)
  np.testing.assert_array_equal(ours, np.sort(amat.astype(np.int64), axis=0))
  # A Bernoulli draw keeps the mean: the fraction of 1s is MNIST's mean grey level, 0.1307.
  assert abs(dataset.train_images.mean() / 255 - 0.1307) < 0.001


@needs_shared_data
def test_frey_faces():
  dataset = data.load("frey_faces", manual_dir=SHARED_DATA)
  assert dataset.train_images.shape == (1765, 28, 20, 1)
  assert dataset.test_images.shape == (200, 28, 20, 1)
  assert dataset.num_classes == 0 and len(dataset.validation_images) == 0
  faces = np.concatenate([dataset.train_images, dataset.test_images]).astype(np.float64)
  assert 0 <= faces.min() and faces.max() <= 255 and 80 < faces.mean() < 160
  # Upright faces: neighbouring rows are far more alike than rows of the transposed reading.
  rows = np.abs(np.diff(faces[..., 0], axis=1)).mean()
  transposed = np.abs(np.diff(faces[..., 0].reshape(-1, 20, 28), axis=1)).mean()
  assert rows < 0.7 * transposed


# --- Binarization ---------------------------------------------------------------------------


def test_dynamic_binarization_is_fresh_per_epoch_and_identical_for_the_same_seed():
  experiment = Experiment(build_config(dict(hidden=(8,), latent_dim=2)), data.load_mnist_5k())
  images = jnp.asarray(data.load_mnist_5k().train_images[:200])
  step_key = jax.random.key(7)
  first, _ = experiment.step_inputs(images, step_key, 3)
  again, _ = experiment.step_inputs(images, step_key, 3)
  next_epoch, _ = experiment.step_inputs(images, step_key, 3 + experiment.steps_per_epoch)
  np.testing.assert_array_equal(first, again)
  assert set(np.unique(first)) == {0.0, 1.0}
  changed = np.mean(first != next_epoch)
  # Pixels with grey level p differ between two draws with probability 2p(1 - p).
  grey = np.asarray(images, np.float64) / 255
  expected = np.mean(2 * grey * (1 - grey))
  assert abs(changed - expected) < 0.1 * expected
  # The mean of many draws is the grey image.
  draws = [experiment.step_inputs(images, step_key, t)[0] for t in range(200)]
  assert np.abs(np.mean(draws, axis=0) - grey).max() < 0.15


def test_evaluation_splits_are_binarized_once_with_a_fixed_seed():
  images = data.load_mnist_5k().test_images[:100]
  a = data.split_inputs(images, binarization="dynamic", integer_data=False)
  b = data.split_inputs(images, binarization="dynamic", integer_data=False)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
    data.split_inputs(images, binarization="none", integer_data=True), images
  )


# --- Bad input --------------------------------------------------------------------------------


def test_unprepared_dataset_offline_says_which_files_and_which_command(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  message = str(error.value)
  assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
  assert "python scripts/prepare_data.py --dataset=fashion_mnist" in message
  assert "Traceback" not in message


def test_missing_original_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="lacks binarized_mnist_valid.amat"):
    (tmp_path / "binarized_mnist_train.amat").write_text("")
    (tmp_path / "binarized_mnist_test.amat").write_text("")
    data.check_manual_files("binarized_mnist", str(tmp_path))


@needs_shared_data
def test_truncated_file_fails_its_checksum_naming_the_file(tmp_path):
  for name in data.MANUAL_FILES["mnist"]:
    shutil.copy(os.path.join(SHARED_DATA, "mnist", name), tmp_path / name)
  truncated = tmp_path / "t10k-labels-idx1-ubyte.gz"
  truncated.write_bytes(truncated.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"Checksum error: .*t10k-labels-idx1-ubyte.gz"):
    data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
  assert not (tmp_path / "tfds").exists()  # nothing was written


def test_static_binarization_of_grey_images_is_refused():
  experiment_config = build_config(dict(dataset="binarized_mnist", binarization="static"))
  with pytest.raises(ValueError, match="have grey levels: use binarization='dynamic'"):
    Experiment(experiment_config, data.load_mnist_5k())
  with pytest.raises(ValueError, match="'static' is the binarization of"):
    validate_config(build_config(dict(binarization="static")))


def test_grey_pixels_into_a_bernoulli_likelihood_are_refused():
  with pytest.raises(ValueError, match="Bernoulli likelihood needs binary pixels"):
    validate_config(build_config(dict(binarization="none")))


def test_images_that_are_not_uint8_are_refused():
  grey = np.random.default_rng(0).uniform(size=(10, 28, 28, 1))
  with pytest.raises(ValueError, match="must be uint8 .* scale floats in \\[0, 1\\] by 255"):
    data.make_dataset((grey, None), (grey, None), num_classes=0)
  with pytest.raises(ValueError, match="labels must lie in"):
    images = np.zeros((10, 28, 28, 1), np.uint8)
    data.make_dataset((images, np.full(10, 12)), (images, None), num_classes=10)


def test_conditional_model_on_unlabelled_data_is_refused():
  images = np.zeros((200, 28, 28, 1), np.uint8)
  unlabelled = data.make_dataset((images, None), (images, None), num_classes=0)
  with pytest.raises(ValueError, match="conditional=True needs class labels"):
    Experiment(build_config(dict(conditional=True)), unlabelled)
