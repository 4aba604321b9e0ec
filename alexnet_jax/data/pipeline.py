"""The tf.data pipeline of TFDS and folder datasets: batches of the paper's crops (§4.1), as uint8.

Training (`train_batches`): this process's shard (alexnet_jax/data/sources.py) as an endless,
seekable stream of permuted windows (alexnet_jax/data/stream.py); for each example the random
choices of §4.1 drawn on the host from (seed, epoch, index) (alexnet_jax/data/draws.py), its crop
decoded (alexnet_jax/data/decode.py), then batched. Each step of the augmentation is a switch in
`config.augment`:
  1. crop: a random `image_size` square of the image resized to shorter side `resize_size` (227 of
     256), within its central `resize_size` square when `config.center_square` is set (§2);
     without `random_crop`, the center crop;
  2. flip: a horizontal reflection with probability 1/2 ('flip', applied on the device);
  3. pca_lighting: the RGB shift sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, pca_lighting^2)
     ('rgb_shift', added on the device);
  4. subtract_mean, then (`divide_std`) a division by the per-channel standard deviation, on the
     device (alexnet_jax/data/pixels.py).
The batch of step s is a function of (config, s, process_index, process_count): a run restarted at
step s seeks straight to it.

Evaluation (`eval_batches`): one pass over this process's shard of the eval split, the center crop
or the five crops of 10-crop evaluation, padded so that every process yields as many batches.

Batch shapes are in docs/design.md ("The data interface").
"""

from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax import runtime
from alexnet_jax.data import decode
from alexnet_jax.data import draws
from alexnet_jax.data import sources
from alexnet_jax.data import stream


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1  # parallelism comes from the map, not inside ops
  return options


def _check_sizes(config: ml_collections.ConfigDict) -> None:
  if config.image_size > config.resize_size:
    raise ValueError(f'config.image_size={config.image_size} is larger than config.resize_size='
                     f'{config.resize_size}: crops are taken from the resized image.')
  if config.eval_crops not in (1, 10):
    raise ValueError(f'config.eval_crops={config.eval_crops}: use 1 (center) or 10 (§4.1).')
  if 0 < config.device_resize_scale < 1:
    raise ValueError(f'config.device_resize_scale={config.device_resize_scale}: regions must hold an '
                     'image_size crop; use a scale >= 1, or 0 to resize on the host.')


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches of this process; the first is the batch of global step `start_step`.

  {'image': uint8 [local_batch_size, image_size, image_size, 3] (crops, not yet mirrored), or with
            `config.device_resize_scale` [local_batch_size, R, R, 3], regions that hold the crops'
            windows (R = `geometry.device_region_size(config)`),
   'window': int32 [local_batch_size, 3] (with regions only: [y, x, size] of each crop's window in
            its region, resized to the crop on the device, `pixels.resize_windows`),
   'flip': bool [local_batch_size] (which images to mirror, on the device),
   'rgb_shift': float32 [local_batch_size, 3] (the lighting noise, added on the device),
   'label': int32 [local_batch_size]}
  """
  _check_sizes(config)
  shard = sources.shard(config, config.train_split, process_index, process_count,
                        config.train_examples)
  if shard.size < local_batch_size:
    raise errors.InvalidError(
        f'{config.dataset} {config.train_split}: process {process_index} has {shard.size} examples, '
        f'fewer than its share of one batch ({local_batch_size}): set config.batch_size to at most '
        f'{shard.size * process_count}, or add images.')
  signature = {shard.image_field: tf.TensorSpec([None], tf.string),
               'label': tf.TensorSpec([None], tf.int32),
               'crop_position': tf.TensorSpec([None, 2], tf.float32),
               'flip': tf.TensorSpec([None], tf.bool),
               'rgb_shift': tf.TensorSpec([None, 3], tf.float32)}

  def windows_with_draws():
    for examples in stream.train_windows(shard, int(config.seed), start_step * local_batch_size):
      yield {shard.image_field: examples[shard.image_field],
             'label': examples['label'].astype(np.int32),
             **draws.training_draws(config, examples['epoch'], examples['index'])}

  runtime.restore_malloc_thresholds()
  windows = tf.data.Dataset.from_generator(windows_with_draws, output_signature=signature)

  def preprocess(example):
    crop = decode.preprocess_train(sources.encoded(example), example['crop_position'], config)
    return crop | {k: example[k] for k in ('flip', 'rgb_shift', 'label')}

  ds = windows.prefetch(1).unbatch()
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return stream.ClosedAtExit(iter(tfds.as_numpy(ds.with_options(_options()))))


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int, on_training_set: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard of the eval split, padded to a batch count all processes share.

  {'image': uint8 [B, S, S, 3] or [B, 5, S, S, 3] (eval_crops=10: the corner and center crops,
   mirrored on the device), 'label': int32 [B],
   'mask': bool [B]}, where padding examples have mask False.

  `on_training_set`: the same, over the training examples whose error a run measures without
  augmentation (`config.eval_train_examples` of the `config.train_examples` it trains on).
  """
  _check_sizes(config)
  if on_training_set:
    examples = (config.eval_train_examples if config.eval_train_examples > 0
                else config.train_examples)
    shard = sources.shard(config, config.train_split, process_index, process_count, examples)
  else:
    shard = sources.shard(config, config.eval_split, process_index, process_count)
  # The largest shard sets the batch count of every process, so that their collectives line up.
  largest = -(-shard.split_size // process_count)
  num_batches = -(-largest // local_batch_size)
  crops = [5] if config.eval_crops == 10 else []
  image_shape = crops + [config.image_size, config.image_size, 3]

  ds = shard.examples(0, shard.size).map(
      lambda ex: {'image': decode.preprocess_eval(sources.encoded(ex), config),
                  'label': tf.cast(ex['label'], tf.int32), 'mask': True},
      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors(
      {'image': tf.zeros(image_shape, tf.uint8), 'label': 0, 'mask': False})
  ds = ds.concatenate(padding.repeat(num_batches * local_batch_size - shard.size))
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_options())))
