"""Synthetic datasets made on the fly with NumPy (no TensorFlow on this path).

- `synthetic`: random images and labels, for smoke runs and benchmarks.
- `synthetic_learnable`: each class has a fixed low-frequency colour pattern; an example is its class's
  pattern plus Gaussian noise. A network that learns anything separates the classes, so tests can assert
  that training works.

Every example is a pure function of (seed, split, global example index), and the batch of step s holds the
global examples [s * batch_size, (s + 1) * batch_size). A process takes its contiguous slice of that global
batch, so 1 process and N processes (or 1 and 8 devices) see exactly the same global batch.
"""

from collections.abc import Iterator

import ml_collections
import numpy as np

from alexnet_jax.data.info import DatasetInfo

_SPLIT_IDS = {'train': 0, 'eval': 1}
_PATTERN_GRID = 4  # class patterns are a 4x4 grid of colours, upsampled to the image size
_NOISE_STD = 1.0


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  return DatasetInfo(
      num_classes=config.num_classes,
      num_train_examples=config.synthetic_train_examples,
      num_eval_examples=config.synthetic_eval_examples)


def _class_patterns(config: ml_collections.ConfigDict) -> np.ndarray:
  """[num_classes, image_size, image_size, 3] float32, fixed by the seed."""
  rng = np.random.default_rng([config.seed, 7919])
  grid = rng.standard_normal((config.num_classes, _PATTERN_GRID, _PATTERN_GRID, 3), np.float32)
  repeat = -(-config.image_size // _PATTERN_GRID)
  patterns = grid.repeat(repeat, axis=1).repeat(repeat, axis=2)
  return patterns[:, :config.image_size, :config.image_size]


def _make_examples(config: ml_collections.ConfigDict, split: str, indices: np.ndarray,
                   patterns: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """Images [len(indices), H, W, 3] and labels [len(indices)] for global example `indices`."""
  size = config.image_size
  images = np.empty((len(indices), size, size, 3), np.float32)
  labels = np.empty((len(indices),), np.int32)
  for row, index in enumerate(indices):
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], int(index)])
    labels[row] = rng.integers(config.num_classes)
    images[row] = rng.standard_normal((size, size, 3), np.float32) * _NOISE_STD
    if patterns is not None:
      images[row] += patterns[labels[row]]
  return images, labels


def _process_slice(global_batch_size: int, local_batch_size: int, process_index: int,
                   process_count: int) -> slice:
  if local_batch_size * process_count != global_batch_size:
    raise ValueError(f'local batch {local_batch_size} x {process_count} processes != global batch '
                     f'{global_batch_size}')
  return slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  patterns = _class_patterns(config) if config.dataset == 'synthetic_learnable' else None
  own = _process_slice(config.batch_size, local_batch_size, process_index, process_count)
  num_examples = config.synthetic_train_examples
  step = start_step
  while True:
    # The global batch of step s: examples s*B .. s*B+B-1 of an endless stream that walks the
    # training set in order (wrapping at its end), so each example recurs once per epoch.
    global_indices = (np.arange(config.batch_size) + step * config.batch_size) % num_examples
    images, labels = _make_examples(config, 'train', global_indices[own], patterns)
    yield {'image': images, 'label': labels}
    step += 1


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int, on_training_set: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval set (`on_training_set`: over the first `eval_train_examples` of the
  training set, all of it with -1); the last global batch is padded and its padding masked."""
  patterns = _class_patterns(config) if config.dataset == 'synthetic_learnable' else None
  global_batch_size = local_batch_size * process_count
  own = _process_slice(global_batch_size, local_batch_size, process_index, process_count)
  split, num_examples = 'eval', config.synthetic_eval_examples
  if on_training_set:
    split, num_examples = 'train', config.synthetic_train_examples
    if config.eval_train_examples > 0:
      num_examples = min(num_examples, config.eval_train_examples)
  for start in range(0, num_examples, global_batch_size):
    global_indices = np.arange(start, start + global_batch_size)[own]
    mask = global_indices < num_examples
    images, labels = _make_examples(config, split, np.where(mask, global_indices, 0), patterns)
    if config.eval_crops == 10:  # the same image as each of the five crops (mirrored on the device)
      images = np.repeat(images[:, None], 5, axis=1)
    yield {'image': images, 'label': labels, 'mask': mask}
