# python -m experiments.train --config=experiments/configs/tomczak2018_vampprior_static.py --workdir=/tmp/tomczak2018_vampprior_static --config.data_dir=DATA_DIR
"""tomczak2018_vae_static.py with a VampPrior of 500 pseudo-inputs (Hardtanh(0, 1) images
that start at N(0.05, 0.01^2), as in the authors' code): Tomczak & Welling 2018's Table 2,
"VAE (L = 1), VampPrior" on static MNIST, -85.57 nats as commonly cited.
"""

from experiments.configs import tomczak2018_vae_static


def get_config():
  config = tomczak2018_vae_static.get_config()
  config.prior = "vampprior"
  config.prior_components = 500
  return config
