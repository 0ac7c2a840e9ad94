"""Why the VampPrior fell behind the standard prior: the runs behind docs/guide/priors.md.

  python scripts/vampprior_diagnosis.py --data_dir=DATA_DIR                # every run
  python scripts/vampprior_diagnosis.py --data_dir=DATA_DIR --runs=collapse/vamp500

Two groups, each run a train_and_evaluate workdir whose summary.json and metrics.jsonl are
kept under --out (results/tomczak2018_diagnosis/ by default; its checkpoints are not),
with saturation.json: how much of the encoder's last tanh layer is saturated at the end:
  - collapse/: full MNIST (dynamic, all 60,000 images), 10 epochs, the KL sampled, the
    IS log-likelihood with 500 samples: the default tanh 200-200-50 network with the
    standard prior, the VampPrior (500 or 50 pseudo-inputs, pseudo-inputs drawn from the
    training images, 10 epochs of KL warm-up), each of Tomczak & Welling's choices alone
    (learning rate 5e-4, He init, gated layers, the log-variance clipped to [-6, 2]), and
    their whole network (with and without AdamNormGrad, and with the standard prior).
  - short_budget/: the embedded 4,000 digits, 100 epochs, 10 of KL warm-up, IS-5000: the
    tanh network and the authors' gated one, with the standard prior and the VampPrior
    (500 and 50 pseudo-inputs; the tanh one also without warm-up).
docs/generate.py renders the tables from the kept files.
"""

import json
import os
import shutil
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from vae_jax import data, train

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
from experiments.configs import tomczak2018_vae_static  # noqa: E402
from vae_jax import state as state_lib
from vae_jax.config import build_config

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir with MNIST prepared.")
_OUT = flags.DEFINE_string(
  "out",
  os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "tomczak2018_diagnosis"
  ),
  "Where each run's summary.json and metrics.jsonl are kept.",
)
_RUNS = flags.DEFINE_list("runs", None, "GROUP/NAME of the runs to train (default: all).")

#: Tomczak & Welling's network: gated 300-300, 40 latents, He init, log-variance in [-6, 2].
AUTHORS = tomczak2018_vae_static.NETWORK
VAMP = dict(prior="vampprior")
GROUPS = {
  "collapse": (
    dict(
      dataset="mnist",
      num_epochs=10,
      analytic_kl=False,
      eval_num_samples=500,
      eval_iwae_samples=(1,),
      checkpoint_every_epochs=100,
    ),
    {
      "std": {},
      "vamp500": VAMP,
      "vamp50": dict(VAMP, prior_components=50),
      "vamp500_datainit": VAMP,  # pseudo-inputs drawn from the training images
      "vamp500_warm": dict(VAMP, kl_warmup_epochs=10),
      "vamp500_lr5e-4": dict(VAMP, learning_rate=5e-4),
      "vamp500_he": dict(VAMP, weight_init="he_normal"),
      "vamp500_gated": dict(VAMP, activation="gated"),
      "vamp500_clamp": dict(VAMP, logvar_range=(-6.0, 2.0)),
      "vamp500_authors": dict(VAMP, **AUTHORS, learning_rate=5e-4),
      "vamp500_authors_normgrad": dict(VAMP, **AUTHORS, learning_rate=5e-4, adam_normgrad=True),
      "std_authors": dict(AUTHORS, learning_rate=5e-4),
    },
  ),
  "short_budget": (
    dict(
      num_epochs=100,
      kl_warmup_epochs=10,
      analytic_kl=False,
      eval_iwae_samples=(1,),
      checkpoint_every_epochs=1000,
    ),
    {
      "std_tanh": {},
      "vamp500_tanh": VAMP,
      "vamp50_tanh": dict(VAMP, prior_components=50),
      "vamp500_tanh_nowarm": dict(VAMP, kl_warmup_epochs=0),
      "std_gated": AUTHORS,
      "vamp500_gated": dict(VAMP, **AUTHORS),
      "vamp50_gated": dict(VAMP, prior_components=50, **AUTHORS),
    },
  ),
}


def pseudo_inputs_from_data(config, dataset):
  """The VAE of config with its 500 pseudo-inputs set to random training images (grey
  levels in [0, 1]) plus N(0, 0.01^2), as the authors' use_training_data_init does."""
  model = state_lib.make_model(config, dataset.image_shape, dataset.num_classes, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  images = dataset.train_images[rng.choice(len(dataset.train_images), 500, replace=False)]
  noisy = images.astype(np.float32) / 255.0 + 0.01 * rng.normal(size=images.shape)
  model.prior.pseudo_inputs[...] = noisy.astype(np.float32)
  return model


def encoder_saturation(model, x) -> float | None:
  """The fraction of the encoder's last hidden tanh layer that is saturated (|h| > 0.99)
  over the images x; None for other networks."""
  layers = getattr(getattr(model, "encoder", None), "layers", None)
  if layers is None or model.encoder.activation is not jnp.tanh:
    return None
  h = x.reshape(x.shape[0], -1)
  for layer in layers[:-1]:
    h = jnp.tanh(layer(h))
  return float(jnp.mean(jnp.abs(h) > 0.99))


def keep_run(workdir: str, keep: str, dataset) -> None:
  """Copies a run's summary.json and metrics.jsonl to keep, with the saturation of its
  encoder on the first 1,000 test images (binarized at 0.5) in saturation.json."""
  os.makedirs(keep, exist_ok=True)
  for file in ("summary.json", "metrics.jsonl"):
    shutil.copy(os.path.join(workdir, file), keep)
  model, _ = train.restore_model(workdir, dataset=dataset)
  x = (dataset.test_images[:1000] > 127).astype(np.float32)
  with open(os.path.join(keep, "saturation.json"), "w") as f:
    json.dump({"saturated_fraction": encoder_saturation(model, jnp.asarray(x))}, f)


def main(argv):
  del argv
  for group, (base, runs) in GROUPS.items():
    for name, overrides in runs.items():
      if _RUNS.value and f"{group}/{name}" not in _RUNS.value:
        continue
      config = build_config({**base, **overrides})
      if config.dataset == "mnist":
        config.data_dir = _DATA_DIR.value
      dataset = data.load_for_config(config)
      model = pseudo_inputs_from_data(config, dataset) if name.endswith("datainit") else None
      workdir = tempfile.mkdtemp(prefix=f"{name}_")
      train.train_and_evaluate(config, workdir, model=model, dataset=dataset)
      keep = os.path.join(_OUT.value, group, name)
      keep_run(workdir, keep, dataset)
      shutil.rmtree(workdir)
      with open(os.path.join(keep, "summary.json")) as f:
        print(f"{group}/{name}: IS {json.load(f)['test_log_likelihood']:.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
