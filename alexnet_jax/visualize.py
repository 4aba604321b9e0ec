r"""Pictures of a trained AlexNet: conv1's kernels (the paper's Figure 3), nearest neighbours in fc7's
feature space (Figure 4), and grids of input images.

  python -m alexnet_jax.visualize kernels --workdir=DIR --out=conv1.png
  python -m alexnet_jax.visualize neighbors --workdir=DIR --out=nn.png [--num_queries=8]
      [--num_neighbors=6] [--num_train=-1]

`conv1_kernel_grid` and `image_grid` are pure functions (arrays in, uint8 [H, W, 3] out), so the
training loop can send the same pictures to TensorBoard (`metrics.MetricsWriter.write_image`).
"""

import dataclasses
import functools
import math
import sys
from collections.abc import Iterator
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import data
from alexnet_jax import evaluate
from alexnet_jax import predict
from alexnet_jax.model import ACTIVATIONS, AlexNet

COMMANDS = ('kernels', 'neighbors')
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
  kernels = np.asarray(params['conv1']['kernel'], np.float32).transpose(3, 0, 1, 2)  # HWIO -> [O, H, W, I]
  if kernels.shape[-1] != 3:
    raise ValueError(f'conv1 has {kernels.shape[-1]} input channels; only RGB kernels can be drawn.')
  if len(kernels) % groups:
    raise ValueError(f'conv1 has {len(kernels)} kernels, which do not split into {groups} groups.')
  low = kernels.min(axis=(1, 2, 3), keepdims=True)
  high = kernels.max(axis=(1, 2, 3), keepdims=True)
  cells = np.round(255 * (kernels - low) / np.maximum(high - low, 1e-12)).astype(np.uint8)
  cells = cells.repeat(scale, axis=1).repeat(scale, axis=2)
  blocks = [_tile(block, min(KERNEL_COLUMNS, len(block))) for block in np.split(cells, groups)]
  gap = np.full((cells.shape[1] // 2, blocks[0].shape[1], 3), 255, np.uint8)
  return np.concatenate([part for block in blocks for part in (gap, block)][1:])


def display_normalization(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The `mean`/`std` for `image_grid` that undo the pipeline's normalization of `config`'s images
  (empty for synthetic data, which has no pixel scale: those are stretched per image)."""
  if config.dataset in data.SYNTHETIC_DATASETS:
    return {}
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  augment = config.augment
  mean = input_pipeline.IMAGENET_MEAN_RGB if augment.subtract_mean else (0.0, 0.0, 0.0)
  std = input_pipeline.IMAGENET_STD_RGB if augment.get('divide_std', True) else (1.0, 1.0, 1.0)
  return {'mean': np.asarray(mean, np.float32), 'std': np.asarray(std, np.float32)}


def image_grid(images: np.ndarray, *, mean: np.ndarray | None = None, std: np.ndarray | None = None,
               columns: int | None = None) -> np.ndarray:
  """Images [N, H, W, 3] as one uint8 picture, `columns` per row (default: about square).

  Float images become pixels as `image * std + mean` (see `display_normalization`) or, without a
  mean, each stretched to 0..255; uint8 images are drawn as they are.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'image_grid takes RGB images [N, H, W, 3]; got shape {images.shape}.')
  if images.dtype != np.uint8:
    images = images.astype(np.float32)
    if mean is not None:
      images = images * (1.0 if std is None else std) + mean
    else:
      low = images.min(axis=(1, 2, 3), keepdims=True)
      high = images.max(axis=(1, 2, 3), keepdims=True)
      images = 255 * (images - low) / np.maximum(high - low, 1e-12)
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
  return _tile(images, columns or math.ceil(math.sqrt(len(images))), pad=2)


@functools.partial(jax.jit, static_argnums=0)
def fc7_features(model: AlexNet, params: dict[str, Any], images: jax.Array) -> jax.Array:
  """The last 4096-d hidden layer (fc7 after its ReLU, what fc8 sees), float32 [N, 4096 * width].

  Figure 4 compares "the feature activations induced by an image at the last, 4096-dimensional
  hidden layer"; the rectified activations are those. Dropout is off (train=False), which at test
  time is the paper's "multiply the outputs by 0.5" (§4.2; inverted dropout needs no rescaling).
  """
  _, state = model.apply({'params': params}, images, train=False, mutable=['intermediates'],
                         capture_intermediates=lambda module, method: module.name == 'fc7')
  hidden = state['intermediates']['fc7']['__call__'][0]
  return ACTIVATIONS[model.activation](hidden.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class Neighbors:
  """Query images and, for each, its nearest training images by fc7 distance, nearest first."""
  query_images: np.ndarray  # [Q, H, W, 3] as the pipeline gives them
  query_labels: np.ndarray  # [Q]
  images: np.ndarray  # [Q, K, H, W, 3]
  labels: np.ndarray  # [Q, K]
  indices: np.ndarray  # [Q, K] position in the training split
  distances: np.ndarray  # [Q, K] Euclidean, in fc7 space


def _split_batches(config: ml_collections.ConfigDict, split: str, batch_size: int
                   ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` with eval preprocessing (no augmentation), in order, padding masked."""
  if config.dataset in data.SYNTHETIC_DATASETS and split == config.train_split:
    # Synthetic eval batches always come from the eval split; the synthetic training stream has no
    # augmentation and starts at example 0, so its first pass is the training split.
    config = config.copy_and_resolve_references()
    config.batch_size = batch_size
    total = config.synthetic_train_examples
    batches = data.train_batches(config, start_step=0, local_batch_size=batch_size,
                                 process_index=0, process_count=1)
    for start in range(0, total, batch_size):
      yield next(batches) | {'mask': np.arange(start, start + batch_size) < total}
    return
  config = config.copy_and_resolve_references()
  config.eval_split = split
  config.eval_crops = 1
  yield from data.eval_batches(config, local_batch_size=batch_size, process_index=0,
                               process_count=1)


def nearest_neighbors(loaded: evaluate.Loaded, *, num_queries: int = 8, num_neighbors: int = 6,
                      num_train: int = -1, batch_size: int = 64) -> Neighbors:
  """The first `num_queries` images of the eval split and their nearest training images.

  Scans the first `num_train` training images (-1: all) once, keeping the running `num_neighbors`
  best per query, so memory does not grow with the training set.
  """
  config = loaded.config
  features = functools.partial(fc7_features, loaded.model)

  query_images, query_labels = [], []
  for batch in _split_batches(config, config.eval_split, batch_size):
    keep = batch['mask']
    query_images.append(batch['image'][keep])
    query_labels.append(batch['label'][keep])
    if sum(map(len, query_labels)) >= num_queries:
      break
  query_images = np.concatenate(query_images)[:num_queries]
  query_labels = np.concatenate(query_labels)[:num_queries]
  queries = np.asarray(features(loaded.params, query_images))
  num_queries = len(queries)  # the eval split may hold fewer

  k = num_neighbors
  best = {'distances': np.full((num_queries, k), np.inf, np.float32),
          'images': np.zeros((num_queries, k) + query_images.shape[1:], np.float32),
          'labels': np.full((num_queries, k), -1, np.int64),
          'indices': np.full((num_queries, k), -1, np.int64)}
  rows = np.arange(num_queries)[:, None]
  seen = 0
  for batch in _split_batches(config, config.train_split, batch_size):
    count = len(batch['label'])
    position = np.arange(seen, seen + count)
    valid = batch['mask'] & ((num_train < 0) | (position < num_train))
    candidates = np.asarray(features(loaded.params, batch['image']))
    squared = ((queries ** 2).sum(1)[:, None] + (candidates ** 2).sum(1)[None, :]
               - 2 * queries @ candidates.T)
    squared = np.where(valid[None, :], np.maximum(squared, 0), np.inf)  # [Q, B]
    order = np.argsort(np.concatenate([best['distances'], squared], axis=1), axis=1,
                       kind='stable')[:, :k]
    from_best = order < k
    in_best, in_batch = np.minimum(order, k - 1), np.maximum(order - k, 0)
    new = {'distances': np.where(from_best, best['distances'][rows, in_best], squared[rows, in_batch]),
           'labels': np.where(from_best, best['labels'][rows, in_best], batch['label'][in_batch]),
           'indices': np.where(from_best, best['indices'][rows, in_best], position[in_batch]),
           'images': np.where(from_best[..., None, None, None], best['images'][rows, in_best],
                              batch['image'][in_batch])}
    best = new
    seen += count
    if 0 <= num_train <= seen:
      break
  found = np.isfinite(best['distances'])
  if not found.all():
    raise ValueError(f'Only {int(found[0].sum())} training images were scanned; ask for at most that '
                     'many --num_neighbors.')
  return Neighbors(query_images=query_images, query_labels=query_labels, images=best['images'],
                   labels=best['labels'], indices=best['indices'],
                   distances=np.sqrt(best['distances']))


def neighbors_figure(neighbors: Neighbors, config: ml_collections.ConfigDict) -> np.ndarray:
  """Figure 4's layout: one row per query, the query first, then its neighbours, nearest first."""
  rows = np.concatenate([neighbors.query_images[:, None], neighbors.images], axis=1)
  return image_grid(rows.reshape((-1,) + rows.shape[2:]), columns=rows.shape[1],
                    **display_normalization(config))


def _save_png(image: np.ndarray, path: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(image).save(path)


def write_kernels(workdir: str, out: str, checkpoint: str = 'latest', scale: int = 4) -> np.ndarray:
  """conv1's kernel grid of a workdir's checkpoint, saved as a PNG at `out`; returns it."""
  loaded = evaluate.load(workdir, checkpoint)
  grid = conv1_kernel_grid(loaded.params, kernel_groups(loaded.config), scale=scale)
  _save_png(grid, out)
  return grid


def write_neighbors(workdir: str, out: str, checkpoint: str = 'latest', **options: Any
                    ) -> Neighbors:
  """Figure 4 for a workdir's checkpoint, saved as a PNG at `out`; `options` go to nearest_neighbors."""
  loaded = evaluate.load(workdir, checkpoint)
  neighbors = nearest_neighbors(loaded, **options)
  _save_png(neighbors_figure(neighbors, loaded.config), out)
  return neighbors


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {" or ".join(COMMANDS)}')
  options = flags.FLAGS
  try:
    if argv[1] == 'kernels':
      grid = write_kernels(options.workdir, options.out, options.checkpoint, options.scale)
      print(f'wrote {options.out}: conv1 kernels, {grid.shape[1]}x{grid.shape[0]} pixels')
      return
    neighbors = write_neighbors(options.workdir, options.out, options.checkpoint,
                                num_queries=options.num_queries,
                                num_neighbors=options.num_neighbors, num_train=options.num_train,
                                batch_size=options.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  names = predict.class_names(evaluate.load_config(options.workdir))
  print(f'wrote {options.out}: each row a query image, then its nearest training images')
  for query, labels, distances in zip(neighbors.query_labels, neighbors.labels,
                                      neighbors.distances):
    found = ', '.join(f'{names[label]} ({distance:.1f})' for label, distance in zip(labels, distances))
    print(f'  {names[query]}: {found}')


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or alexnet_jax.convert.')
  flags.DEFINE_string('out', None, 'The PNG file to write.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best (lowest eval top-1 error) or a step.')
  flags.DEFINE_integer('scale', 4, 'kernels: each kernel pixel becomes scale x scale pixels.')
  flags.DEFINE_integer('num_queries', 8, 'neighbors: query images, the first of the eval split.')
  flags.DEFINE_integer('num_neighbors', 6, 'neighbors: training images shown per query.')
  flags.DEFINE_integer('num_train', -1, 'neighbors: training images searched, from the first; -1: all.')
  flags.DEFINE_integer('batch_size', 64, 'neighbors: images per forward pass.')
  flags.mark_flags_as_required(['workdir', 'out'])


if __name__ == '__main__':
  _define_flags()
  app.run(main)
