"""The one data interface of the project: dataset facts, training batches, evaluation batches.

The source is picked by `config.dataset`: `synthetic` and `synthetic_learnable` are made on the fly
(synthetic.py, NumPy only); `store:/path`, a pixel store, is read by position (store.py, NumPy
only); everything else, TFDS names and `folder:/path`, goes through the tf.data pipeline
(pipeline.py), imported only when needed, as TensorFlow takes seconds to import. See
docs/design.md for the shapes and the determinism contract.

The modules of this package, by concern:
  info.py        DatasetInfo: what the training loop knows about a dataset before reading it
  synthetic.py   random and learnable synthetic batches
  sources.py     TFDS datasets and image folders as per-process shards readable by position
  folders.py     a folder dataset's files, classes and (remembered) decode check
  stream.py      which examples a process reads (its shard), and the endless, seekable training stream
  geometry.py    where the crops of §4.1 lie in a source image
  draws.py       the random choices of §4.1 (crop position, flip, lighting), from (seed, epoch, index)
  decode.py      decoding and cropping one image (TensorFlow ops)
  pipeline.py    the tf.data wiring of all of the above into batches
  pixels.py      the last steps, on the device: resize, flip, lighting shift, mean and std
  statistics.py  the pixel statistics used for normalization and lighting: ImageNet's or the split's
  measure.py     measuring a training split's pixel statistics once, cached beside the data
  subset.py      a class-balanced, deterministic subset of a split (`config.train_examples`)
  downsample.py  a copy of a dataset at shorter side 256 (`prepare --downsample_to`)
  store.py       a pixel store: the images decoded once, at 256x256, read by position (NumPy only)
  store_writer.py  writes a pixel store (`prepare --store_to`)
  resumable.py   what both copies share: splits written resumably, a record that refuses a mismatch
  fashion_mnist.py  Fashion-MNIST built offline from its idx files
"""

from collections.abc import Iterator
import functools

import ml_collections
import numpy as np

from alexnet_jax.data import statistics
from alexnet_jax.data import store
from alexnet_jax.data import synthetic
from alexnet_jax.data.info import DatasetInfo

SYNTHETIC_DATASETS = ('synthetic', 'synthetic_learnable')
FOLDER_PREFIX = 'folder:'  # folders.PREFIX, which imports TensorFlow
STORE_PREFIX = store.PREFIX

__all__ = ['DatasetInfo', 'get_dataset_info', 'class_names', 'readable_class_names',
           'dataset_statistics', 'train_batches', 'eval_batches']


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Classes and split sizes; a folder dataset's sizes count its decodable images."""
  if config.dataset in SYNTHETIC_DATASETS:
    return synthetic.get_dataset_info(config)
  if config.dataset.startswith(STORE_PREFIX):
    return store.get_dataset_info(config)
  from alexnet_jax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)
  return sources.get_dataset_info(config)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """The class names in label order, reading no image (unlike `get_dataset_info`, which counts a
  folder dataset's decodable images); None for synthetic data, whose classes have no names."""
  if config.dataset in SYNTHETIC_DATASETS:
    return None
  if config.dataset.startswith(STORE_PREFIX):
    return store.class_names(config)
  from alexnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.class_names(config)


@functools.cache
def _imagenet_readable_names() -> dict[str, str]:
  """Synset id -> readable name for the 1000 ILSVRC2012 classes, from the lists TFDS ships."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  from tensorflow_datasets.datasets.siscore import labels as imagenet_labels
  with open(imagenet_common.label_names_file(), encoding='utf-8') as f:
    synsets = f.read().split()
  # Both lists are in ILSVRC2012's label order (sorted synset ids), which torchvision also uses.
  return dict(zip(synsets, imagenet_labels.IMAGENET_LABELS_LIST, strict=True))


def readable_class_names(config: ml_collections.ConfigDict) -> list[str]:
  """A readable name for each of the model's `config.num_classes` outputs.

  TFDS label names, with ImageNet's readable name in front of each that is an ILSVRC2012 synset id
  (`imagenet2012`, `imagenette`, ...); the class folder names of `folder:` datasets; `class k` where
  the names are unknown (synthetic data, a folder dataset no longer on disk) or do not match the
  model's outputs.
  """
  try:
    names = class_names(config)
  except (FileNotFoundError, store.StoreError):  # a dataset that is gone: the model still predicts
    names = None
  if names is not None and not config.dataset.startswith(FOLDER_PREFIX):
    readable = _imagenet_readable_names()
    names = [f'{readable[n]} ({n})' if n in readable else n for n in names]
  if names is None or len(names) != config.num_classes:
    return [f'class {i}' for i in range(config.num_classes)]
  return list(names)


def dataset_statistics(config: ml_collections.ConfigDict) -> statistics.Statistics:
  """The pixel statistics of `config.train_split` (per-channel mean and std, RGB covariance
  eigenvectors and eigenvalues), measured once and cached beside the data (measure.py)."""
  if config.dataset in SYNTHETIC_DATASETS:
    raise ValueError(f'{config.dataset} images are network inputs already: they have no pixel '
                     "statistics; use augment.statistics='imagenet'.")
  if config.dataset.startswith(STORE_PREFIX):
    return store.split_statistics(config)
  from alexnet_jax.data import measure  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return measure.split_statistics(config)


def _batches(config: ml_collections.ConfigDict):
  """The module that makes `config.dataset`'s batches."""
  if config.dataset in SYNTHETIC_DATASETS:
    return synthetic
  if config.dataset.startswith(STORE_PREFIX):
    return store
  from alexnet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches; the first is the batch of global step `start_step`."""
  return _batches(config).train_batches(
      config, start_step=start_step, local_batch_size=local_batch_size,
      process_index=process_index, process_count=process_count)


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int, on_training_set: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One padded, masked pass over this process's shard of the eval split; with `on_training_set`,
  over the training examples a run measures its error on without augmentation or dropout
  (`config.eval_train_examples`), the train side of an honest train-test gap."""
  return _batches(config).eval_batches(
      config, local_batch_size=local_batch_size, process_index=process_index,
      process_count=process_count, on_training_set=on_training_set)
