"""Pictures: each function returns a uint8 image array [H, W, C]; save_png writes one.

matplotlib draws the scatter and the curves on its Agg canvas (no display, no pyplot).
"""

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def image_grid(images: np.ndarray, *, columns: int, padding: int = 1) -> np.ndarray:
  """Tiles images [N, H, W, C] in [0, 1] into one uint8 picture, row by row.

  Returns:
    [rows * (H + padding) + padding, columns * (W + padding) + padding, C] uint8.
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  rows = -(-n // columns)
  grid = np.ones(
    (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
    np.float32,
  )
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    top, left = padding + row * (height + padding), padding + column * (width + padding)
    grid[top : top + height, left : left + width] = image
  return np.round(grid * 255).astype(np.uint8)


def save_png(path: str, picture: np.ndarray) -> None:
  """Saves a uint8 [H, W, 1 or 3] picture."""
  if picture.shape[-1] == 1:
    picture = picture[..., 0]
  Image.fromarray(picture).save(path)


# --- Pictures of a model: each returns a uint8 image array [H, W, C] --------------------------


def prior_samples(model, key, *, rows: int, columns: int, labels=None) -> np.ndarray:
  """Mean images of p(x|z) at prior draws of z; for a conditional model pass
  labels [rows * columns] (one class per row gives one row per class)."""
  decode_prior = jax.jit(model.decode_prior, static_argnames="num_samples")
  samples = decode_prior(key, labels, num_samples=rows * columns)
  return image_grid(samples, columns=columns)


def reconstructions(model, x, images, labels=None, *, columns: int = 8) -> np.ndarray:
  """Rows alternate: `columns` images, then their reconstructions from the posterior mean.

  Args:
    model: a VAE.
    x: model inputs [N, H, W, C], N a multiple of columns.
    images: the same images in [0, 1], for display.
    labels: [N] for a conditional model.
  """
  mean, _ = model.encode(x, labels)
  decoded = model.decode_mean(mean, labels)
  rows = x.shape[0] // columns
  pairs = np.stack(
    [
      np.asarray(images).reshape(rows, columns, *x.shape[1:]),
      np.asarray(decoded).reshape(rows, columns, *x.shape[1:]),
    ],
    1,
  )
  return image_grid(pairs.reshape(2 * rows * columns, *x.shape[1:]), columns=columns)


def latent_manifold(model, *, size: int = 20, labels=None) -> np.ndarray:
  """Decoder means over a size x size grid of a 2-D latent space, spaced by the Gaussian
  inverse CDF (Kingma & Welling 2013, Figure 4)."""
  if model.latent_dim != 2 or not model.has_analytic_kl:
    raise ValueError(
      f"latent_manifold needs a 2-D latent space with a N(0, I) prior, got {model.latent_dim} "
      f"dimensions{'' if model.has_analytic_kl else ' and another prior'}."
    )
  quantiles = jax.scipy.special.ndtri(jnp.linspace(0.5 / size, 1 - 0.5 / size, size))
  # Columns run along z1 (increasing), rows along z2 (decreasing, so up is up).
  z1, z2 = jnp.meshgrid(quantiles, quantiles[::-1], indexing="xy")
  z = jnp.stack([z1, z2], -1).reshape(-1, 2)
  if labels is not None:
    labels = jnp.full((size * size,), labels)
  return image_grid(model.decode_mean(z, labels), columns=size)


def interpolations(model, x_from, x_to, *, steps: int = 10, labels=None) -> np.ndarray:
  """One row per pair: decoder means along the line between the posterior means."""
  mean_from, _ = model.encode(x_from, labels)
  mean_to, _ = model.encode(x_to, labels)
  weights = jnp.linspace(0.0, 1.0, steps)[None, :, None]
  z = (1 - weights) * mean_from[:, None] + weights * mean_to[:, None]  # [pairs, steps, Z]
  pairs = z.shape[0]
  row_labels = None if labels is None else jnp.repeat(labels, steps)
  decoded = model.decode_mean(z.reshape(pairs * steps, -1), row_labels)
  return image_grid(decoded, columns=steps)


def _figure():
  figure = Figure(figsize=(5, 4), dpi=100)
  FigureCanvasAgg(figure)
  return figure, figure.add_subplot()


def _figure_array(figure) -> np.ndarray:
  figure.tight_layout()
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def latent_scatter(means: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
  """Posterior means of a test set, coloured by class: the latents themselves when 2-D,
  otherwise their first two principal components."""
  means = np.asarray(means, np.float64)
  if means.shape[1] > 2:
    centred = means - means.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points, axis_names = centred @ components[:2].T, ("PC 1", "PC 2")
  else:
    points, axis_names = means, ("z1", "z2")
  figure, axes = _figure()
  scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="tab10")
  if labels is not None:
    figure.colorbar(scatter, ax=axes, label="class")
  axes.set_xlabel(axis_names[0])
  axes.set_ylabel(axis_names[1])
  axes.set_title("posterior means of test images")
  return _figure_array(figure)


def training_curves(records: list[dict]) -> np.ndarray:
  """The training objective (-loss) and evaluation ELBOs per epoch, from metrics.jsonl."""
  figure, axes = _figure()
  epochs = [record["epoch"] for record in records]
  # -loss; records written before the loss was logged have "train/objective" instead.
  train = [(r["epoch"], -r.get("train/loss", -r.get("train/objective", np.nan))) for r in records]
  axes.plot(*zip(*train), label="train objective")
  for name in ("valid/elbo", "test/elbo"):
    if name in records[0]:
      axes.plot(epochs, [record[name] for record in records], label=name)
  axes.set_xlabel("epoch")
  axes.set_ylabel("nats")
  axes.legend()
  return _figure_array(figure)
