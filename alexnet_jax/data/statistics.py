"""The pixel statistics a run normalizes with and draws its lighting noise from (§4.1).

Two sets, chosen by `config.augment.statistics`:
  * 'imagenet' (the default, the paper's recipe): ImageNet's published per-channel mean and std and
    the eigenvectors and eigenvalues of its RGB covariance, whatever the dataset;
  * 'dataset': the same four measured on the run's own training split (§4.1 did its PCA
    "throughout the ImageNet training set"), from exact integer sums of its pixels (`PixelSums`:
    alexnet_jax/data/measure.py decodes the images, a pixel store sums its squares; either keeps
    the sums beside the data). A run records them in config.json
    (`config.augment.mean_rgb`, ...), where the device steps, evaluation, prediction and the
    neighbours figure read them: constants known on the host at start, baked into the jitted steps.

Units. Means and stds are on the 0..255 scale of the pixels. Eigenvalues follow ImageNet's published
ones: eigenvalues of the covariance of pixels on the 0..1 scale, times 255, so that the paper's
alpha_i ~ N(0, 0.1) moves pixels by the same fraction of their range on either scale
(`draws.lighting_shifts`).

A greyscale dataset decoded as RGB (Fashion-MNIST) has a covariance of rank 1: one eigenvector along
(1, 1, 1)/sqrt(3), the others with eigenvalue 0 (set to exactly 0 when below 1e-9 of the largest),
so its lighting noise brightens and darkens an image without colouring it.
"""

import dataclasses
from collections.abc import Sequence
import json
import os
import tempfile

import ml_collections
import numpy as np

CHOICES = ('imagenet', 'dataset')
# The config.augment keys that record a run's statistics (`record`, `of`).
KEYS = ('mean_rgb', 'std_rgb', 'pca_eigenvalues', 'pca_eigenvectors')
_RANK_TOLERANCE = 1e-9  # eigenvalues below this fraction of the largest are 0 (rounding, not colour)


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Per-channel RGB mean and std (0..255 scale) and the RGB covariance's eigenvalues (descending;
  0..1 scale times 255, see the module's docstring) and eigenvectors (rows R, G, B; column i the
  eigenvector of eigenvalue i)."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  eigenvalues: tuple[float, float, float]
  eigenvectors: tuple[tuple[float, float, float], ...]


# ImageNet's, as published with fb.resnet.torch (datasets/imagenet.lua) and used by torchvision and
# most reimplementations of §4.1, there on the 0..1 scale: mean and std times 255, eigenvalues times
# 255 (so that alpha_i = N(0, 0.1) shifts pixels by a few grey levels on either scale).
IMAGENET = Statistics(
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    eigenvalues=tuple(255.0 * v for v in (0.2175, 0.0188, 0.0045)),
    eigenvectors=((-0.5675, 0.7192, 0.4009),
                  (-0.5808, -0.0045, -0.8140),
                  (-0.5836, -0.6948, 0.4203)))


def from_sums(count: int, sums: Sequence[int], products: Sequence[Sequence[int]]) -> Statistics:
  """The statistics of `count` RGB pixels (0..255) from their exact integer sums: `sums` [3] of
  each channel, `products` [3][3] of each pair of channels (sum of x_i * x_j).

  The covariance is computed in integers, (count * products - sums sums^T) / count^2, and only
  then rounded once to float64, so it is the same whatever order the pixels were summed in. A
  channel that never varies gets std 1, not 0: it is constant, so (x - mean) is 0 whatever divides
  it.
  """
  if count < 1:
    raise ValueError('pixel statistics of no pixels: the split is empty')
  sums = [int(s) for s in sums]
  scaled = np.array([[(count * int(products[i][j]) - sums[i] * sums[j]) for j in range(3)]
                     for i in range(3)], dtype=object)
  covariance = (scaled / (count * count)).astype(np.float64)  # 0..255 scale
  variance = np.diag(covariance)
  std = np.where(variance > 0, np.sqrt(np.maximum(variance, 0)), 1.0)
  values, vectors = np.linalg.eigh(covariance / 255.0**2)  # ascending; 0..1 scale
  values, vectors = values[::-1], vectors[:, ::-1]
  values = np.where(values > _RANK_TOLERANCE * max(values[0], 0), values, 0.0)
  # Each eigenvector's sign made definite (its first clearly non-zero component positive), so the
  # same covariance gives the same vectors whatever LAPACK returned.
  for i in range(3):
    leading = vectors[np.argmax(np.abs(vectors[:, i]) > 1e-6), i]
    vectors[:, i] *= np.sign(leading)
  return Statistics(
      mean=tuple(float(s / count) for s in sums), std=tuple(map(float, std)),
      eigenvalues=tuple(float(255.0 * v) for v in values),
      eigenvectors=tuple(tuple(map(float, row)) for row in vectors))


@dataclasses.dataclass
class PixelSums:
  """Exact sums over RGB pixels (0..255), as Python integers: how many, each channel's values [3]
  and each pair of channels' products [3][3]. Whatever order the pixels come in, the totals, and
  the statistics made from them (`from_sums`), are the same on every machine and process count.

  Measured by alexnet_jax/data/measure.py (a split's encoded images) and alexnet_jax/data/store.py
  (a pixel store's squares), and kept beside the data (`write_sums`, `read_sums`).
  """
  count: int = 0
  sums: list[int] = dataclasses.field(default_factory=lambda: [0] * 3)
  products: list[list[int]] = dataclasses.field(default_factory=lambda: [[0] * 3 for _ in range(3)])

  def add(self, count: int | np.ndarray, sums: np.ndarray, products: np.ndarray) -> None:
    """Adds partial sums, [..., 3] and [..., 3, 3] over any leading axes, held in float64: exact
    while each is an integer below 2^53 (3.4e7 pixels * 255^2 < 2.3e12); summed on in int64."""
    self.count += int(np.sum(count))
    sums = np.rint(sums).astype(np.int64).reshape(-1, 3).sum(axis=0)
    products = np.rint(products).astype(np.int64).reshape(-1, 3, 3).sum(axis=0)
    self.sums = [a + int(b) for a, b in zip(self.sums, sums)]
    self.products = [[a + int(b) for a, b in zip(row, new)]
                     for row, new in zip(self.products, products)]

  def statistics(self) -> Statistics:
    return from_sums(self.count, self.sums, self.products)


def read_sums(path: str, identity: dict) -> PixelSums | None:
  """The sums `write_sums` kept in `path` for data of this `identity`; None if there are none, or
  they are of other contents (the data was rebuilt or changed)."""
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    if record.get('identity') == identity:
      return PixelSums(record['count'], record['sums'], record['products'])
  except (OSError, ValueError, KeyError, AttributeError):
    pass
  return None


def write_sums(path: str, identity: dict, sums: PixelSums) -> None:
  """Keeps `sums` of the data `identity` names in `path` (JSON, with the statistics for a reader),
  whole or not at all: a uniquely named file renamed over `path`, so that processes measuring at
  once cannot interleave. Raises OSError (a read-only folder)."""
  record = {'identity': identity, **dataclasses.asdict(sums),
            'statistics': dataclasses.asdict(sums.statistics())}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  descriptor, partial = tempfile.mkstemp(suffix='.tmp', dir=os.path.dirname(path))
  try:
    with open(descriptor, 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=2)
    os.replace(partial, path)
  except OSError:
    os.unlink(partial)
    raise


def recorded(augment: ml_collections.ConfigDict) -> bool:
  """Whether `augment` holds a run's statistics (`record`)."""
  return all(augment.get(key) is not None for key in KEYS)


def record(augment: ml_collections.ConfigDict, statistics: Statistics) -> None:
  """Writes `statistics` into `augment`'s keys (mean_rgb, std_rgb, pca_eigenvalues,
  pca_eigenvectors), from where the run and every later reader of its config.json take them."""
  augment.mean_rgb = statistics.mean
  augment.std_rgb = statistics.std
  augment.pca_eigenvalues = statistics.eigenvalues
  augment.pca_eigenvectors = statistics.eigenvectors


def of(augment: ml_collections.ConfigDict) -> Statistics:
  """The statistics `augment` says to use: those recorded in it, else ImageNet's (also for a
  config.json written before `augment.statistics` existed).

  Raises ValueError for statistics='dataset' with nothing recorded: a run measures them at start
  (`data.dataset_statistics`, then `record`).
  """
  if recorded(augment):
    return Statistics(mean=tuple(augment.mean_rgb), std=tuple(augment.std_rgb),
                      eigenvalues=tuple(augment.pca_eigenvalues),
                      eigenvectors=tuple(tuple(row) for row in augment.pca_eigenvectors))
  if augment.get('statistics', 'imagenet') == 'imagenet':
    return IMAGENET
  raise ValueError("config.augment.statistics='dataset' but no statistics are recorded in the "
                   'config: they are measured when training starts (train.train_and_evaluate); '
                   'a workdir\'s config.json holds those its run used.')
