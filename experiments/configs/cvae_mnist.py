# python -m experiments.train --config=experiments/configs/cvae_mnist.py --workdir=/tmp/cvae_mnist
"""Conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using
Deep Conditional Generative Models"; the MNIST example of Doersch 2016, "Tutorial on
Variational Autoencoders", arXiv:1606.05908): the one-hot digit label feeds both the
encoder and the decoder. samples.png shows one row of samples per class.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.conditional = True
  config.hidden = (500, 500)
  config.latent_dim = 2  # few latents: the label carries the digit identity
  config.activation = "relu"
  config.num_epochs = 100
  return config
