# python -m experiments.train --config=experiments/configs/tomczak2018_vampprior.py --workdir=/tmp/tomczak2018_vampprior --config.data_dir=DATA_DIR
"""Tomczak & Welling 2018, "VAE with a VampPrior" (arXiv:1705.07120), the one-stochastic-
layer VAE on dynamically binarized MNIST: 784-300-300-40, Bernoulli, a VampPrior of 500
pseudo-inputs, batch 100, Adam 5e-4, KL warm-up over 100 epochs, IS-5000 on the test
set. The paper reports about -88.6 nats for this VAE with the standard prior and -85.6
with the VampPrior; --config.prior=standard_normal gives the first (check the paper's
Table 2 before quoting them). Differences from the paper: tanh layers instead of gated
ones, a fixed 2,000 epochs instead of early stopping on a validation split (patience 50),
plain Adam instead of the authors' AdamNormGrad.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "mnist"
  config.binarization = "dynamic"
  config.hidden = (300, 300)
  config.latent_dim = 40
  config.activation = "tanh"
  config.prior = "vampprior"
  config.prior_components = 500
  config.objective = "elbo"
  config.analytic_kl = False  # a VampPrior has no closed-form KL
  config.kl_warmup_epochs = 100
  config.learning_rate = 5e-4
  config.batch_size = 100
  config.num_epochs = 2000
  config.checkpoint_every_epochs = 50
  return config
