# python -m experiments.train --config=experiments/configs/kingma2013_mnist.py --workdir=/tmp/kingma2013_mnist --config.data_dir=DATA_DIR
"""Kingma & Welling 2013, "Auto-Encoding Variational Bayes" (arXiv:1312.6114), MNIST:
one hidden layer of 500 tanh units in encoder and decoder, 20 latents, Bernoulli
likelihood, minibatches of 100, one sample (K=1) with the analytic KL. The paper
used Adagrad; Adam is used here.

MNIST from tensorflow-datasets, dynamically binarized; the last 10,000 training
images are the validation split. Prepare it once offline with
`python scripts/prepare_data.py --dataset=mnist --manual_dir=../shared/data --data_dir=DATA_DIR`.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "mnist"
  config.validation_size = 10_000
  config.hidden = (500,)
  config.latent_dim = 20
  config.activation = "tanh"
  config.likelihood = "bernoulli"
  config.binarization = "dynamic"
  config.num_samples = 1
  config.analytic_kl = True
  config.learning_rate = 1e-3
  config.num_epochs = 300
  return config
