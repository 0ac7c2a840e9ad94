"""Throughput of vae_jax's training loop and evaluation against hand-written baselines.

  python scripts/bench.py                  # training: K=1 (ELBO) and K=50 (IWAE)
  python scripts/bench.py --ks=1,5,50 --batch_sizes=20,100,500 --rounds=3   # a table
  python scripts/bench.py --dtype=bfloat16 # the library in bf16 against the fp32 minimal loop
  python scripts/bench.py --mode=precision # bf16 vs fp32: IWAE K=50 speed and ELBO, same budget
  python scripts/bench.py --mode=matmul    # the three products of a dense layer, fp32 vs bf16
  python scripts/bench.py --mode=prior     # a training step with each prior, and the mixture
  python scripts/bench.py --mode=eval      # IS-5000 log-likelihood of 10,000 test images
  python scripts/bench.py --mode=quality --data_dir=DIR   # time to test ELBO > -100, MNIST
  python scripts/bench.py --mode=kernels --batch_sizes=20,100   # kernels per training step
  python scripts/bench.py --mode=kernels --compile_for=h100      # the same for an H100, without one
  python scripts/bench.py --stochastic_layers=2 --batch_sizes=20 --ks=50   # Table 1's 2-layer IWAE
  python scripts/bench.py --num_seeds=8 --batch_sizes=20 --ks=1   # 8 seeds vmapped against one
  python scripts/bench.py --mode=sweep --batch_sizes=20,100 --ks=1,50 --rounds=2   # sweeps

Model: Burda et al. 2015's one-stochastic-layer VAE (784-200-200-50, tanh,
Bernoulli; --stochastic_layers=2: their 784-200-200-[100]-100-100-[50] model, in the
library and in the minimal loop), batch 100 (or each of --batch_sizes), Adam,
dynamic binarization, on the embedded 4,000 training digits (--data_dir: full
MNIST); the ELBO at K=1 and IWAE at K>1, the KL
sampled in both (--analytic_kl: the closed-form KL at K=1, in both). In the same
run, interleaved round by round so that a noisy machine affects both alike, it times:
  - the library: vae_jax.experiment.Experiment.train_chunk, one epoch per call, with
    train_and_evaluate's copy of the state before each call (--num_seeds=N: N seeds
    vmapped in one program, its images/s counting every seed's);
  - a baseline: the same model, optimizer, shuffling and binarization written
    as a minimal hand-written JAX loop (jit over a lax.scan of steps) that only takes
    gradients (--minimal_loop_loss: it also sums its loss, as the library logs it);
  - the machine's fp32 matmul throughput (2048x2048 jnp.dot), the roofline.
It prints images/s, the ratio library / baseline (of the median times, and the range
of the rounds' own ratios: a wide one says the machine's speed moved), and achieved GFLOP/s
(multiply-adds of the dense layers, x2 for FLOPs, x3 for forward + backward)
as a fraction of the roofline.

Every run also appends a record to --record_dir (results/benchmarks/ by default), one
JSON file per device and date, with the command, the commit, the device, the jax
version and one row per printed line; docs/generate.py renders them on the docs'
Benchmarks page.

--mode=eval times the importance-sampled log-likelihood (K=5,000) of 10,000
test images through vae_jax.evaluation (the default config's batches and
chunks, lax.map, split over all devices), and in the same run the same
estimate written as a per-example Python loop over images and chunks of 500
samples, the way pythae's get_nll does it, on --loop_images images (its rate
is per evaluation, so it extrapolates).
The model is the same architecture untrained: the cost does not depend on the
weights. The images are the embedded test digits, tiled to 10,000.

--mode=quality trains the same model (the default config: ELBO, K=1, analytic
KL, Adam 1e-3, batch 100) on full MNIST from TFDS (--data_dir, prepared with
scripts/prepare_data.py), dynamically binarized, all 60,000 training images,
and reports the training seconds (evaluation excluded) until the test ELBO
(10,000 test images binarized once, one sample) first exceeds --target.

--mode=precision trains IWAE K=50 (the same model) for --budget_epochs epochs
in float32 and in bfloat16 (config.dtype), seeds 0 and 1 each, on the embedded
digits (or full MNIST with --data_dir), and reports each run's images/s and
final test ELBO (one sample, analytic KL) and IWAE-50 bound, both evaluated in
float32, and the paired differences.

--mode=prior trains Tomczak & Welling 2018's one-layer VAE (gated 300-300, 40 latents,
batch 100, ELBO with the KL sampled) with the standard prior, a mixture of 500
Gaussians and a VampPrior of 500 pseudo-inputs, interleaved round by round, and reports
each one's images/s, its cost against the standard prior's, and the cost its matmuls
predict (the VampPrior encodes the 500 pseudo-inputs at every step). In the same run it
times the value and gradient of the mixture's log-density for 100 samples (500
components, 40 dimensions): priors.log_mixture_of_gaussians against the same expression
by broadcasting, left to autodiff.

--mode=sweep trains a sweep of --sweep_members learning rates (log-spaced from 1e-4 to
3e-3; N = 4, 8, 16) for --sweep_epochs epochs as one program (config.sweep), and the same
N settings as N separate runs one after another, for each batch size and K; each wall
clock counts everything from building the Experiment (so compiling, which each separate
run repeats) to the last epoch's state, and the epochs after the first are also timed
alone (the steady rate); --rounds rounds alternate which side goes first, and the medians
are reported. Process start-up and data loading, which separate processes
would each pay too, are not counted.

--mode=matmul times, in float32 and in bfloat16 with float32 outputs, the three
products of the K=50 decoder's last layer (h: [5000, 200], W: [200, 784]):
the forward h·W, the input gradient g·Wᵀ, the weight gradient hᵀ·g with h
transposed inside the jitted function, and the same with hᵀ passed in as an
argument.
"""

import datetime
import functools
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import vae_jax
from vae_jax import data, evaluation, priors
from vae_jax import state as state_lib
from vae_jax.config import build_config
from vae_jax.experiment import Experiment

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
from experiments.configs import tomczak2018_vae_static  # noqa: E402

_KS = flags.DEFINE_list("ks", ["1", "50"], "Numbers of samples K to measure (1: ELBO, >1: IWAE).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds; medians are reported.")
_EPOCHS_PER_ROUND = flags.DEFINE_integer("epochs_per_round", 3, "Epochs timed per round (K=1).")
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "config.dtype of the library's training loop."
)
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "quality", "precision", "matmul", "kernels", "prior", "sweep"],
  "What to time.",
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["100"], "Batch sizes to measure (--mode=train).")
_BUDGET_EPOCHS = flags.DEFINE_integer("budget_epochs", 20, "Epochs of each run (--mode=precision).")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 10_000, "Test images for --mode=eval.")
_LOOP_IMAGES = flags.DEFINE_integer("loop_images", 20, "Images the per-example loop times.")
_EVAL_PRECISIONS = flags.DEFINE_list(
  "eval_precisions", ["float32"], "Matmul precisions of --mode=eval (default, tensorfloat32, ...)."
)
_EVAL_SIZES = flags.DEFINE_list(
  "eval_sizes",
  ["100x100"],
  "--mode=eval and kernels: images per batch x samples per chunk, each timed or counted.",
)
_EVAL_SAMPLES, _EVAL_CHUNK = 5000, 500
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS data_dir with mnist: train on full MNIST (default: embedded digits)."
)
_TARGET = flags.DEFINE_float("target", -100.0, "Test ELBO to reach (--mode=quality).")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 300, "Give up after this many epochs.")
_LAYERS = flags.DEFINE_enum(
  "stochastic_layers",
  "1",
  ["1", "2"],
  "--mode=train and kernels: 1, the default model; 2, Burda et al.'s 2-layer IWAE model "
  "(784-200-200-[100]-100-100-[50]), in the library and the minimal loop.",
)
_NUM_SEEDS = flags.DEFINE_integer(
  "num_seeds",
  1,
  "--mode=train: seeds the library trains at once (config.num_seeds, vmapped in one program), "
  "against one seed of the minimal loop; images/s counts every seed's images.",
)
_ANALYTIC_KL = flags.DEFINE_bool(
  "analytic_kl", False, "K=1 (train, kernels): the analytic KL in the library and the minimal loop."
)
_LOSS_VALUE = flags.DEFINE_bool(
  "minimal_loop_loss",
  False,
  "train, kernels: the minimal loop also sums its loss's value over the epoch, as the library "
  "does for its logged metrics (by default the loop only takes gradients).",
)
_SWEEP_MEMBERS = flags.DEFINE_list(
  "sweep_members", ["4", "8", "16"], "--mode=sweep: the numbers of members N to time."
)
_SWEEP_EPOCHS = flags.DEFINE_integer(
  "sweep_epochs", 3, "--mode=sweep: epochs each sweep and each separate run trains."
)
_RECORD_DIR = flags.DEFINE_string(
  "record_dir",
  os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "benchmarks"
  ),
  "Folder of the benchmark records (one JSON file per device and date); '' writes none.",
)
_COMPILE_FOR = flags.DEFINE_enum(
  "compile_for",
  None,
  ["h100"],
  "--mode=kernels: compile for this GPU on a machine without one (scripts/gpu_targets/; "
  "needs jax[cuda12]).",
)

PIXELS = 784
_ROWS = []  # what this run measured, one dict per printed line: the record's rows


def report(line: str, **row) -> None:
  """Prints a result line and keeps its numbers for the run's record."""
  print(line, flush=True)
  _ROWS.append(row)


def _commit() -> str:
  """This checkout's commit, with "+changes" when the working tree differs from it."""

  def git(*args):
    return subprocess.run(
      ["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__)
    ).stdout.strip()

  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def device_name(device) -> str:
  """The device's kind; for a CPU, its model and core count (JAX calls every CPU "cpu")."""
  if device.platform != "cpu":
    return device.device_kind
  with open("/proc/cpuinfo") as f:
    info = dict(re.findall(r"^(model name|cpu family|model)\s*:\s*(.*)$", f.read(), re.M)[:3])
  name = info.get("model name", "CPU").strip()
  family = f" (family {info['cpu family']}, model {info['model']})" if "model" in info else ""
  return f"{name}{family}, {os.cpu_count()} cores"


def write_record(device_kind: str) -> str:
  """Appends this run to --record_dir/<device>_<date>.json and returns the file's path."""
  today = datetime.date.today().isoformat()
  slug = re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-")
  path = os.path.join(_RECORD_DIR.value, f"{slug}_{today}.json")
  record = {"device": device_kind, "runs": []}
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
  run = dict(
    date=today,
    mode=_MODE.value,
    command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
    commit=_commit(),
    jax_version=jax.__version__,
    num_devices=jax.device_count(),
    rows=_ROWS,
  )
  record["runs"].append(run)
  os.makedirs(_RECORD_DIR.value, exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
  return path


# Burda et al.'s 2-layer model, 784-200-200-[100]-100-100-[50] (--stochastic_layers=2); its
# top block, 100-100-[50], is the config's default.
TWO_LAYERS = dict(stochastic_layers=2, hidden=(200, 200), latent_dim=100)


def mlp_sizes(config) -> dict[str, list[int]]:
  """The layer widths of each network of config's model; the first network reads x, the
  others latent samples."""
  hidden, latent = list(config.hidden), config.latent_dim
  if config.stochastic_layers == 1:
    return {"enc": [PIXELS, *hidden, 2 * latent], "dec": [latent, *hidden[::-1], PIXELS]}
  top_hidden, top_latent = list(config.top_hidden), config.top_latent_dim
  return {
    "q_h1": [PIXELS, *hidden, 2 * latent],
    "q_h2": [latent, *top_hidden, 2 * top_latent],
    "p_h1": [top_latent, *top_hidden[::-1], 2 * latent],
    "p_x": [latent, *hidden[::-1], PIXELS],
  }


def multiply_adds(sizes: list[int]) -> int:
  """Of one pass of one example through dense layers of these widths."""
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  dot = jax.jit(lambda a: a @ a)
  dot(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = dot(a)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def train_flops_per_image(config) -> float:
  """Multiply-adds of the dense layers x2 (FLOPs) x3 (forward and backward): the network
  that reads x runs once per image, the others once per sample."""
  first, *rest = map(multiply_adds, mlp_sizes(config).values())
  return 2 * 3 * (first + config.num_samples * sum(rest))


def baseline_epoch_fn(config, num_train: int, *, loss_value: bool = False):
  """A minimal hand-written VAE/IWAE training epoch of config's model, K, batch size and
  estimator: what one would write in an afternoon. config.analytic_kl: the closed-form KL
  instead of log q - log p at the sample (one stochastic layer, K=1). It returns the new
  state and, with loss_value, the sum of the steps' losses (else None): a loop that only
  takes gradients never computes the loss's value, which the library logs."""
  k, batch_size = config.num_samples, config.batch_size

  def init(key):
    def mlp(key, sizes):
      keys = jax.random.split(key, len(sizes) - 1)
      return [
        (jax.random.normal(k_, (a, b)) / np.sqrt(a), jnp.zeros(b))
        for k_, a, b in zip(keys, sizes[:-1], sizes[1:])
      ]

    sizes = mlp_sizes(config)
    return {
      name: mlp(k_, s) for k_, (name, s) in zip(jax.random.split(key, len(sizes)), sizes.items())
    }

  def apply(layers, h):
    for w, b in layers[:-1]:
      h = jnp.tanh(h @ w + b)
    w, b = layers[-1]
    return h @ w + b

  def log_normal(z, mean, logvar):
    return -0.5 * jnp.sum((z - mean) ** 2 * jnp.exp(-logvar) + logvar + np.log(2 * np.pi), -1)

  def log_bernoulli(x, logits):
    return jnp.sum(x * logits - jax.nn.softplus(logits), -1)

  def one_layer_log_weights(params, x, key):
    mean, logvar = jnp.split(apply(params["enc"], x), 2, axis=-1)
    eps = jax.random.normal(key, (k, *mean.shape))
    z = mean + jnp.exp(0.5 * logvar) * eps
    log_px = log_bernoulli(x, apply(params["dec"], z))
    if config.analytic_kl:
      return log_px - 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1)
    log_pz = -0.5 * jnp.sum(z**2 + np.log(2 * np.pi), -1)
    log_qz = -0.5 * jnp.sum(eps**2 + logvar + np.log(2 * np.pi), -1)
    return log_px + log_pz - log_qz

  def two_layer_log_weights(params, x, key):
    key_h1, key_h2 = jax.random.split(key)
    q1_mean, q1_logvar = jnp.split(apply(params["q_h1"], x), 2, axis=-1)
    h1 = q1_mean + jnp.exp(0.5 * q1_logvar) * jax.random.normal(key_h1, (k, *q1_mean.shape))
    q2_mean, q2_logvar = jnp.split(apply(params["q_h2"], h1), 2, axis=-1)
    h2 = q2_mean + jnp.exp(0.5 * q2_logvar) * jax.random.normal(key_h2, q2_mean.shape)
    p1_mean, p1_logvar = jnp.split(apply(params["p_h1"], h2), 2, axis=-1)
    log_p = log_bernoulli(x, apply(params["p_x"], h1)) + log_normal(h1, p1_mean, p1_logvar)
    log_p += log_normal(h2, 0.0, 0.0)
    return log_p - log_normal(h1, q1_mean, q1_logvar) - log_normal(h2, q2_mean, q2_logvar)

  def loss(params, x, key):
    log_weights = one_layer_log_weights if config.stochastic_layers == 1 else two_layer_log_weights
    return -jnp.mean(jax.nn.logsumexp(log_weights(params, x, key), 0) - np.log(k))

  tx = optax.adam(1e-3)

  def epoch(state, images, key):
    params, opt_state = state
    order = jax.random.permutation(key, num_train)
    batches = order[: num_train // batch_size * batch_size].reshape(-1, batch_size)

    def step(carry, inputs):
      params, opt_state, loss_sum = carry
      index, i = inputs
      key_bin, key_z = jax.random.split(jax.random.fold_in(key, i))
      x = jax.random.bernoulli(key_bin, images[index].reshape(batch_size, -1) / 255.0).astype(
        jnp.float32
      )
      if loss_value:
        value, grads = jax.value_and_grad(loss)(params, x, key_z)
        loss_sum += value
      else:
        grads = jax.grad(loss)(params, x, key_z)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state, loss_sum), None

    loss_sum = jnp.zeros(()) if loss_value else None
    (params, opt_state, loss_sum), _ = jax.lax.scan(
      step, (params, opt_state, loss_sum), (batches, jnp.arange(batches.shape[0]))
    )
    return (params, opt_state), loss_sum

  params = init(jax.random.key(0))
  return jax.jit(epoch, donate_argnums=0), (params, tx.init(params))


_NO_KERNEL = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][\w\-]*)\(")
_CALLED = r"(?:to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str]]]:
  """The optimized HLO module's computations: name -> [(opcode, instruction line)]."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif current is not None and (op := _INSTRUCTION.match(line)):
      current.append((op.group(1), line))
  return computations


def _kernels(computations, name: str) -> int:
  """Instructions that launch work (fusions, library calls, unfused ops), nested calls counted."""
  count = 0
  for op, line in computations[name]:
    if op in ("call", "while", "conditional"):
      called = re.findall(_CALLED, line) + re.findall(r"branch_computations=\{([^}]*)\}", line)
      count += sum(_kernels(computations, c.strip(" %")) for c in ",".join(called).split(","))
    elif op not in _NO_KERNEL:
      count += 1
  return count


def scan_body_kernels(compiled, *, innermost: bool = False) -> int:
  """Kernels per training step: those of the largest while-loop body in a compiled program
  (innermost=True: of the largest body with no loop inside it)."""
  computations = _computations(compiled.as_text())
  bodies = [
    re.search(r"body=%?([\w.\-]+)", line).group(1)
    for instructions in computations.values()
    for op, line in instructions
    if op == "while"
  ]
  if innermost:
    bodies = [b for b in bodies if all(op != "while" for op, _ in computations[b])]
  return max(_kernels(computations, body) for body in bodies)


def step_kernels(dataset, config, device=None, *, loss_value=False) -> tuple[int, int]:
  """Kernels per step of the library's compiled training call and of the minimal loop's
  (of config's model, K, batch size and estimator; loss_value: the loop also sums its
  loss), on one device (the first when None).
  Compiled from shapes alone, so the device may be one of a topology with no hardware
  behind it (--compile_for)."""
  device = device or jax.devices()[0]
  experiment = Experiment(config, dataset, devices=[device])
  keys = jax.eval_shape(lambda: state_lib.seed_keys(experiment.config))
  library = experiment.train_chunk.lower(
    experiment.abstract_state(),
    _abstract(keys, experiment.state_sharding),
    _abstract(dataset.train_images, experiment.batch_sharding),
    _abstract(dataset.train_labels, experiment.batch_sharding),
  ).compile()
  num_train = dataset.train_images.shape[0]
  base_epoch, base_state = baseline_epoch_fn(config, num_train, loss_value=loss_value)
  on_device = jax.sharding.SingleDeviceSharding(device)
  baseline = base_epoch.lower(
    jax.tree.map(lambda a: _abstract(a, on_device), base_state),
    _abstract(dataset.train_images, on_device),
    _abstract(jax.eval_shape(lambda: jax.random.key(0)), on_device),
  ).compile()
  return scan_body_kernels(library), scan_body_kernels(baseline)


def _abstract(array, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=sharding)


def gpu_target_device(name: str):
  """A device of a one-GPU topology described by scripts/gpu_targets/NAME.txtpb, for
  compiling without the GPU (needs the CUDA plugin: pip install 'jax[cuda12]')."""
  from jax.experimental import topologies

  path = os.path.join(os.path.dirname(__file__), "gpu_targets", f"{name}.txtpb")
  with open(path) as f:
    target_config = f.read()
  topology = topologies.get_topology_desc(
    platform="cuda", target_config=target_config, topology="1x1x1"
  )
  return topology.devices[0]


def is_log_likelihood(model, x, labels, batch_size, chunk_size, devices=None) -> jax.Array:
  """IS-5000 log p(x) of each image, computed as vae_jax.evaluation does (no IWAE bounds)."""
  return evaluation.evaluate_examples_on_devices(
    model,
    x,
    labels,
    jax.random.key(0),
    batch_size=batch_size,
    num_samples=_EVAL_SAMPLES,
    chunk_size=chunk_size,
    iwae_samples=(),
    devices=devices,
  )["log_likelihood"]


def evaluation_chunk_kernels(batch_size: int, chunk_size: int, device=None) -> int:
  """Kernels per step of the importance-sampling loop (chunk_size samples for each of
  batch_size images) in the compiled IS-5000 evaluation of 10,000 test images, Burda
  1-layer, at the default matmul precision; compiled from shapes alone."""
  device = device or jax.devices()[0]
  config = build_config()
  model = nnx.eval_shape(lambda: state_lib.make_model(config, (28, 28, 1), 10, nnx.Rngs(0)))
  graphdef, params = nnx.split(model)
  on_device = jax.sharding.SingleDeviceSharding(device)

  def log_likelihood(params, x, labels):
    model = nnx.merge(graphdef, params)
    return is_log_likelihood(model, x, labels, batch_size, chunk_size, devices=[device])

  compiled = (
    jax.jit(log_likelihood)
    .lower(
      jax.tree.map(lambda a: _abstract(a, on_device), params),
      jax.ShapeDtypeStruct((10_000, 28, 28, 1), jnp.float32, sharding=on_device),
      jax.ShapeDtypeStruct((10_000,), jnp.int32, sharding=on_device),
    )
    .compile()
  )
  return scan_body_kernels(compiled, innermost=True)


def bench_kernels(dataset, device=None) -> None:
  """Kernels per step for the library and the minimal loop; device: a GPU target to
  compile for without one (None: this machine's backend)."""
  if device:
    print(f"compiled for {device.device_kind}, without one (jax {jax.__version__})")
  for batch_size in map(int, _BATCH_SIZES.value):
    for k in map(int, _KS.value):
      config = iwae_or_elbo_config(k, batch_size=batch_size, **_model_flags())
      library, baseline = step_kernels(dataset, config, device, loss_value=_LOSS_VALUE.value)
      report(
        f"batch {batch_size:<4d} K={k:<3d} {_model_name(config):13s} kernels per step:"
        f" library {library}, minimal loop {baseline}",
        batch=batch_size,
        K=k,
        objective=_model_name(config),
        library_kernels=library,
        minimal_loop_kernels=baseline,
      )
  for size in _EVAL_SIZES.value:
    batch_size, chunk_size = map(int, size.split("x"))
    kernels = evaluation_chunk_kernels(batch_size, chunk_size, device)
    report(
      f"IS-{_EVAL_SAMPLES} evaluation, batch {batch_size} x chunk {chunk_size}: kernels per"
      f" chunk step {kernels}",
      eval_batch=batch_size,
      eval_chunk=chunk_size,
      eval_kernels_per_chunk=kernels,
    )


def eval_flops_per_sample() -> float:
  """FLOPs of one importance sample: the decoder's dense layers, forward only."""
  return 2 * multiply_adds(mlp_sizes(build_config())["dec"])


def bench_evaluation(dataset) -> None:
  """IS-5000 over a test set: vae_jax.evaluation at each precision, and a per-example loop."""
  config = build_config()
  experiment = Experiment(config, dataset)
  params = experiment.take_member(experiment.initial_state()["params"], 0)
  model = experiment.model(params)
  reps = -(-_EVAL_IMAGES.value // len(dataset.test_images))
  images = np.concatenate([dataset.test_images] * reps)[: _EVAL_IMAGES.value]
  x = data.split_inputs(images, binarization="dynamic", integer_data=False)
  labels = jnp.zeros(len(images), jnp.int32)
  evaluations = len(images) * _EVAL_SAMPLES

  def log_likelihood(x, labels, batch_size, chunk_size):
    return is_log_likelihood(model, x, labels, batch_size, chunk_size)

  sizes = [tuple(map(int, pair.split("x"))) for pair in _EVAL_SIZES.value]
  for precision in _EVAL_PRECISIONS.value:
    with jax.default_matmul_precision(precision):
      roofline = matmul_gflops()
      for batch_size, chunk_size in sizes:
        fn = functools.partial(log_likelihood, batch_size=batch_size, chunk_size=chunk_size)
        fn = jax.jit(fn)
        start = time.perf_counter()
        fn = fn.lower(x, labels).compile()
        compile_seconds = time.perf_counter() - start
        seconds = []
        while len(seconds) < (3 if sum(seconds) < 5 else 1):  # the median of 3 short runs
          start = time.perf_counter()
          log_px = fn(x, labels).block_until_ready()
          seconds.append(time.perf_counter() - start)
        library_seconds = float(np.median(seconds))
        gflops = evaluations * eval_flops_per_sample() / library_seconds / 1e9
        report(
          f"IS-{_EVAL_SAMPLES} of {len(images)} images, Burda 1-layer, matmuls at {precision},"
          f" batch {batch_size} x chunk {chunk_size}: {library_seconds:.3f} s"
          f" ({evaluations / library_seconds:,.0f} image x sample/s, {gflops:,.0f} GFLOP/s ="
          f" {gflops / roofline:.2f} of the {roofline:,.0f} GFLOP/s matmul roofline;"
          f" compiling {compile_seconds:.0f} s) | mean log p(x) {float(jnp.mean(log_px)):.4f}",
          precision=precision,
          images=len(images),
          batch=batch_size,
          chunk=chunk_size,
          seconds=library_seconds,
          image_samples_per_second=evaluations / library_seconds,
          roofline_fraction=gflops / roofline,
        )
  if not _LOOP_IMAGES.value:
    return
  # pythae's way: for each image, for each chunk, one jitted call on the repeated image.
  encode, log_likelihood = model.callables()
  chunk_log_w = jax.jit(
    lambda x_one, key: vae_jax.log_weights(key, x_one, encode, log_likelihood, _EVAL_CHUNK)
  )
  chunk_log_w(x[:1], jax.random.key(0)).block_until_ready()
  start = time.perf_counter()
  for i in range(_LOOP_IMAGES.value):
    log_w = [
      np.asarray(chunk_log_w(x[i : i + 1], jax.random.key(c)))
      for c in range(_EVAL_SAMPLES // _EVAL_CHUNK)
    ]
    host_logsumexp(np.concatenate(log_w)[:, 0])
  loop_seconds = (time.perf_counter() - start) / _LOOP_IMAGES.value * len(images)
  report(
    f"per-example loop: {loop_seconds:.0f} s extrapolated from {_LOOP_IMAGES.value} images"
    f" ({evaluations / loop_seconds:,.0f} image x sample/s), {loop_seconds / library_seconds:.1f}x"
    " the time of the last setting above",
    precision="per-example loop",
    images=len(images),
    seconds=loop_seconds,
    image_samples_per_second=evaluations / loop_seconds,
  )


def bench_time_to_quality() -> None:
  """Training seconds until the test ELBO on full MNIST exceeds --target."""
  config = build_config(dict(dataset="mnist", data_dir=_DATA_DIR.value))
  dataset = data.load("mnist", data_dir=_DATA_DIR.value)
  experiment = Experiment(config, dataset)
  state = experiment.initial_state()
  keys, images, labels = experiment.train_inputs()
  test_x, test_labels = experiment.eval_inputs(dataset.test_images, dataset.test_labels)
  train_chunk = experiment.train_chunk.lower(state, keys, images, labels).compile()  # off the clock
  train_seconds = 0.0
  for epoch in range(1, _MAX_EPOCHS.value + 1):
    start = time.perf_counter()
    state, _ = train_chunk(state, keys, images, labels)
    jax.block_until_ready(state)
    train_seconds += time.perf_counter() - start
    elbo = float(experiment.evaluate(state["params"], {}, test_x, test_labels)["elbo"][0])
    if elbo > _TARGET.value:
      report(
        f"MNIST (dynamic binarization, 60,000 train), Burda 1-layer ELBO K=1: test ELBO"
        f" {elbo:.2f} > {_TARGET.value} after {epoch} epochs, {train_seconds:.0f} s of training"
        f" on {jax.device_count()} {jax.devices()[0].device_kind} device(s)",
        target=_TARGET.value,
        epochs=epoch,
        train_seconds=train_seconds,
        test_elbo=elbo,
      )
      return
  print(f"test ELBO {elbo:.2f} did not reach {_TARGET.value} in {_MAX_EPOCHS.value} epochs")


def bench_matmul(repeats: int = 20) -> None:
  """GFLOP/s of a dense layer's forward and backward products, float32 against bfloat16."""
  rows, fan_in, fan_out = 50 * 100, build_config().hidden[0], PIXELS  # K=50 x batch 100

  def dot(a, b, contract):  # contracting axis `contract[0]` of a with `contract[1]` of b
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)

  products = {
    "forward h.W": lambda h, w, g, h_t: dot(h, w, (1, 0)),
    "input gradient g.W^T": lambda h, w, g, h_t: dot(g, w, (1, 1)),
    "weight gradient h^T.g": lambda h, w, g, h_t: dot(h.T, g, (1, 0)),
    "weight gradient, h^T passed in": lambda h, w, g, h_t: dot(h_t, g, (1, 0)),
  }
  for dtype in ("float32", "bfloat16"):
    key_h, key_w, key_g = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(key_h, (rows, fan_in)).astype(dtype)
    w = jax.random.normal(key_w, (fan_in, fan_out)).astype(dtype)
    g = jax.random.normal(key_g, (rows, fan_out)).astype(dtype)
    h_t = jnp.asarray(np.asarray(h.astype(jnp.float32)).T).astype(dtype)  # laid out transposed
    for name, product in products.items():
      fn = jax.jit(product)
      fn(h, w, g, h_t).block_until_ready()
      start = time.perf_counter()
      for _ in range(repeats):
        out = fn(h, w, g, h_t)
      out.block_until_ready()
      gflops = 2 * rows * fan_in * fan_out * repeats / (time.perf_counter() - start) / 1e9
      report(
        f"{dtype:8s} {name:32s} {gflops:6.0f} GFLOP/s", dtype=dtype, product=name, gflops=gflops
      )


def host_logsumexp(values: np.ndarray) -> float:
  top = values.max()
  return float(top + np.log(np.exp(values - top).sum()))


def main(argv):
  del argv
  target = None
  if _COMPILE_FOR.value:  # the CUDA plugin compiles, without initializing a GPU
    jax.config.update("jax_platforms", "cpu")
    target = gpu_target_device(_COMPILE_FOR.value)
  if _DATA_DIR.value:
    dataset = data.load("mnist", data_dir=_DATA_DIR.value)
  else:
    dataset = data.load_mnist_5k()
  print(
    f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s);"
    f" {len(dataset.train_images)} training images"
  )
  other_modes = {
    "kernels": lambda: bench_kernels(dataset, target),
    "eval": lambda: bench_evaluation(dataset),
    "quality": bench_time_to_quality,
    "precision": lambda: bench_precision(dataset),
    "matmul": bench_matmul,
    "prior": lambda: bench_priors(dataset),
    "sweep": lambda: bench_sweep(dataset),
  }
  if _MODE.value in other_modes:
    other_modes[_MODE.value]()
  else:
    print(f"fp32 matmul roofline (2048x2048): {matmul_gflops():.0f} GFLOP/s")
    for batch_size in map(int, _BATCH_SIZES.value):
      for k in map(int, _KS.value):
        bench_training(dataset, k, batch_size)
  if _RECORD_DIR.value:
    # A deviceless compilation is recorded apart from the real device's runs.
    name = (
      f"{target.device_kind}, compiled without one" if target else device_name(jax.devices()[0])
    )
    print(f"Recorded in {write_record(name)}")


def _model_name(config) -> str:
  return f"{config.objective}{', 2 layers' if config.stochastic_layers == 2 else ''}"


def _model_flags() -> dict:
  """--analytic_kl and --stochastic_layers, as iwae_or_elbo_config and the minimal loop
  take them."""
  return dict(analytic_kl=_ANALYTIC_KL.value, stochastic_layers=int(_LAYERS.value))


def iwae_or_elbo_config(
  k: int, *, analytic_kl: bool = False, stochastic_layers: int = 1, **overrides
):
  """The default config with K samples: the ELBO at K=1, IWAE beyond. The KL is sampled
  (as in Burda et al.'s VAE) unless analytic_kl: the minimal loop is given the same.
  stochastic_layers=2: Burda et al.'s 2-layer model instead. overrides win over all of it."""
  fields = dict(
    objective="elbo" if k == 1 else "iwae",
    num_samples=k,
    analytic_kl=analytic_kl and k == 1,
    **(TWO_LAYERS if stochastic_layers == 2 else {}),
  )
  return build_config({**fields, **overrides})


def bench_training(dataset, k: int, batch_size: int) -> None:
  """The library's training epochs against the minimal loop's, interleaved round by round."""
  num_train = dataset.train_images.shape[0]
  config = iwae_or_elbo_config(
    k, batch_size=batch_size, dtype=_DTYPE.value, num_seeds=_NUM_SEEDS.value, **_model_flags()
  )
  experiment = Experiment(config, dataset)
  state = experiment.initial_state()
  keys, images, labels = experiment.train_inputs()
  base_epoch, base_state = baseline_epoch_fn(config, num_train, loss_value=_LOSS_VALUE.value)
  base_images = jax.device_put(dataset.train_images)
  epochs = max(1, _EPOCHS_PER_ROUND.value if k == 1 else _EPOCHS_PER_ROUND.value // 3)
  # Compile both, then time interleaved rounds.
  state, _ = experiment.train_chunk(state, keys, images, labels)
  base_state, _ = base_epoch(base_state, base_images, jax.random.key(0))
  jax.block_until_ready((state, base_state))
  lib_times, base_times, roofline = [], [], []
  for r in range(_ROUNDS.value):
    start = time.perf_counter()
    for _ in range(epochs):
      experiment.copy_state(state)  # train_and_evaluate's copy of the last good state
      state, _ = experiment.train_chunk(state, keys, images, labels)
    jax.block_until_ready(state)
    lib_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for e in range(epochs):
      base_state, _ = base_epoch(base_state, base_images, jax.random.key(r * epochs + e))
    jax.block_until_ready(base_state)
    base_times.append(time.perf_counter() - start)
    roofline.append(matmul_gflops(repeats=3))
  images_per_round = epochs * experiment.steps_per_epoch * batch_size
  lib = config.num_seeds * images_per_round / np.median(lib_times)
  base = images_per_round / np.median(base_times)
  # Each round's own ratio, its two loops timed back to back: their spread shows how
  # steady the (shared) machine was during the run.
  round_ratios = config.num_seeds * np.array(base_times) / np.array(lib_times)
  gflops = lib * train_flops_per_image(config) / 1e9
  seeds = f", {config.num_seeds} seeds" if config.num_seeds > 1 else ""
  report(
    f"batch {batch_size:<4d} K={k:<3d} {_model_name(config):13s} library ({config.dtype}{seeds})"
    f" {lib:9.0f} img/s | minimal loop {base:9.0f} img/s | ratio {lib / base:.3f}"
    f" (rounds {round_ratios.min():.2f}-{round_ratios.max():.2f})"
    f" | {gflops:.0f} GFLOP/s = {gflops / np.median(roofline):.2f}"
    f" of the matmul roofline ({np.median(roofline):.0f} GFLOP/s)",
    batch=batch_size,
    K=k,
    objective=_model_name(config),
    dtype=config.dtype,
    seeds=config.num_seeds,
    library_img_per_s=lib,
    minimal_loop_img_per_s=base,
    ratio=lib / base,
    round_ratio_min=float(round_ratios.min()),
    round_ratio_max=float(round_ratios.max()),
    roofline_fraction=gflops / np.median(roofline),
  )


def _timed_run(config, dataset, epochs: int) -> tuple[float, float]:
  """(seconds from building the Experiment to the last epoch's state, seconds of the
  epochs after the first) of one program training config for `epochs` epochs."""
  start = time.perf_counter()
  experiment = Experiment(config, dataset)
  state = experiment.initial_state()
  keys, images, labels = experiment.train_inputs()
  state, _ = experiment.train_chunk(state, keys, images, labels)
  jax.block_until_ready(state)
  after_first = time.perf_counter()
  for _ in range(epochs - 1):
    state, _ = experiment.train_chunk(state, keys, images, labels)
  jax.block_until_ready(state)
  end = time.perf_counter()
  return end - start, end - after_first


def bench_sweep(dataset) -> None:
  """A sweep of N learning rates in one program against N separate runs, each timed from
  the Experiment's construction (compilation included)."""
  epochs = _SWEEP_EPOCHS.value
  if epochs < 2:
    raise app.UsageError("--sweep_epochs must be at least 2 (the steady rate needs one more).")
  for batch_size in map(int, _BATCH_SIZES.value):
    for k in map(int, _KS.value):
      config = iwae_or_elbo_config(k, batch_size=batch_size, **_model_flags())
      images_per_epoch = (dataset.train_images.shape[0] // batch_size) * batch_size
      for n in map(int, _SWEEP_MEMBERS.value):
        rates = np.geomspace(1e-4, 3e-3, n)
        swept = config.copy_and_resolve_references()
        swept.sweep = f"learning_rate={','.join(f'{r:.6g}' for r in rates)}"
        separate_configs = []
        for rate in rates:
          separate_configs.append(config.copy_and_resolve_references())
          separate_configs[-1].learning_rate = float(rate)
        # Rounds alternate which side goes first, so that a machine's drift hits both.
        sweep_times, separate_times = [], []
        for r in range(_ROUNDS.value):
          for side in ("sweep", "separate") if r % 2 == 0 else ("separate", "sweep"):
            if side == "sweep":
              sweep_times.append(_timed_run(swept, dataset, epochs))
            else:
              runs = [_timed_run(one, dataset, epochs) for one in separate_configs]
              separate_times.append(np.sum(runs, axis=0))
        sweep_total, sweep_steady = np.median(sweep_times, axis=0)
        separate_total, separate_steady = np.median(separate_times, axis=0)
        steady_images = n * (epochs - 1) * images_per_epoch
        report(
          f"batch {batch_size:<4d} K={k:<3d} {n:2d} members x {epochs} epochs: one program "
          f"{sweep_total:7.1f} s, {n} separate runs {separate_total:7.1f} s: "
          f"{separate_total / sweep_total:5.2f}x | steady {steady_images / sweep_steady:8.0f} "
          f"img/s against {steady_images / separate_steady:8.0f}: "
          f"{separate_steady / sweep_steady:5.2f}x",
          batch=batch_size,
          K=k,
          members=n,
          epochs=epochs,
          sweep_seconds=sweep_total,
          separate_seconds=separate_total,
          speedup=separate_total / sweep_total,
          sweep_steady_img_per_s=steady_images / sweep_steady,
          separate_steady_img_per_s=steady_images / separate_steady,
          steady_speedup=separate_steady / sweep_steady,
        )


#: Tomczak & Welling 2018's one-stochastic-layer VAE (--mode=prior).
TOMCZAK2018 = dict(tomczak2018_vae_static.NETWORK, prior_components=500, analytic_kl=False)


def _time(fn, *args, repeats: int = 20) -> float:
  """Median seconds of fn(*args) (compiled by a first call)."""
  jax.block_until_ready(fn(*args))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds.append(time.perf_counter() - start)
  return float(np.median(seconds))


def bench_priors(dataset) -> None:
  """A training epoch with each prior, interleaved; the mixture density against autodiff."""
  runs = {}
  for prior in ("standard_normal", "mixture", "vampprior"):
    experiment = Experiment(build_config(dict(TOMCZAK2018, prior=prior)), dataset)
    keys, images, labels = experiment.train_inputs()
    state, _ = experiment.train_chunk(experiment.initial_state(), keys, images, labels)
    runs[prior] = [experiment, jax.block_until_ready(state), (keys, images, labels), []]
  for _ in range(_ROUNDS.value):
    for run in runs.values():
      experiment, state, inputs, times = run
      start = time.perf_counter()
      run[1], _ = experiment.train_chunk(state, *inputs)
      jax.block_until_ready(run[1])
      times.append(time.perf_counter() - start)
  config = runs["standard_normal"][0].config
  sizes = [PIXELS, *config.hidden, 2 * config.latent_dim]
  # A gated hidden layer is two dense maps; the output layer one.
  encoder = 2 * multiply_adds(sizes[:-1]) + multiply_adds(sizes[-2:])
  decoder = 2 * multiply_adds([config.latent_dim, *config.hidden[::-1]])
  decoder += multiply_adds([config.hidden[0], PIXELS])
  batch = config.batch_size
  predicted = {
    "standard_normal": 1.0,
    "mixture": 1.0,
    "vampprior": (batch * (encoder + decoder) + config.prior_components * encoder)
    / (batch * (encoder + decoder)),
  }
  images_per_epoch = runs["standard_normal"][0].steps_per_epoch * batch
  standard = images_per_epoch / np.median(runs["standard_normal"][3])
  for prior, (_, _, _, times) in runs.items():
    rate = images_per_epoch / np.median(times)
    report(
      f"Tomczak & Welling VAE, batch {batch}, prior {prior:15s} {rate:8.0f} img/s"
      f" | {standard / rate:.2f}x the standard prior's time (its matmuls: "
      f"{predicted[prior]:.2f}x)",
      prior=prior,
      img_per_s=rate,
      cost_vs_standard=standard / rate,
      matmul_cost_vs_standard=predicted[prior],
    )
  keys = jax.random.split(jax.random.key(0), 3)
  z = jax.random.normal(keys[0], (1, batch, config.latent_dim))
  means = jax.random.normal(keys[1], (config.prior_components, config.latent_dim))
  logvars = -1.0 + 0.3 * jax.random.normal(keys[2], means.shape)
  log_weights = jnp.full(means.shape[:1], -np.log(means.shape[0]))

  def by_broadcasting(z, means, logvars):
    log_components = vae_jax.log_normal(z[..., None, :], means[None, None], logvars[None, None])
    return jax.nn.logsumexp(log_components + log_weights[None, None], axis=-1)

  def library(z, means, logvars):
    return priors.log_mixture_of_gaussians(z, log_weights, means, logvars)

  seconds = {}
  for name, density in (("library", library), ("autodiff", by_broadcasting)):
    value_and_grad = jax.jit(
      jax.value_and_grad(lambda *a, d=density: jnp.sum(d(*a)), argnums=(0, 1, 2))
    )
    seconds[name] = _time(value_and_grad, z, means, logvars)
  report(
    f"mixture log-density, value and gradient, {batch} samples x"
    f" {config.prior_components} components x {config.latent_dim} dims: library"
    f" {seconds['library'] * 1e3:.2f} ms | broadcast expression through autodiff"
    f" {seconds['autodiff'] * 1e3:.2f} ms | {seconds['autodiff'] / seconds['library']:.1f}x",
    mixture_library_ms=seconds["library"] * 1e3,
    mixture_autodiff_ms=seconds["autodiff"] * 1e3,
  )


def bench_precision(dataset) -> None:
  """IWAE K=50 in float32 and bfloat16 for the same number of epochs: speed and test bounds.

  Two seeds per dtype, to show the seed-to-seed spread beside the precision gap.
  Every model is evaluated in float32 (the effect of bf16 training, not of bf16
  evaluation): the test ELBO (one sample, analytic KL) and the IWAE-50 bound
  that the runs maximize.
  """
  # The library's per-example evaluation, with 50 samples for the IWAE-50 bound.
  evaluator = Experiment(
    iwae_or_elbo_config(50, eval_num_samples=50, eval_chunk_size=50, eval_iwae_samples=(50,)),
    dataset,
  )
  test_x, test_labels = evaluator.eval_inputs(dataset.test_images, dataset.test_labels)

  results = {}
  for dtype in ("float32", "bfloat16"):
    for seed in (0, 1):
      config = iwae_or_elbo_config(50, dtype=dtype, seed=seed)
      experiment = Experiment(config, dataset)
      state = experiment.initial_state()
      keys, images, labels = experiment.train_inputs()
      train_chunk = experiment.train_chunk.lower(state, keys, images, labels).compile()
      start = time.perf_counter()
      for _ in range(_BUDGET_EPOCHS.value):
        state, _ = train_chunk(state, keys, images, labels)
      jax.block_until_ready(state)
      seconds = time.perf_counter() - start
      rate = _BUDGET_EPOCHS.value * experiment.steps_per_epoch * config.batch_size / seconds
      examples = evaluator.evaluate_examples(
        evaluator.take_member(state["params"], 0),
        {},
        test_x,
        test_labels,
        0,
        block_size=len(test_x),
      )
      elbo, iwae = float(np.mean(examples["elbo"])), float(np.mean(examples["iwae_50"]))
      results[dtype, seed] = np.array([rate, elbo, iwae])
      report(
        f"{dtype:8s} seed {seed}: IWAE K=50, {_BUDGET_EPOCHS.value} epochs of"
        f" {experiment.num_train} images: {rate:6.0f} img/s, {seconds:.0f} s,"
        f" test ELBO {elbo:.2f}, test IWAE-50 {iwae:.2f}",
        dtype=dtype,
        seed=seed,
        epochs=_BUDGET_EPOCHS.value,
        img_per_s=rate,
        test_elbo=elbo,
        test_iwae_50=iwae,
      )
  paired = [results["bfloat16", seed] - results["float32", seed] for seed in (0, 1)]
  spread = np.abs(results["float32", 1] - results["float32", 0])
  speed = np.mean([results["bfloat16", seed][0] / results["float32", seed][0] for seed in (0, 1)])
  print(
    f"bfloat16 / float32 on {jax.devices()[0].device_kind}: speed {speed:.2f}x;"
    f" bf16 - fp32 (seed 0, seed 1): test ELBO {paired[0][1]:+.2f}, {paired[1][1]:+.2f},"
    f" IWAE-50 {paired[0][2]:+.2f}, {paired[1][2]:+.2f} nats"
    f" (fp32 seed 1 vs seed 0: ELBO {spread[1]:.2f}, IWAE-50 {spread[2]:.2f})"
  )


if __name__ == "__main__":
  app.run(main)
