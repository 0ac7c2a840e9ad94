# python -m experiments.train --config=experiments/configs/burda2015_vae_k1.py --workdir=/tmp/burda2015_vae_k1 --config.data_dir=DATA_DIR
"""Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders" (arXiv:1509.00519),
Table 1, VAE with one stochastic layer and k=1: 784-200-200-50 tanh, Bernoulli,
batch 20, Adam (b1=0.9, b2=0.999, eps=1e-4), 3^i epochs at 1e-3 * 10^(-i/7) for
i = 0..7 (3,280 epochs), on MNIST from tensorflow-datasets, dynamically binarized,
trained on all 60,000 training images as in the paper (no validation split).
The paper reports -86.76 nats (IS-5000). Prepare the data once offline with
`python scripts/prepare_data.py --dataset=mnist --manual_dir=../shared/data --data_dir=DATA_DIR`.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "mnist"
  config.binarization = "dynamic"
  config.validation_size = 0  # the paper trains on all 60,000
  config.hidden = (200, 200)
  config.latent_dim = 50
  config.activation = "tanh"
  config.objective = "elbo"
  config.num_samples = 1
  config.batch_size = 20
  config.analytic_kl = False  # the paper's VAE estimates the KL by sampling
  config.adam_eps = 1e-4
  config.lr_schedule = "burda"
  config.num_epochs = sum(3**i for i in range(8))  # 3,280
  config.checkpoint_every_epochs = 50
  return config
