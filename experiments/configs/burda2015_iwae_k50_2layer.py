# python -m experiments.train --config=experiments/configs/burda2015_iwae_k50_2layer.py --workdir=/tmp/burda2015_iwae_k50_2layer --config.data_dir=DATA_DIR
"""Burda et al. 2015 (arXiv:1509.00519), Table 1, IWAE with two stochastic layers and k=50:
784-200-200-[100]-100-100-[50] tanh (TwoStochasticLayerVAE), otherwise as
burda2015_iwae_k50.py. The paper reports -82.90 nats (IS-5000) on MNIST.

The widths are those of the authors' code (github.com/yburda/iwae, experiments.py:
hidden_units_q = [[200, 200], [100, 100]]), which produced the paper's numbers: two
tanh layers of 200 between x and h1, two of 100 between h1 and h2, in q and in p.
"""

from experiments.configs import burda2015_vae_k1


def get_config():
  config = burda2015_vae_k1.get_config()
  config.objective = "iwae"
  config.num_samples = 50
  config.estimator = "reparam"
  config.stochastic_layers = 2
  config.hidden = (200, 200)
  config.latent_dim = 100
  config.top_hidden = (100, 100)
  config.top_latent_dim = 50
  return config
