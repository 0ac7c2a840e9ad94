# python -m experiments.train --config=experiments/configs/fashion_mnist_dlogistic.py --workdir=/tmp/fashion_mnist_dlogistic --config.data_dir=DATA_DIR
"""Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) as 8-bit images under a
discretized logistic mixture likelihood (Salimans et al. 2017, PixelCNN++), reported
in bits/dim. Conv encoder and decoder, 32 latents, no binarization; the last
10,000 training images are the validation split. Prepare the data once offline with
`python scripts/prepare_data.py --dataset=fashion_mnist --manual_dir=../shared/data --data_dir=DATA_DIR`.
"""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.dataset = "fashion_mnist"
  config.validation_size = 10_000
  config.binarization = "none"
  config.likelihood = "dlogistic_mixture"
  config.num_components = 5
  config.architecture = "conv"
  config.conv_channels = (32, 64)
  config.hidden = (256,)
  config.latent_dim = 32
  config.activation = "elu"
  config.num_epochs = 50
  return config
