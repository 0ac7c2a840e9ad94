"""Pictures: each function returns a uint8 image array [H, W, C]; save_png writes one.

Grids are scaled up with nearest-neighbour so that an image is at least
MIN_IMAGE_PIXELS tall, and `annotate` writes a title and row labels into the
picture, so that a PNG still says what it shows when it is copied elsewhere.
matplotlib draws the scatter and the curves on its Agg canvas (no display, no
pyplot) and lends its bundled font to the annotations.
"""

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from vae_jax import posteriors

#: Images are scaled up to at least this height (a 28-pixel digit is shown 2x).
MIN_IMAGE_PIXELS = 56
#: Training curves of this many epochs or more get a log epoch axis.
LOG_SCALE_EPOCHS = 1000


def image_grid(
  images: np.ndarray, *, columns: int, padding: int = 1, scale: int | None = None
) -> np.ndarray:
  """Tiles images [N, H, W, C] in [0, 1] into one uint8 picture, row by row.

  Args:
    scale: nearest-neighbour magnification; None: the smallest that makes an image
      at least MIN_IMAGE_PIXELS tall.

  Returns:
    [scale * (rows * (H + padding) + padding), scale * (columns * (W + padding) + padding), C].
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  scale = scale or max(1, -(-MIN_IMAGE_PIXELS // height))
  rows = -(-n // columns)
  grid = np.ones(
    (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
    np.float32,
  )
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    top, left = padding + row * (height + padding), padding + column * (width + padding)
    grid[top : top + height, left : left + width] = image
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  return np.round(grid * 255).astype(np.uint8)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def annotate(picture: np.ndarray, title: str, *, row_labels: list[str] | None = None) -> np.ndarray:
  """The picture on a white RGB canvas with `title` (lines split at "\\n") above it and,
  when given, one label left of each of its equally tall rows."""
  picture = np.asarray(picture, np.uint8)
  if picture.shape[-1] == 1:
    picture = np.repeat(picture, 3, axis=-1)
  title_font, label_font = _font(14), _font(13)
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  lines = title.split("\n")
  line_height = 20
  label_width = 0
  if row_labels:
    label_width = 10 + max(measure.textlength(label, font=label_font) for label in row_labels)
  title_width = max(measure.textlength(line, font=title_font) for line in lines)
  top, left = 8 + line_height * len(lines), int(label_width)
  height, width = picture.shape[:2]
  canvas = Image.new("RGB", (max(left + width, int(title_width) + 16), top + height), "white")
  canvas.paste(Image.fromarray(picture), (left, top))
  draw = ImageDraw.Draw(canvas)
  for index, line in enumerate(lines):
    draw.text((8, 4 + line_height * index), line, fill="black", font=title_font)
  for index, label in enumerate(row_labels or []):
    centre = top + (index + 0.5) * height / len(row_labels)
    draw.text((4, centre), label, fill="black", font=label_font, anchor="lm")
  return np.asarray(canvas)


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
  """Labelled rows alternate: `columns` originals, then their reconstructions from the
  posterior mean.

  Args:
    model: a VAE.
    x: model inputs [N, H, W, C], N a multiple of columns.
    images: the same images in [0, 1], for display.
    labels: [N] for a conditional model.
  """
  mean = posteriors.location(model.encode(x, labels))
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
  """One row per pair: decoder means along the line between the posterior means.

  labels: the pairs' class for a conditional model (decoded with it along the row).
  """
  mean_from = posteriors.location(model.encode(x_from, labels))
  mean_to = posteriors.location(model.encode(x_to, labels))
  weights = jnp.linspace(0.0, 1.0, steps)[None, :, None]
  z = (1 - weights) * mean_from[:, None] + weights * mean_to[:, None]  # [pairs, steps, Z]
  pairs = z.shape[0]
  row_labels = None if labels is None else jnp.repeat(labels, steps)
  decoded = model.decode_mean(z.reshape(pairs * steps, -1), row_labels)
  return image_grid(decoded, columns=steps)


_TITLE_CHARACTERS = 72  #: per line of a 9-point title, about the width of a _figure()


def _figure():
  figure = Figure(figsize=(6, 4.8), dpi=100)
  FigureCanvasAgg(figure)
  return figure, figure.add_subplot()


def _wrapped(title: str) -> str:
  """A plot's title in lines that fit its width (a long one would be cut off at the
  edge), broken after commas where it can be."""
  lines = []
  for line in title.splitlines():
    current = ""
    for part in line.split(", "):
      joined = f"{current}, {part}" if current else part
      if len(joined) <= _TITLE_CHARACTERS or not current:
        current = joined
      else:
        lines.extend(textwrap.wrap(current + ",", _TITLE_CHARACTERS))
        current = part
    lines.extend(textwrap.wrap(current, _TITLE_CHARACTERS) or [""])
  return "\n".join(lines)


def _figure_array(figure) -> np.ndarray:
  figure.tight_layout()
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def latent_scatter(
  means: np.ndarray, labels: np.ndarray | None = None, *, title: str = ""
) -> np.ndarray:
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
  if labels is None:  # a dataset without classes
    axes.scatter(points[:, 0], points[:, 1], s=4)
  else:
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="tab10")
    figure.colorbar(scatter, ax=axes, label="class")
  axes.set_xlabel(axis_names[0])
  axes.set_ylabel(axis_names[1])
  axes.set_title("posterior means of test images")
  if title:
    figure.suptitle(_wrapped(title), fontsize=9)
  return _figure_array(figure)


def training_curves(records: list[dict], *, title: str = "") -> np.ndarray:
  """The training objective (-loss) and evaluation ELBOs per epoch, from metrics.jsonl."""
  figure, axes = _figure()
  epochs = [record["epoch"] for record in records]
  # -loss; records written before the loss was logged have "train/objective" instead.
  train = [(r["epoch"], -r.get("train/loss", -r.get("train/objective", np.nan))) for r in records]
  axes.plot(*zip(*train), label="train: -loss")
  for name, label in (("valid/elbo", "validation ELBO"), ("test/elbo", "test ELBO")):
    if name in records[0]:
      axes.plot(epochs, [record[name] for record in records], label=label)
  if epochs[-1] >= LOG_SCALE_EPOCHS:  # most is learnt early; a log axis shows every stage
    axes.set_xscale("log")
    axes.set_xlabel("epoch (log scale)")
  else:
    axes.set_xlabel("epoch")
  axes.set_ylabel("nats")
  axes.legend()
  if title:
    axes.set_title(_wrapped(title), fontsize=9)
  return _figure_array(figure)


def sweep_curves(
  epochs: list[int], curves: dict[str, np.ndarray], *, ylabel: str, title: str = ""
) -> np.ndarray:
  """Each sweep member's curve on one plot: curves maps a member's name to its value per
  epoch (NaN where it diverged)."""
  figure, axes = _figure()
  for name, values in curves.items():
    axes.plot(epochs, values, label=name)
  if epochs[-1] >= LOG_SCALE_EPOCHS:
    axes.set_xscale("log")
  axes.set_xlabel("epoch (log scale)" if epochs[-1] >= LOG_SCALE_EPOCHS else "epoch")
  axes.set_ylabel(ylabel)
  axes.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
  if title:
    axes.set_title(_wrapped(title), fontsize=9)
  return _figure_array(figure)


def rate_distortion(
  rates: np.ndarray, distortions: np.ndarray, labels: list[str], *, title: str = ""
) -> np.ndarray:
  """Alemi et al. 2018's plane: distortion D = -E[log p(x|z)] across, rate R = KL up, one
  point per member, and the dotted line of the best member's ELBO (D + R = -ELBO)."""
  rates, distortions = np.asarray(rates, np.float64), np.asarray(distortions, np.float64)
  figure, axes = _figure()
  axes.scatter(distortions, rates, zorder=3)
  for d, r, label in zip(distortions, rates, labels):
    axes.annotate(label, (d, r), textcoords="offset points", xytext=(4, 4), fontsize=7)
  best = np.min(distortions + rates)  # -ELBO
  axes.margins(x=0.25)  # room for the labels
  low, high = axes.get_xlim()
  axes.plot(
    [low, high],
    [best - low, best - high],
    ":",
    color="grey",
    label=f"D + R = {best:.1f}: the best ELBO",
  )
  axes.set_xlim(low, high)
  axes.set_ylim(0, max(1.0, rates.max() * 1.15))
  axes.set_xlabel("distortion D = -reconstruction (nats)")
  axes.set_ylabel("rate R = KL (nats)")
  axes.legend(fontsize=7)
  if title:
    axes.set_title(_wrapped(title), fontsize=9)
  return _figure_array(figure)


def heatmap(
  values: np.ndarray,
  rows: tuple[str, list],
  columns: tuple[str, list],
  *,
  label: str,
  title: str = "",
) -> np.ndarray:
  """values[i, j] for the ith value of one swept field and the jth of another, written in
  each cell (NaN cells, e.g. diverged, blank)."""
  values = np.asarray(values, np.float64)
  figure, axes = _figure()
  image = axes.imshow(values, cmap="viridis", aspect="auto")
  figure.colorbar(image, ax=axes, label=label)
  (row_name, row_values), (column_name, column_values) = rows, columns
  axes.set_yticks(range(len(row_values)), [f"{v:g}" for v in row_values])
  axes.set_xticks(range(len(column_values)), [f"{v:g}" for v in column_values])
  axes.set_ylabel(row_name)
  axes.set_xlabel(column_name)
  middle = np.nanmean(values)
  for (i, j), value in np.ndenumerate(values):
    if np.isfinite(value):
      axes.text(
        j,
        i,
        f"{value:.2f}",
        ha="center",
        va="center",
        fontsize=8,
        color="black" if value > middle else "white",
      )
  if title:
    axes.set_title(_wrapped(title), fontsize=9)
  return _figure_array(figure)
