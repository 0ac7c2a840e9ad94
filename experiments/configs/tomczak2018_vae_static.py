# python -m experiments.train --config=experiments/configs/tomczak2018_vae_static.py --workdir=/tmp/tomczak2018_vae_static --config.data_dir=DATA_DIR
"""Tomczak & Welling 2018, "VAE with a VampPrior" (arXiv:1705.07120): the one-stochastic-
layer VAE with the standard prior on statically binarized MNIST (Larochelle & Murray's
50,000 / 10,000 / 10,000 split, `binarized_mnist`), as the authors' code
(github.com/jmtomczak/vae_vampprior) trains it: gated dense layers 784-300-300-40 and
back, He-normal weights, the posterior's log-variance clipped to [-6, 2], a Bernoulli
decoder; the ELBO with one sample and the KL sampled, KL warm-up over 100 epochs,
AdamNormGrad at 5e-4, batch 100, at most 2,000 epochs with early stopping on the
validation ELBO (patience 50, warm-up epochs not counted), the best epoch's parameters
evaluated by IS with 5,000 samples. It reproduces Table 2's "VAE (L = 1), standard" on
static MNIST: -88.56 nats as commonly cited; tomczak2018_vampprior_static.py is the
VampPrior beside it.

Differences from the authors' code: KL warm-up rises every step (theirs every epoch:
beta = epoch / 100), their loop stops one epoch later (when 51 epochs have not improved),
and biases start at 0 (theirs at PyTorch's uniform default). Prepare the data once
offline with
`python scripts/prepare_data.py --dataset=binarized_mnist --manual_dir=PATH --data_dir=DATA_DIR`.
"""

from vae_jax.config import get_default_config

#: The authors' network: gated 784-300-300-40 and back, He init, log-variance in [-6, 2]
#: (also what scripts/bench.py --mode=prior and scripts/vampprior_diagnosis.py train).
NETWORK = dict(
  hidden=(300, 300),
  latent_dim=40,
  activation="gated",
  weight_init="he_normal",
  logvar_range=(-6.0, 2.0),
)


def get_config():
  config = get_default_config()
  config.dataset = "binarized_mnist"
  config.binarization = "static"
  config.update(NETWORK)
  config.objective = "elbo"
  config.analytic_kl = False  # as the authors estimate it, for both priors
  config.kl_warmup_epochs = 100
  config.learning_rate = 5e-4
  config.adam_normgrad = True
  config.batch_size = 100
  config.num_epochs = 2000
  config.early_stopping_epochs = 50
  config.checkpoint_every_epochs = 25
  return config
