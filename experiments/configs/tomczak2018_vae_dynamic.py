# python -m experiments.train --config=experiments/configs/tomczak2018_vae_dynamic.py --workdir=/tmp/tomczak2018_vae_dynamic --config.data_dir=DATA_DIR
"""tomczak2018_vae_static.py on dynamically binarized MNIST as the authors split it: the
first 50,000 training images train (binarized afresh at every step), the last 10,000
validate, and validation and test images are binarized once. Tomczak & Welling 2018's
Table 2, "VAE (L = 1), standard" on dynamic MNIST: -84.50 nats as commonly cited.
"""

from experiments.configs import tomczak2018_vae_static


def dynamic(config):
  """A config of static MNIST moved to the authors' dynamic MNIST."""
  config.dataset = "mnist"
  config.binarization = "dynamic"
  config.validation_size = 10_000
  return config


def get_config():
  return dynamic(tomczak2018_vae_static.get_config())
