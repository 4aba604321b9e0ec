"""Where a crop lies: the windows of §4.1's crops, in the source image's pixels.

Training and evaluation crops are defined on the image resized to shorter side `resize_size` (256,
§2), but computed on the source image: a window is chosen in resized coordinates and mapped back,
so that only that window need be decoded (alexnet_jax/data/decode.py). Each function takes the
source height and width (TensorFlow scalars, known only once the image's header is read) and
returns a window [y, x, h, w] in source pixels. A window's side is a whole number of source
pixels, so a crop computed this way is resize-then-crop up to that rounding.

Few, vectorized TensorFlow ops each: in a tf.data map every op costs about a microsecond per image.
"""

import ml_collections
import tensorflow as tf


def crop_size(height: tf.Tensor, width: tf.Tensor, resize_size: int, image_size: int):
  """Side, in source pixels, of an `image_size` crop of the image resized to shorter side `resize_size`."""
  shorter = tf.minimum(height, width)
  size = tf.cast(tf.round(tf.cast(shorter, tf.float32) * image_size / resize_size), tf.int32)
  return tf.clip_by_value(size, 1, shorter)


def central_square_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """[y, x, size, size] of the central shorter-side square: the `resize_size` square of §2 once resized."""
  side = tf.minimum(height, width)
  return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def whole_image_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """[0, 0, height, width]: the window that decodes everything."""
  return tf.stack([0, 0, height, width])


def random_crop_window(position: tf.Tensor, height: tf.Tensor, width: tf.Tensor, *,
                       resize_size: int, image_size: int, center_square: bool = False) -> tf.Tensor:
  """[y, x, size, size] in source pixels of an `image_size` crop of the resized image, placed at
  `position`, float32 [2] in [0, 1) (uniform for a uniformly placed crop: `draws.training_draws`).

  With `center_square`, the crop lies in the central square of the resized image, the
  `resize_size` x `resize_size` image the paper stored and drew its crops from (§2, §4.1); in source
  pixels that square is the central shorter-side x shorter-side square.
  """
  size = crop_size(height, width, resize_size, image_size)
  shape = tf.stack([height, width])
  if center_square:
    side = tf.minimum(height, width)
    corner, room = (shape - side) // 2, side - size + 1  # the square's corner; offsets per axis
  else:
    corner, room = 0, shape - size + 1
  offset = tf.minimum(tf.cast(position * tf.cast(room, tf.float32), tf.int32), room - 1)
  return tf.concat([corner + offset, tf.stack([size, size])], axis=0)


def center_crop_window(height: tf.Tensor, width: tf.Tensor, *, resize_size: int,
                       image_size: int) -> tf.Tensor:
  """[y, x, size, size] in source pixels of the central `image_size` crop of the resized image."""
  size = crop_size(height, width, resize_size, image_size)
  return tf.stack([(height - size) // 2, (width - size) // 2, size, size])


def region_around(window: tf.Tensor, height: tf.Tensor, width: tf.Tensor, side: int) -> tf.Tensor:
  """[y, x, h, w]: the `side` x `side` region of a height x width image (less where the image is
  smaller) that holds the square `window` [y, x, size, size], size <= side, placed at the window's
  top-left corner as far as the image allows."""
  corner = tf.maximum(tf.minimum(window[:2], tf.stack([height, width]) - side), 0)
  return tf.concat([corner, tf.minimum(tf.stack([height, width]), side)], axis=0)


def device_region_size(config: ml_collections.ConfigDict) -> int:
  """Side of the regions a training batch carries for the device to resize its crops from
  (`decode.crop_region`); 0 when the crops are resized on the host (`config.device_resize_scale` 0)."""
  return int(round(config.device_resize_scale * config.image_size))
