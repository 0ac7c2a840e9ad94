# python -m experiments.train --config=experiments/configs/kingma2016_iaf_mnist.py --workdir=/tmp/iaf_mnist --config.data_dir=DATA_DIR
"""An inverse autoregressive flow posterior (Kingma et al. 2016, arXiv:1606.04934) on
Burda et al. 2015's one-layer model (784-200-200-50, tanh, Bernoulli): two IAF steps,
each a MADE of one hidden layer of 200 units reading the encoder's context, with the
gated update and the order of z reversed between steps. Dynamically binarized MNIST,
all 60,000 training images, ELBO with one sample (the KL sampled), Adam 1e-3, batch 100.
The same budget with --config.posterior=diagonal (and analytic_kl=True),
--config.posterior=full_covariance, or --config.flow_steps=4 compares posteriors
(docs/guide/posteriors.md). Prepare the data once offline with
`python scripts/prepare_data.py --dataset=mnist --manual_dir=PATH --data_dir=DATA_DIR`.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "mnist"
  config.binarization = "dynamic"
  config.validation_size = 0
  config.posterior = "iaf"
  config.flow_steps = 2
  config.analytic_kl = False  # a flow's KL is sampled
  config.num_epochs = 100
  config.checkpoint_every_epochs = 25
  return config
