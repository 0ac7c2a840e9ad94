# python -m experiments.train --config=experiments/configs/burda2015_vae_k1.py --workdir=/tmp/burda2015_vae_k1
"""Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders" (arXiv:1509.00519),
Table 1, VAE with one stochastic layer and k=1: 784-200-200-50 tanh, Bernoulli,
batch 100, Adam (b1=0.9, b2=0.999, eps=1e-4), 3^i epochs at 1e-3 * 10^(-i/7) for
i = 0..7 (3,280 epochs), dynamic binarization.

Until the datasets issue lands this runs on the embedded 5,000-digit MNIST, so its
numbers are not the paper's (which uses the 60,000 MNIST training images).
"""

from vae_jax import train


def get_config():
  config = train.get_default_config()
  config.hidden = (200, 200)
  config.latent_dim = 50
  config.activation = "tanh"
  config.objective = "elbo"
  config.num_samples = 1
  config.analytic_kl = False  # the paper's VAE estimates the KL by sampling
  config.adam_eps = 1e-4
  config.lr_schedule = "burda"
  config.num_epochs = sum(3**i for i in range(8))  # 3,280
  config.checkpoint_every_epochs = 50
  return config
