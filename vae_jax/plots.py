"""Pictures: image grids of samples and reconstructions, saved as PNG."""

import numpy as np
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
