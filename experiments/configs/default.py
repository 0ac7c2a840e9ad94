# python -m experiments.train --config=experiments/configs/default.py --workdir=/tmp/vae_default
"""The main job: Burda et al. 2015's one-layer VAE (784-200-200-50, tanh, Bernoulli) on the
embedded 5,000-digit MNIST (4,000 train / 1,000 test, dynamically binarized); no download.
"""

from vae_jax.config import get_default_config


def get_config():
  return get_default_config()
