"""Pictures of a model and its inputs, as uint8 [H, W, 3] arrays: conv1's kernels (the paper's Figure 3)
and grids of images.

Pure functions, arrays in and arrays out: the training loop sends them to TensorBoard
(`metrics.MetricsWriter.write_image`) and `alexnet_jax.visualize` saves them as PNG files.
"""

import math
from typing import Any

import ml_collections
import numpy as np

from alexnet_jax import errors

KERNEL_COLUMNS = 16  # Figure 3 shows each GPU's 48 kernels as 3 rows of 16
_PAD = 1  # white pixels between cells


def _tile(cells: np.ndarray, columns: int, pad: int = _PAD) -> np.ndarray:
  """uint8 [N, h, w, 3] cells laid out in rows of `columns` on a white background."""
  count, height, width = cells.shape[:3]
  rows = -(-count // columns)
  grid = np.full((rows * height + (rows + 1) * pad, columns * width + (columns + 1) * pad, 3), 255,
                 np.uint8)
  for i, cell in enumerate(cells):
    top = pad + (i // columns) * (height + pad)
    left = pad + (i % columns) * (width + pad)
    grid[top:top + height, left:left + width] = cell
  return grid


def kernel_groups(config: ml_collections.ConfigDict) -> int:
  """How many blocks conv1's kernels form: the paper layout's `groups` (its two GPUs), else 1."""
  return config.model.groups if config.model.variant == 'paper' else 1


def conv1_kernel_grid(params: dict[str, Any], groups: int, *, scale: int = 4) -> np.ndarray:
  """conv1's kernels as an image, uint8 [H, W, 3]: with `groups=2`, as in Figure 3, the first half of
  the kernels (the first GPU's) in a block above the second half's.

  Each kernel is stretched to 0..255 on its own and enlarged `scale` times (nearest neighbour).
  """
  kernels = np.asarray(params['conv1']['kernel'], np.float32)
  kernels = kernels.transpose(3, 0, 1, 2)  # HWIO -> [O, H, W, I]
  if kernels.shape[-1] != 3:
    raise errors.InvalidError(f'conv1 has {kernels.shape[-1]} input channels; only RGB kernels can '
                              'be drawn.')
  if len(kernels) % groups:
    raise errors.InvalidError(f'conv1 has {len(kernels)} kernels, which do not split into {groups} '
                              'groups.')
  cells = _stretched(kernels).repeat(scale, axis=1).repeat(scale, axis=2)
  blocks = [_tile(block, min(KERNEL_COLUMNS, len(block))) for block in np.split(cells, groups)]
  gap = np.full((cells.shape[1] // 2, blocks[0].shape[1], 3), 255, np.uint8)
  return np.concatenate([part for block in blocks for part in (gap, block)][1:])


def _stretched(images: np.ndarray) -> np.ndarray:
  """Float [N, H, W, C], each of the N stretched on its own to 0..255: uint8."""
  low = images.min(axis=(1, 2, 3), keepdims=True)
  high = images.max(axis=(1, 2, 3), keepdims=True)
  return np.round(255 * (images - low) / np.maximum(high - low, 1e-12)).astype(np.uint8)


def image_grid(images: np.ndarray, *, columns: int | None = None) -> np.ndarray:
  """Images [N, H, W, 3] as one uint8 picture, `columns` per row (default: about square).

  uint8 images (what the TFDS and folder sources deliver) are drawn as they are; float images
  (synthetic data, which has no pixel scale) are each stretched to 0..255.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'image_grid takes RGB images [N, H, W, 3]; got shape {images.shape}.')
  if images.dtype != np.uint8:
    images = _stretched(images.astype(np.float32))
  return _tile(images, columns or math.ceil(math.sqrt(len(images))), pad=2)


def save_png(image: np.ndarray, path: str) -> None:
  """Writes uint8 [H, W, 3] `image` to `path` as a PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(image).save(path)
