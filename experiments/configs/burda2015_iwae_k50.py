# python -m experiments.train --config=experiments/configs/burda2015_iwae_k50.py --workdir=/tmp/burda2015_iwae_k50 --config.data_dir=DATA_DIR
"""Burda et al. 2015 (arXiv:1509.00519), Table 1, IWAE with one stochastic layer and k=50:
as burda2015_vae_k1.py, trained on the IWAE bound with 50 importance samples.
The paper reports -84.78 nats (IS-5000).
"""

from experiments.configs import burda2015_vae_k1


def get_config():
  config = burda2015_vae_k1.get_config()
  config.objective = "iwae"
  config.num_samples = 50
  config.estimator = "reparam"
  return config
