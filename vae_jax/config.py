"""The experiment config: its defaults, by section, and the check that runs before any work.

`experiments/configs/*.py` start from get_default_config(); notebooks and tests use
`build_config({...})`. Every field is documented where its default is set.
"""

import json
import os
from typing import Any

import ml_collections

from vae_jax import data, likelihoods, losses, networks, objectives, posteriors, priors, sweeps

#: The values of config.lr_schedule.
LR_SCHEDULES = ("constant", "cosine", "burda")
#: The values of config.matmul_precision and config.eval_matmul_precision.
MATMUL_PRECISIONS = ("default", "bfloat16", "tensorfloat32", "float32")


def get_default_config() -> ml_collections.ConfigDict:
  """The main job's config: experiments/configs/default.py returns this."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = "mnist_5k"  # vae_jax.data.DATASETS; mnist_5k is embedded: no download
  # "none" (grey levels, or 8-bit integers) | "static" (binarized_mnist's own, and only its)
  # | "dynamic" (a fresh draw of every training image at every step).
  config.binarization = "dynamic"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS's
  # the folder of the original files, from which a TFDS dataset is prepared offline on first use.
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  config.validation_size = 0  # last N training images held out where there is no valid split

  # Model: Burda et al. 2015's one-stochastic-layer architecture by default.
  config.architecture = "mlp"  # "mlp" | "conv" (28x28 and 32x32 images)
  config.hidden = (200, 200)  # hidden layer sizes of the encoder; the decoder uses the reverse
  config.conv_channels = (32, 64)  # channels of the conv encoder's layers (architecture="conv")
  config.latent_dim = 50  # of the first stochastic layer
  config.stochastic_layers = 1  # 2: Burda et al.'s x -> h1 -> h2 (MLP, unconditional)
  config.top_hidden = (100, 100)  # second stochastic block's hidden layers (stochastic_layers=2)
  config.top_latent_dim = 50  # h2's dimension (stochastic_layers=2)
  config.activation = "tanh"  # of the hidden layers: vae_jax.networks.ACTIVATIONS, or "gated"
  config.weight_init = "lecun_normal"  # of the MLPs' kernels: "lecun_normal" | "he_normal"
  config.likelihood = "bernoulli"  # p(x|z): vae_jax.likelihoods.LIKELIHOODS
  # the precision of the networks' matmuls; parameters, optimizer state, every log-density,
  # KL and logsumexp, and the first layer of networks that take latent samples stay float32.
  config.dtype = "float32"  # "float32" | "bfloat16"
  # how float32 matmuls run (MATMUL_PRECISIONS). "default" is JAX's setting: float32 on
  # CPU, TF32 on NVIDIA GPUs (10-bit mantissa inputs, float32 accumulation; about 2x the
  # speed), one bfloat16 pass on TPUs. "float32" forces full precision.
  config.matmul_precision = "default"  # in training and the per-epoch test ELBO
  config.eval_matmul_precision = "float32"  # the same, in the final evaluation (the report)
  config.gaussian_logvar = 0.0  # fixed (or initial, if learned) Gaussian log-variance
  config.num_components = 10  # discretized logistic mixture components
  config.conditional = False  # condition encoder and decoder on the one-hot label (CVAE)
  config.prior = "standard_normal"  # "standard_normal" | "mixture" | "vampprior" (priors.py)
  config.prior_components = 500  # mixture components / VampPrior pseudo-inputs
  # q(z|x): "diagonal" (the analytic KL) | "full_covariance" (a Cholesky factor from the
  # encoder) | "iaf" (Kingma et al. 2016's inverse autoregressive flow); see posteriors.py.
  config.posterior = "diagonal"
  config.flow_steps = 2  # IAF steps (posterior="iaf")
  # (low, high) clips the diagonal posterior's log-variance (Tomczak & Welling: (-6, 2)).
  config.logvar_range = ()  # () leaves it free

  # Objective.
  config.objective = "elbo"  # a name in vae_jax.losses.LOSSES: "elbo" | "iwae"
  config.num_samples = 1  # K, samples of z per example
  config.estimator = "reparam"  # gradient: "reparam" | "stl" | "dreg" (iwae only)
  config.analytic_kl = True  # closed-form KL to N(0, I) (ELBO only); False: Monte Carlo
  config.beta = 1.0  # weight of the KL term (beta-VAE); 1 is the ELBO
  config.free_bits = 0.0  # nats per latent dimension, per example
  config.kl_warmup_epochs = 0  # linear KL warm-up from 0 to beta

  # Optimization: Adam.
  config.learning_rate = 1e-3  # the peak learning rate of the schedule
  # "constant" | "cosine" (decays to 0 at the last step) | "burda" (Burda et al. 2015:
  # learning_rate * 10^(-i/7) for 3^i epochs, i = 0..7).
  config.lr_schedule = "constant"
  config.adam_b1 = 0.9  # Adam's first-moment decay
  config.adam_b2 = 0.999  # Adam's second-moment decay
  config.adam_eps = 1e-8  # Adam's epsilon (Burda et al.: 1e-4)
  # Tomczak & Welling's AdamNormGrad: each parameter's gradient divided by its L2 norm.
  config.adam_normgrad = False
  config.batch_size = 100  # images per step (per seed)
  config.num_epochs = 100  # passes over the training set (the most, with early stopping)
  # stop when the validation ELBO has not improved for this many epochs (those of KL
  # warm-up not counted), and evaluate the best epoch's parameters; 0: no early stopping.
  config.early_stopping_epochs = 0
  config.steps_per_call = 0  # steps per device call (and checkpoint granularity); 0 = one epoch

  # Runs.
  # of the parameters, shuffling, binarization and samples; seed i of num_seeds is seed + i.
  config.seed = 0
  config.num_seeds = 1  # independent seeds trained at once with vmap
  # fields and values trained at once, each combination with num_seeds seeds, in one
  # program: "beta=0.5,1;learning_rate=1e-3,3e-4" (vae_jax/sweeps.py); "": none.
  config.sweep = ""

  # Devices: all of them, as a (seeds, data) mesh (vae_jax/parallel.py).
  config.distributed = False  # multi-host: jax.distributed.initialize() on every process
  config.coordinator_address = ml_collections.config_dict.placeholder(str)  # HOST0:PORT; None: auto
  config.num_processes = ml_collections.config_dict.placeholder(int)  # None: auto-detect
  config.process_id = ml_collections.config_dict.placeholder(int)  # this process's; None: auto

  # Evaluation and checkpoints.
  config.eval_batch_size = 100  # test images per evaluation step
  config.eval_num_samples = 5000  # importance samples for the test log-likelihood
  config.eval_chunk_size = 100  # 100 x 100 rows per step: the fastest on CPU of those tried
  config.eval_iwae_samples = (1, 5, 50)  # IWAE bounds reported beside it
  config.checkpoint_every_epochs = 10  # and at the end, and on SIGTERM or Ctrl-C
  config.max_checkpoints = 3  # the newest kept
  return config


def build_config(overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The default config with overrides applied (for notebooks and tests).

  An unknown field raises a KeyError that names it.
  """
  config = get_default_config()
  overrides = dict(overrides or {})
  unknown = sorted(set(overrides) - set(config.keys()))
  if unknown:
    raise KeyError(f"Unknown config field(s) {unknown}; see vae_jax/config.py for the fields.")
  if isinstance(overrides.get("sweep"), dict):  # {field: values}, as the string says it
    overrides["sweep"] = sweeps.format_spec(sweeps.parse(overrides["sweep"]))
  config.update(overrides)
  return config


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"Bad config: {message}")


def _choice(config, name: str, choices) -> None:
  _check(config[name] in choices, f"{name}={config[name]!r}; choose one of {tuple(choices)}.")


def _at_least(config, name: str, minimum, unit: str = "") -> None:
  _check(config[name] >= minimum, f"{name}={config[name]} must be >= {minimum}{unit}.")


def _layer_sizes(config, name: str) -> None:
  sizes = tuple(config[name])
  _check(
    len(sizes) > 0 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes),
    f"{name}={sizes!r} must be a non-empty tuple of positive integers, e.g. (200, 200).",
  )


def _check_data(config) -> None:
  _choice(config, "dataset", data.DATASETS)
  _choice(config, "binarization", data.BINARIZATIONS)
  _check(
    (config.binarization == "static") == (config.dataset in data.BINARY_DATASETS),
    f"binarization={config.binarization!r} with dataset={config.dataset!r}: 'static' is the "
    f"binarization of {data.BINARY_DATASETS} and only of them; binarize other datasets with "
    "'dynamic' (or 'none' for grey-level likelihoods).",
  )
  _check(
    not (config.dataset == "frey_faces" and config.manual_dir is None),
    "dataset='frey_faces' reads frey_rawface.mat: set manual_dir to its folder.",
  )
  _at_least(config, "validation_size", 0)


def _check_model(config) -> None:
  _choice(config, "likelihood", likelihoods.LIKELIHOODS)
  _choice(config, "architecture", ("mlp", "conv"))
  _choice(config, "activation", [*sorted(networks.ACTIVATIONS), networks.GATED])
  _choice(config, "weight_init", list(networks.WEIGHT_INITS))
  logvar_range = tuple(config.logvar_range)
  _check(
    logvar_range == () or (len(logvar_range) == 2 and logvar_range[0] < logvar_range[1]),
    f"logvar_range={logvar_range!r}: give (low, high) with low < high, or () for none.",
  )
  _choice(config, "stochastic_layers", (1, 2))
  _choice(config, "dtype", ("float32", "bfloat16"))
  _choice(config, "prior", priors.PRIORS)
  _choice(config, "posterior", posteriors.POSTERIORS)
  for name in ("hidden", "conv_channels", "top_hidden"):
    _layer_sizes(config, name)
  for name in ("latent_dim", "top_latent_dim", "num_components", "prior_components", "flow_steps"):
    _at_least(config, name, 1)
  for name in ("matmul_precision", "eval_matmul_precision"):
    _choice(config, name, MATMUL_PRECISIONS)


def _check_objective(config) -> None:
  _choice(config, "objective", losses.OBJECTIVES)
  estimators = ("reparam", "stl") if config.objective == "elbo" else objectives.ESTIMATORS
  _check(
    config.estimator in estimators,
    f"estimator={config.estimator!r} with objective={config.objective!r}; "
    f"choose one of {estimators}.",
  )
  _check(
    not (config.objective == "elbo" and config.estimator == "stl" and config.analytic_kl),
    "estimator='stl' needs analytic_kl=False.",
  )
  _at_least(config, "num_samples", 1)
  _at_least(config, "beta", 0)
  _at_least(config, "free_bits", 0, " nats")
  _check(not (config.free_bits > 0 and not config.analytic_kl), "free_bits needs analytic_kl=True.")
  _at_least(config, "kl_warmup_epochs", 0)


def _check_optimizer(config) -> None:
  _check(
    config.learning_rate > 0,
    f"learning_rate={config.learning_rate} must be > 0 (the loss is minimized).",
  )
  _choice(config, "lr_schedule", LR_SCHEDULES)
  for name in ("batch_size", "num_epochs", "num_seeds"):
    _at_least(config, name, 1)
  _at_least(config, "steps_per_call", 0, " (0: one epoch)")
  _at_least(config, "early_stopping_epochs", 0, " (0: none)")


def _check_evaluation(config) -> None:
  for name in (
    "eval_batch_size",
    "eval_num_samples",
    "eval_chunk_size",
    "checkpoint_every_epochs",
    "max_checkpoints",
  ):
    _at_least(config, name, 1)
  _check(
    len(config.eval_iwae_samples) > 0 and min(config.eval_iwae_samples) >= 1,
    f"eval_iwae_samples={tuple(config.eval_iwae_samples)} must be numbers >= 1.",
  )


def _check_combinations(config) -> None:
  """Options of different sections that do not go together."""
  # The closed-form KL is that of a diagonal posterior to N(0, I).
  for name, closed_form in (("prior", "standard_normal"), ("posterior", "diagonal")):
    _check(
      config[name] == closed_form or not (config.objective == "elbo" and config.analytic_kl),
      f"{name}={config[name]!r} has no closed-form KL: set analytic_kl=False (the KL is then "
      "estimated by Monte Carlo).",
    )
  if config.prior != "standard_normal":
    _check(
      config.stochastic_layers == 1,
      f"prior={config.prior!r} is a prior of one stochastic layer: set stochastic_layers=1.",
    )
  if config.activation == "gated" or config.weight_init != "lecun_normal":
    _check(
      config.architecture == "mlp",
      f"activation={config.activation!r} and weight_init={config.weight_init!r} are options "
      "of the MLP networks: set architecture='mlp'.",
    )
  if tuple(config.logvar_range):
    _check(
      config.stochastic_layers == 1 and config.posterior == "diagonal",
      "logvar_range clips the log-variance of a diagonal posterior of one stochastic layer: "
      "set stochastic_layers=1 and posterior='diagonal', or logvar_range=().",
    )
  _check(
    not (config.prior == "vampprior" and config.conditional),
    "prior='vampprior' reads pseudo-inputs without labels: set conditional=False.",
  )
  if config.posterior != "diagonal":
    _check(
      config.stochastic_layers == 1 and config.prior != "vampprior",
      f"posterior={config.posterior!r} is for one stochastic layer and a prior other than "
      "the VampPrior (a mixture of diagonal posteriors): set stochastic_layers=1 and another "
      "prior, or posterior='diagonal'.",
    )
  if config.stochastic_layers == 2:
    _check(
      config.architecture == "mlp" and not config.conditional,
      "stochastic_layers=2 is an unconditional MLP: set architecture='mlp', conditional=False.",
    )
    _check(
      config.estimator == "reparam" and not (config.objective == "elbo" and config.analytic_kl),
      "stochastic_layers=2 trains with reparameterization gradients and a Monte Carlo KL: "
      "set estimator='reparam' and, for the ELBO, analytic_kl=False.",
    )
  _check(
    not (config.likelihood == "bernoulli" and config.binarization == "none"),
    "a Bernoulli likelihood needs binary pixels: set binarization='dynamic', "
    "or choose a likelihood for grey pixels (gaussian, dlogistic_mixture, categorical).",
  )
  _check(
    not (
      config.likelihood in ("dlogistic_mixture", "categorical") and config.binarization != "none"
    ),
    f"likelihood={config.likelihood!r} models 8-bit pixels: set binarization='none'.",
  )


def _check_sweep(config) -> None:
  sweeps.check(config, get_default_config().keys())


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError for a config that would fail later, before any work starts."""
  for check_section in (
    _check_sweep,
    _check_data,
    _check_model,
    _check_objective,
    _check_optimizer,
    _check_evaluation,
    _check_combinations,
  ):
    check_section(config)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json), with the defaults for fields
  added since it was written."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: is it a workdir of experiments.train?")
  config = get_default_config()
  try:
    with open(path) as f:
      config.update(json.load(f))
  except (json.JSONDecodeError, KeyError, TypeError) as error:
    raise ValueError(f"{path} is not a config this version can read ({error}).") from error
  return config


#: The fields a resumed run may change, namely how long it trains (except under a cosine
#: schedule, which depends on it), where the data lives, how it is evaluated and
#: checkpointed, and how its processes find each other. Anything else would relabel the
#: results.
RESUMABLE_FIELDS = (
  "num_epochs",
  "data_dir",
  "manual_dir",
  "eval_batch_size",
  "eval_num_samples",
  "eval_chunk_size",
  "eval_iwae_samples",
  "eval_matmul_precision",
  "checkpoint_every_epochs",
  "max_checkpoints",
  "distributed",
  "coordinator_address",
  "num_processes",
  "process_id",
)


def _unread_fields(config: ml_collections.ConfigDict) -> set[str]:
  """Model fields that config's run never reads: a new default for them relabels nothing."""
  unread = set()
  if config.stochastic_layers == 1:
    unread |= {"top_hidden", "top_latent_dim"}
  if config.stochastic_layers == 2 or config.architecture == "mlp":
    unread.add("conv_channels")
  if config.posterior != "iaf":
    unread.add("flow_steps")
  return unread


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming each field in which config differs from the config a
  workdir was trained with, beyond RESUMABLE_FIELDS and the fields the run never reads."""
  before, now = (json.loads(c.to_json_best_effort()) for c in (saved, config))
  resumable = set(RESUMABLE_FIELDS) | _unread_fields(config)
  if now["lr_schedule"] == "cosine":
    resumable.discard("num_epochs")
  changed = [
    f"{name}={before.get(name)!r} -> {now[name]!r}"
    for name in now
    if name not in resumable and before.get(name) != now[name]
  ]
  if changed:
    raise ValueError(
      "Bad config for resuming: the workdir was trained with another config "
      f"({'; '.join(changed)}). "
      "Resume with the workdir's config (only num_epochs, data paths, evaluation, checkpoint "
      "and process settings may change), or train in a new --workdir."
    )
