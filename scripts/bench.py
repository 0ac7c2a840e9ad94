"""Training throughput of vae_jax's loop against a minimal JAX loop and the matmul roofline.

  python scripts/bench.py            # K=1 (ELBO) and K=50 (IWAE)
  python scripts/bench.py --ks=1 --rounds=3

Model: Burda et al. 2015's one-stochastic-layer VAE (784-200-200-50, tanh,
Bernoulli), batch 100, Adam, dynamic binarization, on the embedded 4,000
training digits. In the same run, interleaved round by round so that a noisy
machine affects both alike, it times:
  - the library: vae_jax.train.Experiment.train_chunk, one epoch per call, with
    train_and_evaluate's host copy of the state before each call;
  - a baseline: the same model, optimizer, shuffling and binarization written
    as a minimal hand-written JAX loop (jit over a lax.scan of steps);
  - the machine's fp32 matmul throughput (2048x2048 jnp.dot), the roofline.
It prints images/s, the ratio library / baseline, and achieved GFLOP/s
(multiply-adds of the dense layers, x2 for FLOPs, x3 for forward + backward)
as a fraction of the roofline.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from vae_jax import data, train

_KS = flags.DEFINE_list("ks", ["1", "50"], "Numbers of samples K to measure (1: ELBO, >1: IWAE).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds; medians are reported.")
_EPOCHS_PER_ROUND = flags.DEFINE_integer("epochs_per_round", 3, "Epochs timed per round (K=1).")

HIDDEN, LATENT, PIXELS, BATCH = (200, 200), 50, 784, 100


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  dot = jax.jit(lambda a: a @ a)
  dot(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = dot(a)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def train_flops_per_image(k: int) -> float:
  encoder = PIXELS * HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] * 2 * LATENT
  decoder = LATENT * HIDDEN[1] + HIDDEN[1] * HIDDEN[0] + HIDDEN[0] * PIXELS
  return 2 * 3 * (encoder + k * decoder)


def baseline_epoch_fn(k: int, num_train: int):
  """A minimal hand-written VAE/IWAE training epoch: what one would write in an afternoon."""
  sizes_enc = [PIXELS, *HIDDEN, 2 * LATENT]
  sizes_dec = [LATENT, *HIDDEN[::-1], PIXELS]

  def init(key):
    def mlp(key, sizes):
      keys = jax.random.split(key, len(sizes) - 1)
      return [
        (jax.random.normal(k_, (a, b)) / np.sqrt(a), jnp.zeros(b))
        for k_, a, b in zip(keys, sizes[:-1], sizes[1:])
      ]

    key_enc, key_dec = jax.random.split(key)
    return {"enc": mlp(key_enc, sizes_enc), "dec": mlp(key_dec, sizes_dec)}

  def apply(layers, h):
    for w, b in layers[:-1]:
      h = jnp.tanh(h @ w + b)
    w, b = layers[-1]
    return h @ w + b

  def loss(params, x, key):
    mean, logvar = jnp.split(apply(params["enc"], x), 2, axis=-1)
    eps = jax.random.normal(key, (k, *mean.shape))
    z = mean + jnp.exp(0.5 * logvar) * eps
    logits = apply(params["dec"], z)
    log_px = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
    log_pz = -0.5 * jnp.sum(z**2 + np.log(2 * np.pi), -1)
    log_qz = -0.5 * jnp.sum(eps**2 + logvar + np.log(2 * np.pi), -1)
    log_w = log_px + log_pz - log_qz
    return -jnp.mean(jax.nn.logsumexp(log_w, 0) - np.log(k))

  tx = optax.adam(1e-3)

  def epoch(state, images, key):
    params, opt_state = state
    order = jax.random.permutation(key, num_train)
    batches = order[: num_train // BATCH * BATCH].reshape(-1, BATCH)

    def step(carry, inputs):
      params, opt_state = carry
      index, i = inputs
      key_bin, key_z = jax.random.split(jax.random.fold_in(key, i))
      x = jax.random.bernoulli(key_bin, images[index].reshape(BATCH, -1) / 255.0).astype(
        jnp.float32
      )
      grads = jax.grad(loss)(params, x, key_z)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(
      step, (params, opt_state), (batches, jnp.arange(batches.shape[0]))
    )
    return params, opt_state

  params = init(jax.random.key(0))
  return jax.jit(epoch, donate_argnums=0), (params, tx.init(params))


def main(argv):
  del argv
  dataset = data.load_mnist_5k()
  num_train = dataset.train_images.shape[0]
  print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
  print(f"fp32 matmul roofline (2048x2048): {matmul_gflops():.0f} GFLOP/s")
  for k in map(int, _KS.value):
    config = train.build_config(
      dict(objective="elbo" if k == 1 else "iwae", num_samples=k, analytic_kl=k == 1)
    )
    experiment = train.Experiment(config, dataset)
    state = experiment.initial_state()
    keys, images, labels = experiment.place(
      (train.seed_keys(config), dataset.train_images, dataset.train_labels)
    )
    base_epoch, base_state = baseline_epoch_fn(k, num_train)
    base_images = jax.device_put(dataset.train_images)
    epochs = max(1, _EPOCHS_PER_ROUND.value if k == 1 else _EPOCHS_PER_ROUND.value // 3)
    # Compile both, then time interleaved rounds.
    state, _ = experiment.train_chunk(state, keys, images, labels)
    base_state = base_epoch(base_state, base_images, jax.random.key(0))
    jax.block_until_ready((state, base_state))
    lib_times, base_times, roofline = [], [], []
    for r in range(_ROUNDS.value):
      start = time.perf_counter()
      for _ in range(epochs):
        jax.tree.map(np.array, state)  # train_and_evaluate's host copy of the last good state
        state, _ = experiment.train_chunk(state, keys, images, labels)
      jax.block_until_ready(state)
      lib_times.append(time.perf_counter() - start)
      start = time.perf_counter()
      for e in range(epochs):
        base_state = base_epoch(base_state, base_images, jax.random.key(r * epochs + e))
      jax.block_until_ready(base_state)
      base_times.append(time.perf_counter() - start)
      roofline.append(matmul_gflops(repeats=3))
    images_per_round = epochs * experiment.steps_per_epoch * BATCH
    lib = images_per_round / np.median(lib_times)
    base = images_per_round / np.median(base_times)
    gflops = lib * train_flops_per_image(k) / 1e9
    print(
      f"K={k:<3d} {config.objective:5s} library {lib:9.0f} img/s | minimal loop {base:9.0f} img/s"
      f" | ratio {lib / base:.3f} | {gflops:.0f} GFLOP/s = {gflops / np.median(roofline):.2f}"
      f" of the matmul roofline ({np.median(roofline):.0f} GFLOP/s)"
    )


if __name__ == "__main__":
  app.run(main)
