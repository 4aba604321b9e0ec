"""Measuring a training split's pixel statistics (alexnet_jax/data/statistics.py) once, and keeping
the result beside the data.

`split_statistics(config)` decodes every image of `config.train_split` (the whole split, also when
a run trains on a subset of it, so that every regime of a study normalizes alike) and sums, per
image, its pixel count, each channel's values and each pair of channels' products. The per-image
sums are integers below 2^53, exact in float64 whatever order TensorFlow adds them in, and the split's
totals are kept as Python integers: the statistics are the same on every machine, process count and
run (`statistics.from_sums`).

The sums are written (`statistics.write_sums`) to `alexnet_jax-statistics-<split>.json` beside the
data (a TFDS dataset's version directory, a folder dataset's root), with what identifies the split's
contents (`sources.split_identity`); a file whose identity no longer matches (the data was rebuilt
or its files changed) is measured again. Where the data directory is read-only the file goes to
$XDG_CACHE_HOME/alexnet_jax/statistics/ (default ~/.cache/...), named by a digest of that identity.
Fashion-MNIST's 60,000 training images take about 10 s here; ImageNet keeps its published values
(`augment.statistics='imagenet'`) and needs none of this.
"""

import hashlib
import json
import os
import re
import time

from absl import logging
import ml_collections
import tensorflow as tf

from alexnet_jax.data import folders
from alexnet_jax.data import sources
from alexnet_jax.data import statistics

_BATCH = 1024  # per-image sums fetched from tf.data at a time


def _image_sums(encoded: tf.Tensor) -> dict[str, tf.Tensor]:
  """An image's pixel count, channel sums [3] and channel-pair product sums [3, 3], float64 holding
  exact integers (a 4096x4096 image sums to ~1e12, far below 2^53)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  pixels = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
  return {'count': tf.cast(tf.shape(pixels)[0], tf.int64), 'sums': tf.reduce_sum(pixels, axis=0),
          'products': tf.matmul(pixels, pixels, transpose_a=True)}


def pixel_sums(config: ml_collections.ConfigDict, split: str) -> statistics.PixelSums:
  """Exact integer sums over every pixel of `split`."""
  examples = sources.split_examples(config, split).map(
      lambda ex: _image_sums(ex['encoded']), num_parallel_calls=tf.data.AUTOTUNE)
  sums = statistics.PixelSums()
  for batch in examples.batch(_BATCH).as_numpy_iterator():
    sums.add(batch['count'], batch['sums'], batch['products'])
  return sums


def _record_paths(config: ml_collections.ConfigDict, split: str) -> tuple[list[str], dict]:
  """The files the statistics of `split` may be kept in, beside the data first, and the identity
  of the split's contents they must hold."""
  directory, identity = sources.split_identity(config, split)
  name = 'alexnet_jax-statistics-' + re.sub(r'[^A-Za-z0-9_.-]', '_', split) + '.json'
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
  fallback = os.path.join(folders.cache_home(), 'statistics', f'{digest}.json')
  return [os.path.join(directory, name), fallback], identity


def split_statistics(config: ml_collections.ConfigDict) -> statistics.Statistics:
  """The pixel statistics of `config.train_split`: read from its record if there is one for these
  contents, else measured and recorded (beside the data, or in the cache home if that is
  read-only)."""
  split = config.train_split
  paths, identity = _record_paths(config, split)
  for path in paths:
    sums = statistics.read_sums(path, identity)
    if sums is not None:
      logging.info('pixel statistics of %s %s read from %s', config.dataset, split, path)
      return sums.statistics()
  start = time.time()
  sums = pixel_sums(config, split)
  measured = sums.statistics()
  logging.info('pixel statistics of %s %s measured in %.1f s: %s', config.dataset, split,
               time.time() - start, measured)
  for path in paths:
    try:
      statistics.write_sums(path, identity, sums)
      return measured
    except OSError as error:
      logging.info('cannot write %s (%s)', path, error)
  logging.warning('Could not record the pixel statistics of %s %s in %s; the next run measures '
                  'them again.', config.dataset, split, ' or '.join(paths))
  return measured
