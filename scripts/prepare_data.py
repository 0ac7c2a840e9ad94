"""Prepares TFDS datasets offline from local copies of the original files.

  pip install -e '.[prepare]'   # TensorFlow: needed to prepare, not to read
  python scripts/prepare_data.py --dataset=mnist,binarized_mnist \
    --manual_dir=../shared/data --data_dir=~/tensorflow_datasets

--manual_dir is a folder with the original files, or with one subfolder per
dataset (mnist/, binarized_mnist/, ...). Each dataset is written as array_record
files under --data_dir, which vae_jax then reads without TensorFlow
(config.data_dir). A missing or corrupt file is named before anything is written.
"""

import os
import time

from absl import app, flags

from vae_jax import data

_DATASETS = flags.DEFINE_list(
  "dataset", None, f"Datasets to prepare, from {data.TFDS_DATASETS}.", required=True
)
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "Folder with the original files.", required=True
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Where TFDS keeps prepared datasets (TFDS's default when unset)."
)


def main(argv):
  del argv
  unknown = sorted(set(_DATASETS.value) - set(data.TFDS_DATASETS))
  if unknown:
    raise app.UsageError(f"Unknown dataset(s) {unknown}; choose from {data.TFDS_DATASETS}.")
  data_dir = os.path.expanduser(_DATA_DIR.value) if _DATA_DIR.value else None
  for name in _DATASETS.value:
    start = time.perf_counter()
    data.prepare_tfds(name, data_dir=data_dir, manual_dir=_MANUAL_DIR.value)
    print(f"{name}: prepared in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
