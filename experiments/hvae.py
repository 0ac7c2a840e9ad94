"""Tomczak & Welling 2018's two-level HVAE, a model of one's own through the protocol.

  python -m experiments.hvae --config=experiments/configs/tomczak2018_vampprior_static.py \
      --workdir=DIR --config.data_dir=DATA_DIR

The model is not built into vae_jax: it is what a researcher would write, an NNX module
that implements vae_jax.models.LatentVariableModel and trains through
train_and_evaluate(config, workdir, model=...) with everything the built-in models get.
As in the authors' code (models/HVAE_2level.py of github.com/jmtomczak/vae_vampprior):

  q(z2 | x) q(z1 | x, z2)   and   p(z2) p(z1 | z2) p(x | z1, z2),

every conditional a diagonal Gaussian (log-variance clipped to [-6, 2]) or, for x,
Bernoulli, from gated dense layers of 300 units with He-normal weights; z1 and z2 have
config.latent_dim dimensions each, and p(z2) is the VampPrior of config.prior_components
pseudo-inputs through q(z2 | x) (config.prior="vampprior") or N(0, I). The config says how
to train (objective, warm-up, optimizer, early stopping, data); of the model's fields only
latent_dim, prior and prior_components are read. The ELBO's KL is sampled. With the
tomczak2018_*_static.py configs it is Table 2's "HVAE (L = 2)" on static MNIST: -83.19
nats with the VampPrior, -86.05 with the standard prior (--config.prior=standard_normal),
as commonly cited. `vae_jax.train.restore_model(workdir, model=TwoLevelVAE(...))` reloads
a trained one, and `python -m experiments.evaluate --workdir=DIR
--model=experiments.hvae:model_for_config` re-evaluates it.
"""

import shlex
import sys

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

import vae_jax
from experiments import cli
from vae_jax import data, networks, objectives, priors, train

HIDDEN = 300  #: units of every gated layer, as in the authors' code
LOGVAR_RANGE = (-6.0, 2.0)  #: their Hardtanh on every log-variance


class _Gaussian(nnx.Module):
  """Gated layers, then a linear mean and a clipped log-variance."""

  def __init__(self, sizes, latent_dim, *, rngs):
    he = networks.WEIGHT_INITS["he_normal"]
    self.layers = nnx.List(
      [networks.GatedDense(a, b, kernel_init=he, rngs=rngs) for a, b in zip(sizes, sizes[1:])]
    )
    self.out = nnx.Linear(sizes[-1], 2 * latent_dim, kernel_init=he, rngs=rngs)

  def __call__(self, h):
    for layer in self.layers:
      h = layer(h)
    mean, logvar = jnp.split(self.out(h), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class _Joint(nnx.Module):
  """Two inputs, each through a gated layer, then a gated layer on both: [..., HIDDEN]."""

  def __init__(self, size_a, size_b, *, rngs):
    he = networks.WEIGHT_INITS["he_normal"]
    self.a = networks.GatedDense(size_a, HIDDEN, kernel_init=he, rngs=rngs)
    self.b = networks.GatedDense(size_b, HIDDEN, kernel_init=he, rngs=rngs)
    self.joint = networks.GatedDense(2 * HIDDEN, HIDDEN, kernel_init=he, rngs=rngs)

  def __call__(self, a, b):
    h_a, h_b = self.a(a), self.b(b)
    h_a = jnp.broadcast_to(h_a, h_b.shape)  # x is read once for the K samples of z2
    return self.joint(jnp.concatenate([h_a, h_b], axis=-1))


class TwoLevelVAE(nnx.Module):
  """The two-level HVAE: encode is q(z2 | x), decode_mean reads z2 (z1 at p(z1 | z2)'s
  mean), and the objectives sample z2, then z1."""

  num_classes = 0
  has_analytic_kl = False
  integer_data = False

  def __init__(
    self,
    *,
    image_shape=(28, 28, 1),
    latent_dim=40,
    prior="vampprior",
    prior_components=500,
    rngs: nnx.Rngs,
  ):
    self.image_shape = tuple(image_shape)
    self.latent_dim = latent_dim
    pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
    he = networks.WEIGHT_INITS["he_normal"]
    self.q_z2 = _Gaussian([pixels, HIDDEN, HIDDEN], latent_dim, rngs=rngs)
    self.q_z1 = _Joint(pixels, latent_dim, rngs=rngs)
    self.q_z1_out = _Gaussian([HIDDEN], latent_dim, rngs=rngs)
    self.p_z1 = _Gaussian([latent_dim, HIDDEN, HIDDEN], latent_dim, rngs=rngs)
    self.p_x = _Joint(latent_dim, latent_dim, rngs=rngs)
    self.p_x_out = nnx.Linear(HIDDEN, pixels, kernel_init=he, rngs=rngs)
    self.prior = priors.make_prior(
      prior,
      latent_dim=latent_dim,
      image_shape=self.image_shape,
      num_components=prior_components,
      rngs=rngs,
    )

  def encode(self, x, labels=None):
    """q(z2 | x): (mean, logvar), each [batch, latent_dim]."""
    return self.q_z2(x.reshape(x.shape[0], -1))

  def _logits(self, z1, z2):
    return self.p_x_out(self.p_x(z1, z2))

  def decode_mean(self, z2, labels=None):
    """Mean images of p(x | z1, z2) with z1 at the mean of p(z1 | z2)."""
    z1, _ = self.p_z1(z2)
    return jax.nn.sigmoid(self._logits(z1, z2)).reshape(z2.shape[0], *self.image_shape)

  def decode_prior(self, key, labels=None, *, num_samples):
    """Mean images of p(x | z1, z2) at ancestral draws: z2 from the prior, z1 from p(z1 | z2)."""
    key_z2, key_z1 = jax.random.split(key)
    z2 = self.prior.sample(key_z2, num_samples, self.encode)
    z1 = vae_jax.reparameterize(key_z1, *self.p_z1(z2), 1)[0]
    return jax.nn.sigmoid(self._logits(z1, z2)).reshape(num_samples, *self.image_shape)

  def _terms(self, key, x, num_samples):
    """log p(x | z1, z2) and log q(z1, z2 | x) - log p(z1, z2) at K samples: each [K, batch]."""
    x_flat = x.reshape(x.shape[0], -1)
    key_z2, key_z1 = jax.random.split(key)
    q2_mean, q2_logvar = self.q_z2(x_flat)
    z2 = vae_jax.reparameterize(key_z2, q2_mean, q2_logvar, num_samples)  # [K, B, Z]
    q1_mean, q1_logvar = self.q_z1_out(self.q_z1(x_flat, z2))
    z1 = vae_jax.reparameterize(key_z1, q1_mean, q1_logvar, 1)[0]
    p1_mean, p1_logvar = self.p_z1(z2)
    log_px = vae_jax.log_bernoulli(x_flat, self._logits(z1, z2))
    log_q = vae_jax.log_normal(z2, q2_mean, q2_logvar) + vae_jax.log_normal(z1, q1_mean, q1_logvar)
    log_p = self.prior.log_prob(z2, self.encode) + vae_jax.log_normal(z1, p1_mean, p1_logvar)
    return log_px, log_q - log_p

  def log_weights(self, key, x, labels=None, *, num_samples):
    """log p(x, z1, z2) - log q(z1, z2 | x) for K samples, [K, batch]."""
    log_px, log_q_minus_log_p = self._terms(key, x, num_samples)
    return log_px - log_q_minus_log_p

  def iwae(self, key, x, labels=None, *, num_samples, estimator="reparam"):
    """The IWAE bound, [batch], with its reparameterization gradient."""
    _check_estimator(estimator, analytic_kl=False)
    return objectives.iwae_bound(self.log_weights(key, x, num_samples=num_samples))

  def elbo_terms(
    self, key, x, labels=None, *, num_samples=1, analytic_kl=False, estimator="reparam"
  ):
    """E_q log p(x | z1, z2) and the sampled KL(q(z1, z2 | x) || p(z1, z2)), per example."""
    _check_estimator(estimator, analytic_kl)
    log_px, log_q_minus_log_p = self._terms(key, x, num_samples)
    return objectives.ElboTerms(jnp.mean(log_px, 0), jnp.mean(log_q_minus_log_p, 0), None)


def _check_estimator(estimator, analytic_kl):
  if estimator != "reparam" or analytic_kl:
    raise ValueError(
      "TwoLevelVAE trains with reparameterization gradients and a sampled KL: set "
      "estimator='reparam' and analytic_kl=False."
    )


def model_for_config(config, dataset) -> TwoLevelVAE:
  """The HVAE of config's latent_dim, prior and prior_components, for dataset's images."""
  return TwoLevelVAE(
    image_shape=dataset.image_shape,
    latent_dim=config.latent_dim,
    prior=config.prior,
    prior_components=config.prior_components,
    rngs=nnx.Rngs(config.seed),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required.")
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  config = cli.config_value(_CONFIG)
  dataset = data.load_for_config(config)
  command = shlex.join(["python", "-m", "experiments.hvae", *sys.argv[1:]])
  model = model_for_config(config, dataset)
  train.train_and_evaluate(config, _WORKDIR.value, model=model, dataset=dataset, command=command)


if __name__ == "__main__":  # flags only here: tests import the model beside experiments.train
  _CONFIG = config_flags.DEFINE_config_file(
    "config",
    "experiments/configs/tomczak2018_vampprior_static.py",
    "Experiment config file.",
    lock_config=True,
  )
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, pictures.")
  cli.run(main)
