"""The one data interface of the project: dataset facts, training batches, evaluation batches.

The source is picked by `config.dataset`: `synthetic` and `synthetic_learnable` are made on the fly
(alexnet_jax/synthetic.py, no TensorFlow); everything else, TFDS names and `folder:/path`, goes through the
tf.data pipeline (alexnet_jax/input_pipeline.py), imported only when needed. See docs/design.md for the
shapes and the determinism contract.
"""

from collections.abc import Iterator

import ml_collections
import numpy as np

from alexnet_jax import synthetic
from alexnet_jax.dataset_info import DatasetInfo

SYNTHETIC_DATASETS = ('synthetic', 'synthetic_learnable')

__all__ = ['DatasetInfo', 'get_dataset_info', 'class_names', 'train_batches', 'eval_batches']


def _source(config: ml_collections.ConfigDict):
  if config.dataset in SYNTHETIC_DATASETS:
    return synthetic
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)
  return input_pipeline


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  return _source(config).get_dataset_info(config)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """The class names in label order, reading no image (unlike `get_dataset_info`, which counts a
  folder dataset's decodable images); None for synthetic data, whose classes have no names."""
  if config.dataset in SYNTHETIC_DATASETS:
    return None
  return _source(config).class_names(config)


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches; the first is the batch of global step `start_step`."""
  return _source(config).train_batches(
      config, start_step=start_step, local_batch_size=local_batch_size,
      process_index=process_index, process_count=process_count)


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """One padded, masked pass over this process's shard of the eval split."""
  return _source(config).eval_batches(
      config, local_batch_size=local_batch_size, process_index=process_index,
      process_count=process_count)
