# python -m experiments.train --config=experiments/configs/smoke.py --workdir=/tmp/vae_smoke
"""A seconds-long run of the main job's pipeline, for CI and for checking a set-up."""

from vae_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.hidden = (32,)
  config.latent_dim = 4
  config.num_epochs = 2
  config.eval_num_samples = 50
  config.eval_chunk_size = 25
  config.checkpoint_every_epochs = 1
  return config
