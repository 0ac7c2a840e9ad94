# python -m experiments.train --config=experiments/configs/tomczak2018_vampprior_dynamic.py --workdir=/tmp/tomczak2018_vampprior_dynamic --config.data_dir=DATA_DIR
"""tomczak2018_vampprior_static.py on the authors' dynamic MNIST (see
tomczak2018_vae_dynamic.py): Tomczak & Welling 2018's Table 2, "VAE (L = 1), VampPrior" on
dynamic MNIST, -82.38 nats as commonly cited.
"""

from experiments.configs import tomczak2018_vae_dynamic, tomczak2018_vampprior_static


def get_config():
  return tomczak2018_vae_dynamic.dynamic(tomczak2018_vampprior_static.get_config())
