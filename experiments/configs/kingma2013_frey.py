# python -m experiments.train --config=experiments/configs/kingma2013_frey.py --workdir=/tmp/kingma2013_frey --config.manual_dir=../shared/data
"""Kingma & Welling 2013 (arXiv:1312.6114), Frey faces: 1,965 greyscale 28x20 faces, a
Gaussian likelihood, 200 tanh hidden units, a 2-D latent space (their Figure 4 manifold),
minibatches of 100. Grey levels in [0, 1], no binarization; the first 1,765 faces
train and the last 200 test (there is no standard split). The decoder emits the mean
and a learned per-pixel log-variance (the paper's decoder emitted a variance per
example and squashed the mean with a sigmoid); Adam instead of Adagrad.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "frey_faces"
  config.binarization = "none"
  config.likelihood = "gaussian_learned_variance"
  config.gaussian_logvar = -3.0  # initial log-variance; grey levels are in [0, 1]
  config.hidden = (200,)
  config.latent_dim = 2
  config.activation = "tanh"
  config.batch_size = 100
  config.learning_rate = 1e-3
  config.num_epochs = 1000
  config.checkpoint_every_epochs = 100
  return config
