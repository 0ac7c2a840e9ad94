# python -m experiments.train --config=experiments/configs/burda2015_iwae_k50_static.py --workdir=/tmp/burda2015_iwae_k50_static --config.data_dir=DATA_DIR
"""burda2015_iwae_k50.py on statically binarized MNIST (Larochelle & Murray 2011), with its
own 50,000 / 10,000 / 10,000 train / validation / test split. Static binarization
overfits more than the paper's dynamic one, so expect a lower test log-likelihood.
Prepare the data once offline with
`python scripts/prepare_data.py --dataset=binarized_mnist --manual_dir=../shared/data --data_dir=DATA_DIR`.
"""

from experiments.configs import burda2015_iwae_k50


def get_config():
  config = burda2015_iwae_k50.get_config()
  config.dataset = "binarized_mnist"
  config.binarization = "static"
  return config
