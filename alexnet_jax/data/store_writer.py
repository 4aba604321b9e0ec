"""Writes a pixel store (alexnet_jax/data/store.py): every image of a dataset's splits, decoded once.

  python -m alexnet_jax.prepare --dataset=imagenet2012 --data_dir=D --store_to=DIR [--resize_size=256]
  python -m alexnet_jax.prepare --dataset=folder:/my/images --store_to=DIR
  python -m alexnet_jax.prepare --dataset=fashion_mnist --data_dir=D --store_to=DIR --resize_size=72 \
      --splits=train,test

Each image becomes `decode.central_square`: its central shorter-side square resized to
`resize_size` x `resize_size` (bilinear, as the training pipeline resizes; an image of that size
already keeps its pixels), the pixels that training with `center_square` crops from, and that
10-crop evaluation cuts from, bit for bit. Grey images become RGB, as the pipeline decodes them.
Folder datasets lose the images that cannot be decoded, as training would skip them.

Writing is resumable (alexnet_jax/data/resumable.py): a split is written into `DIR/<split>.partial/`
a shard file at a time, each file whole or not at all, and renamed to `DIR/<split>/` when complete.
Run again, the same command decodes only the shards that are missing, and skips complete splits;
a store written with other settings (source, resize_size, shard size) is refused.
"""

from collections.abc import Sequence
import io
import os
import re
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import decode
from alexnet_jax.data import resumable
from alexnet_jax.data import sources
from alexnet_jax.data import store


def _settings(config: ml_collections.ConfigDict, split: str, resize_size: int,
              examples_per_shard: int) -> dict[str, Any]:
  return {'format': store.FORMAT, 'dataset': config.dataset, 'data_dir': config.data_dir,
          'split': split, 'resize_size': resize_size, 'examples_per_shard': examples_per_shard}


class _ShardFile:
  """One shard of a split, written in example order: images-K.npy, with labels-K.npy beside it.

  The images go to `images-K.npy.tmp`, renamed when the shard is full, after its labels are
  written: a shard whose images file exists is complete.
  """

  def __init__(self, directory: str, number: int, count: int, side: int):
    self.count = count
    self._path = os.path.join(directory, store.images_file(number))
    self._labels_path = os.path.join(directory, store.labels_file(number))
    self._labels = []
    self._file = open(self._path + '.tmp', 'wb')  # pylint: disable=consider-using-with
    np.lib.format.write_array_header_1_0(self._file, {
        'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False,
        'shape': (int(count), side, side, 3)})

  def add(self, image: np.ndarray, label: int) -> bool:
    """Appends one example; True when the shard is full (and closed)."""
    self._file.write(np.ascontiguousarray(image).data)
    self._labels.append(label)
    if len(self._labels) < self.count:
      return False
    self._file.close()
    labels = io.BytesIO()
    np.save(labels, np.asarray(self._labels, np.int32))
    resumable.write_atomically(self._labels_path, labels.getvalue())
    os.replace(self._path + '.tmp', self._path)
    return True


def _complete_shards(directory: str) -> list[int]:
  """The shards of a split folder whose images file is in place (written whole, labels first)."""
  found = [re.fullmatch(r'images-(\d+)\.npy', name) for name in os.listdir(directory)]
  return [int(match.group(1)) for match in found if match]


def write(config: ml_collections.ConfigDict, out_dir: str, *, resize_size: int = 256,
          splits: Sequence[str] = ('train', 'validation'),
          examples_per_shard: int | None = None) -> dict[str, int]:
  """Writes `splits` of `config.dataset` as a pixel store in `out_dir`; returns each split's size.

  `examples_per_shard` defaults to as many as fit in 1 GiB (`store.examples_per_shard`).
  """
  per_shard = examples_per_shard or store.examples_per_shard(resize_size)
  dirs = resumable.SplitDirs(out_dir, store.RECORD, 'store')
  sizes = {}
  for split in splits:
    if not re.fullmatch(r'\w+', split):
      raise errors.InvalidError(f'--splits: {split!r} is not a split name; a store holds whole '
                                'splits (e.g. train,validation or train,test).')
    dirs.check(split, _settings(config, split, resize_size, per_shard),
               elsewhere='write the store to another folder')
    # Sized first, which checks every split (exists, prepared, decodable) before anything is
    # written.
    try:
      sizes[split] = int(sources.split_examples(config, split).cardinality())
    except (ValueError, FileNotFoundError) as e:  # no such split in the source
      raise errors.InvalidError(f'--splits: {split!r}: {e}') from e
  names = sources.class_names(config)
  counts = {}
  for split, size in sizes.items():
    if made := dirs.complete(split):
      logging.info('%s: complete already, %d images in %s', split, made['examples'],
                   dirs.path(split))
      counts[split] = made['examples']
      continue
    partial_dir = dirs.start(split, _settings(config, split, resize_size, per_shard))
    written = np.zeros([size], bool)
    for shard in _complete_shards(partial_dir):
      written[shard * per_shard:(shard + 1) * per_shard] = True
    if written.any():
      logging.info('%s: resuming, %d of %d images written before', split, written.sum(), size)
    # Whole shards are left out before their images are decoded (folders: before they are read).
    images = sources.split_examples(config, split, skip=written).map(
        lambda ex: (ex['index'], ex['label'], decode.central_square(ex['encoded'], resize_size)),
        num_parallel_calls=tf.data.AUTOTUNE)
    shard = None
    for index, label, image in tfds.as_numpy(images.prefetch(tf.data.AUTOTUNE)):
      if shard is None:  # the examples of a shard arrive in order, from its first
        number = int(index) // per_shard
        shard = _ShardFile(partial_dir, number, min(per_shard, size - number * per_shard),
                           resize_size)
        logging.info('%s: writing shard %d of %d', split, number + 1, -(-size // per_shard))
      if shard.add(image, label):
        shard = None
    dirs.finish(split, examples=size, class_names=list(names))
    counts[split] = size
    logging.info('%s: %d images in %s', split, size, dirs.path(split))
  return counts
