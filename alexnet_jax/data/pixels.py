"""From a batch of the data interface to the network's input, on the device.

The TFDS and folder sources deliver uint8 pixels (and, for training, whether to mirror each image as
`flip` and its PCA lighting shift as `rgb_shift`, both drawn on the host, §4.1); the last steps of
the paper's preprocessing run here, inside the jitted step:
  x = ((mirrored if flip else pixel) + rgb_shift - mean) / std   per channel, as `config.augment` sets
(mean and std: ImageNet's or the training split's, alexnet_jax/data/statistics.py)
Doing them on the device rather than in tf.data sends a quarter of the bytes to the accelerator
(uint8, not float32) and spares the input pipeline a copy, two float passes and a float32 batch per
step on the host CPU (docs/benchmarks.md, "Input pipeline"); XLA fuses them into one pass. For a
10-crop evaluation the sources deliver five crops per image and the mirrored five are made here.

A training batch may also carry, instead of its crops, regions of the source images that hold the
crops' windows ('window': where each lies), as `config.device_resize_scale` sets: the crops are then
resized from them here first (`resize_windows`). On the host, TensorFlow's resize cost a quarter of
a decode per image, most of what the pipeline spent beyond decoding (docs/benchmarks.md, "Input
pipeline"). A pixel store's batch (alexnet_jax/data/store.py) carries its stored images whole and
where each crop lies in them ('crop_offset'): the crops are cut here (`cut_crops`), so that its
host only copies bytes. `training_crops` does whichever the batch asks for.

Synthetic sources (synthetic.py) deliver float32 images that are model inputs already;
they pass through unchanged (but for the mirrors of 10-crop evaluation).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax.data import statistics


def mean_and_std(augment: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The per-channel mean subtracted and std divided by, as `augment` configures (0 and 1 when off):
  ImageNet's, or the run's own training split's (`statistics.of`)."""
  used = statistics.of(augment)
  mean = used.mean if augment.subtract_mean else (0.0, 0.0, 0.0)
  std = used.std if augment.get('divide_std', True) else (1.0, 1.0, 1.0)
  return mean, std


def _bilinear_taps(start: jax.Array, size: jax.Array, out: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Where TensorFlow's bilinear resize (half-pixel centers, no antialiasing) of `size` [B] pixels
  from `start` [B] to `out` pixels reads: the lower and upper source index, int32 [B, out], and the
  upper one's weight, float32 [B, out], computed as its CPU kernel does, so that the crops match
  those the host would make (tested)."""
  scale = size.astype(jnp.float32) / out
  position = (jnp.arange(out, dtype=jnp.float32) + 0.5) * scale[:, None] - 0.5
  lower = jnp.floor(position)
  weight = position - lower
  last = size[:, None] - 1
  lower = lower.astype(jnp.int32)
  return (start[:, None] + jnp.clip(lower, 0, last), start[:, None] + jnp.clip(lower + 1, 0, last),
          weight)


def _interpolate_rows(images: jax.Array, taps: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
  """[B, N, M, 3] -> float32 [B, out, M, 3]: each image's rows interpolated at `taps`
  (`_bilinear_taps`) as lower + (upper - lower) * weight. Whole rows are gathered (one copy each)."""
  lower, upper, weight = taps
  rows_of = jax.vmap(lambda image, index: image[index])
  below, above = rows_of(images, lower).astype(jnp.float32), rows_of(images, upper).astype(jnp.float32)
  return below + (above - below) * weight[:, :, None, None]


def resize_windows(batch: Mapping[str, jax.Array], image_size: int) -> dict[str, jax.Array]:
  """`batch` with crops in 'image': the windows 'window' [B, 3] ([y, x, size] squares) of the
  regions 'image' [B, R, R, 3] resized to uint8 [B, image_size, image_size, 3], as
  `decode.random_crop` resizes them on the host (bilinear, rounded); a batch without
  'window' as it is.

  Interpolated across columns first (as rows of the transposed images), then down rows: the order
  of TensorFlow's kernel. Gathering whole rows made the resize alone 2-3x faster on a CPU than
  gathering single pixels.
  """
  if 'window' not in batch:
    return dict(batch)
  regions, window = jnp.asarray(batch['image']), jnp.asarray(batch['window'], jnp.int32)
  across = _interpolate_rows(regions.transpose(0, 2, 1, 3),
                             _bilinear_taps(window[:, 1], window[:, 2], image_size))
  crops = _interpolate_rows(across.transpose(0, 2, 1, 3),
                            _bilinear_taps(window[:, 0], window[:, 2], image_size))
  resized = {k: v for k, v in batch.items() if k != 'window'}
  resized['image'] = jnp.round(crops).astype(jnp.uint8)
  return resized


def cut_crops(batch: Mapping[str, jax.Array], image_size: int) -> dict[str, jax.Array]:
  """`batch` with crops in 'image': the `image_size` squares at 'crop_offset' [B, 2] ([y, x]) of the
  images 'image' [B, R, R, 3], uint8 [B, image_size, image_size, 3].

  One dynamic slice per image: on a 2-core CPU, 1-5 ms for a batch of 128 from 256x256 images,
  against 25-55 ms for `resize_windows` of the same windows, which resamples nothing here but
  still interpolates (a one-off jitted loop; docs/benchmarks.md, "Pixel store").
  """
  offset = jnp.asarray(batch['crop_offset'], jnp.int32)
  cut = jax.vmap(lambda image, corner: jax.lax.dynamic_slice(
      image, (corner[0], corner[1], 0), (image_size, image_size, image.shape[-1])))
  crops = {k: v for k, v in batch.items() if k != 'crop_offset'}
  crops['image'] = cut(jnp.asarray(batch['image']), offset)
  return crops


def training_crops(batch: Mapping[str, jax.Array], image_size: int) -> dict[str, jax.Array]:
  """`batch` with its training crops in 'image': cut at 'crop_offset' (`cut_crops`, a pixel store's
  batch), resized from 'window' (`resize_windows`, regions), or as they are (crops already)."""
  if 'crop_offset' in batch:
    return cut_crops(batch, image_size)
  return resize_windows(batch, image_size)


def flipped(batch: Mapping[str, jax.Array]) -> jax.Array:
  """`batch['image']` [B, H, W, C] with the images that `batch['flip']` [B] marks mirrored left-right
  (§4.1's horizontal reflections); the images as they are when the batch has no 'flip'."""
  images = batch['image']
  if 'flip' not in batch:
    return images
  mirror = jnp.asarray(batch['flip'], bool).reshape((-1,) + (1,) * (images.ndim - 1))
  return jnp.where(mirror, images[:, :, ::-1], images)


def with_mirrors(crops: jax.Array) -> jax.Array:
  """§4.1's ten test-time patches from the five the pipeline delivers: [B, 5, H, W, C] (four
  corners and the center) -> [B, 10, H, W, C], those five and then their left-right mirrors.

  The host ships half the crops and copies none of them again: mirroring in tf.data cost more CPU
  than the decode (docs/benchmarks.md, "Input pipeline").
  """
  return jnp.concatenate([crops, crops[:, :, :, ::-1]], axis=1)


def model_input(batch: Mapping[str, jax.Array], augment: ml_collections.ConfigDict) -> jax.Array:
  """The network's input for `batch`: float32 images [B, H, W, 3], or [B, 10, H, W, 3] for the
  five crops [B, 5, H, W, 3] of a 10-crop evaluation, their mirrors appended (`with_mirrors`).

  uint8 pixels become (pixel + rgb_shift - mean) / std, the images `batch['flip']` [B] marks
  mirrored first and the per-example shift `batch['rgb_shift']` [B, 3] added, when the batch has
  them. Float images are model inputs already and are only given their mirrors.
  """
  images = batch['image']
  if images.dtype == jnp.uint8:
    x = flipped(batch).astype(jnp.float32)
    if 'rgb_shift' in batch:
      shift = batch['rgb_shift'].astype(jnp.float32)
      x = x + shift.reshape(shift.shape[:1] + (1,) * (images.ndim - 2) + (3,))
    mean, std = mean_and_std(augment)
    images = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return with_mirrors(images) if images.ndim == 5 else images
