"""Nearest neighbours in fc7's feature space, the paper's Figure 4: query images of the eval split and
the training images closest to them by Euclidean distance between their last hidden layer's
activations. Drawn by `python -m alexnet_jax.visualize neighbors --workdir=DIR --out=nn.png`.

The search is one streaming pass over the training split (eval preprocessing, no augmentation) that
keeps the best few per query, so it needs memory for the queries, not for the training set.
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import data
from alexnet_jax import errors
from alexnet_jax import pictures
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import pixels
from alexnet_jax.model import ACTIVATIONS, AlexNet


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


def nearest_neighbors(loaded: workdir_lib.Loaded, *, num_queries: int = 8, num_neighbors: int = 6,
                      num_train: int = -1, batch_size: int = 64) -> Neighbors:
  """The first `num_queries` images of the eval split and their nearest training images.

  Scans the first `num_train` training images (-1: all) once, keeping the running `num_neighbors`
  best per query, so memory does not grow with the training set.
  """
  config = loaded.config

  def features(params, images):
    return fc7_features(loaded.model, params, pixels.model_input({'image': images}, config.augment))

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
          'images': np.zeros((num_queries, k) + query_images.shape[1:], query_images.dtype),
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
    best = {'distances': np.where(from_best, best['distances'][rows, in_best],
                                  squared[rows, in_batch]),
            'labels': np.where(from_best, best['labels'][rows, in_best], batch['label'][in_batch]),
            'indices': np.where(from_best, best['indices'][rows, in_best], position[in_batch]),
            'images': np.where(from_best[..., None, None, None], best['images'][rows, in_best],
                               batch['image'][in_batch])}
    seen += count
    if 0 <= num_train <= seen:
      break
  found = np.isfinite(best['distances'])
  if not found.all():
    raise errors.InvalidError(f'Only {int(found[0].sum())} training images were scanned; ask for at '
                              'most that many --num_neighbors.')
  return Neighbors(query_images=query_images, query_labels=query_labels, images=best['images'],
                   labels=best['labels'], indices=best['indices'],
                   distances=np.sqrt(best['distances']))


def neighbors_figure(neighbors: Neighbors) -> np.ndarray:
  """Figure 4's layout: one row per query, the query first, then its neighbours, nearest first."""
  rows = np.concatenate([neighbors.query_images[:, None], neighbors.images], axis=1)
  return pictures.image_grid(rows.reshape((-1,) + rows.shape[2:]), columns=rows.shape[1])


def write_neighbors(workdir: str, out: str, checkpoint: str = 'latest', **options: Any
                    ) -> Neighbors:
  """Figure 4 for a workdir's checkpoint, saved as a PNG at `out`; `options` go to nearest_neighbors."""
  loaded = workdir_lib.load(workdir, checkpoint)
  neighbors = nearest_neighbors(loaded, **options)
  pictures.save_png(neighbors_figure(neighbors), out)
  return neighbors


def describe(neighbors: Neighbors, config: ml_collections.ConfigDict) -> str:
  """One line per query: its class, then each neighbour's class and distance."""
  names = data.readable_class_names(config)
  lines = []
  for query, labels, distances in zip(neighbors.query_labels, neighbors.labels,
                                      neighbors.distances):
    found = ', '.join(f'{names[label]} ({distance:.3g})'
                      for label, distance in zip(labels, distances))
    lines.append(f'  {names[query]}: {found}')
  return '\n'.join(lines)
