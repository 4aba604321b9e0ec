"""Decoding and cropping one image, as §4.1 prepares it: the TensorFlow ops of the tf.data maps.

Training: the `image_size` crop at a drawn position (alexnet_jax/data/draws.py) of the image resized
to shorter side `resize_size` (of its central `resize_size` square with `center_square`, the
256x256 images the paper stored, §2). Only the crop's window is decoded (`decode_and_crop_jpeg`,
windows from alexnet_jax/data/geometry.py), then resized to `image_size`; or, by default
(`config.device_resize_scale`), a fixed-size region around the window is decoded and the device
does the resize (`crop_region`, `pixels.resize_windows`): TensorFlow's resize was the largest cost
on the host after the decode. Evaluation: the center crop, taken the same way, or the four corner
and the center crops of the resized image (the device adds their mirrors, §4.1's ten patches).

Images leave as uint8: the flip, lighting shift, mean and std are applied on the device
(alexnet_jax/data/pixels.py).
"""

from collections.abc import Callable
import functools

import ml_collections
import tensorflow as tf

from alexnet_jax.data import geometry


def decode_region(encoded: tf.Tensor,
                  place: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]
                  ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """Decodes only the window `place(height, width)['window']` ([y, x, h, w]) of an encoded image.

  Returns the window, uint8 [h, w, 3], and everything `place` returned. JPEGs are cropped while
  decoding; other formats (PNG, ...) are decoded whole, then cropped.
  """

  def jpeg():
    shape = tf.io.extract_jpeg_shape(encoded)
    placed = place(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(encoded, placed['window'], channels=3), placed

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    placed = place(tf.shape(image)[0], tf.shape(image)[1])
    y, x, h, w = tf.unstack(placed['window'])
    return image[y:y + h, x:x + w], placed

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def decode_window(encoded: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
                  ) -> tf.Tensor:
  """Decodes only the window `window_fn(height, width)` of an encoded image: uint8 [h, w, 3]."""
  return decode_region(encoded, lambda height, width: {'window': window_fn(height, width)})[0]


def _crop_window_fn(position: tf.Tensor, *, resize_size: int, image_size: int,
                    center_square: bool, random: bool) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """(height, width) -> the crop's window: at `position` (`geometry.random_crop_window`) or central."""
  if random:
    return functools.partial(geometry.random_crop_window, position, resize_size=resize_size,
                             image_size=image_size, center_square=center_square)
  return functools.partial(geometry.center_crop_window, resize_size=resize_size,
                           image_size=image_size)


def random_crop(position: tf.Tensor, encoded: tf.Tensor, *, resize_size: int, image_size: int,
                center_square: bool = False) -> tf.Tensor:
  """The `image_size` crop at `position` of the image resized to shorter side `resize_size` (of its
  central square with `center_square`, see `geometry.random_crop_window`): uint8."""
  window_fn = _crop_window_fn(position, resize_size=resize_size, image_size=image_size,
                              center_square=center_square, random=True)
  return _resize(decode_window(encoded, window_fn), [image_size, image_size])


def center_crop(encoded: tf.Tensor, *, resize_size: int, image_size: int) -> tf.Tensor:
  """The central `image_size` crop of the image resized to shorter side `resize_size`: uint8."""
  window_fn = functools.partial(geometry.center_crop_window, resize_size=resize_size,
                                image_size=image_size)
  return _resize(decode_window(encoded, window_fn), [image_size, image_size])


def crop_region(position: tf.Tensor, encoded: tf.Tensor, *, resize_size: int, image_size: int,
                center_square: bool, random: bool, side: int) -> tuple[tf.Tensor, tf.Tensor]:
  """A training crop left for the device to resize: uint8 [side, side, 3] pixels of the source
  image that hold the crop's window, and where the window lies in them, int32 [y, x, size].

  The crop is the one `random_crop` (or `center_crop`, without `random`) makes; the device resizes
  the window to `image_size` with the same bilinear interpolation (`pixels.resize_windows`). The host
  only decodes: TensorFlow's resize cost a quarter of a decode per crop, more than anything else the
  pipeline does (docs/benchmarks.md, "Input pipeline"). The region is decoded as one window of
  `side` x `side` source pixels around the crop's (a few percent more pixels to decode, no copy to
  pad them), so that every region has one shape; where the image is smaller it is padded with zeros.
  A window larger than `side` (an image whose shorter side is above about side / image_size x
  resize_size) is resized here, as before, and its crop delivered as the window [0, 0, image_size].
  """
  window_fn = _crop_window_fn(position, resize_size=resize_size, image_size=image_size,
                              center_square=center_square, random=random)

  def place(height, width):
    window = window_fn(height, width)
    fits = window[2] <= side
    region = tf.where(fits, geometry.region_around(window, height, width, side), window)
    return {'window': region, 'fits': fits,
            'box': tf.where(fits, tf.concat([window[:2] - region[:2], window[2:3]], axis=0),
                            tf.constant([0, 0, image_size]))}

  pixels, placed = decode_region(encoded, place)
  pixels = tf.cond(placed['fits'], lambda: pixels,
                   lambda: _resize(pixels, [image_size, image_size]))
  height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
  # No copy when the region is whole (zero padding is passed through).
  pixels = tf.pad(pixels, [[0, side - height], [0, side - width], [0, 0]])
  return tf.ensure_shape(pixels, [side, side, 3]), placed['box']


def resize_shorter_side(image: tf.Tensor, size: int, *, antialias: bool = False) -> tf.Tensor:
  """Resizes uint8 [H, W, 3] so that min(H, W) == size: uint8. `antialias` widens the bilinear
  filter when shrinking (for offline copies, `downsample`; the pipeline's own resizes do not)."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  new_shape = tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)
  return _resize(image, tf.maximum(new_shape, size), antialias=antialias)


def central_square(encoded: tf.Tensor, resize_size: int) -> tf.Tensor:
  """uint8 [resize_size, resize_size, 3]: the central `resize_size` square of the image resized to
  shorter side `resize_size`, the image the paper stored and cropped from (§2, §4.1), made by
  decoding only the central shorter-side square and resizing it (bilinear, rounded; passed through
  where it has that size already). What a pixel store holds (alexnet_jax/data/store_writer.py), and
  what 10-crop evaluation with `center_square` cuts its crops from: the same pixels either way."""
  square = decode_window(encoded, geometry.central_square_window)
  return tf.ensure_shape(resize_shorter_side(square, resize_size), [resize_size, resize_size, 3])


def center_crop_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size square of [H, W, C] `image`."""
  top = (tf.shape(image)[0] - size) // 2
  left = (tf.shape(image)[1] - size) // 2
  return image[top:top + size, left:left + size]


def five_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The four corner and the center size x size crops of [H, W, C]: [5, size, size, C].

  Their mirror images, the other five of §4.1's ten test-time patches, are made on the device
  (`pixels.with_mirrors`): mirroring here cost more CPU than the decode, and shipping ten crops
  doubled the bytes to batch and send (docs/benchmarks.md, "Input pipeline").
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
  crops = [image[y:y + size, x:x + size] for y, x in corners] + [center_crop_image(image, size)]
  return tf.stack(crops)


def _resize(image: tf.Tensor, shape, *, antialias: bool = False) -> tf.Tensor:
  """Bilinear resize of uint8 [h, w, 3] to `shape`, rounded back to uint8.

  Images leave the pipeline as uint8 (a quarter of float32's bytes to batch and to send to the
  device); rounding moves a pixel by at most half a grey level. An image that already has `shape`
  (a dataset stored at the training resolution) is passed through without resampling.

  The window is cast to float32 before the resize: TensorFlow's bilinear kernel gives the same
  values for uint8 and float32 input, but its float32 path is faster, by more than the cast costs
  (0.23-0.30 against 0.38-0.45 ms per 332x332 window, bench/input_ops.py).
  """
  shape = tf.convert_to_tensor(shape, tf.int32)
  return tf.cond(
      tf.reduce_all(tf.shape(image)[:2] == shape),
      lambda: image,
      lambda: tf.cast(tf.round(tf.image.resize(tf.cast(image, tf.float32), shape,
                                               method='bilinear', antialias=antialias)), tf.uint8))


def preprocess_train(encoded: tf.Tensor, crop_position: tf.Tensor,
                     config: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """One training image: its crop at `crop_position` (`training_draws`; the center crop without
  `augment.random_crop`), uint8 [image_size, image_size, 3] as 'image'; or, with
  `config.device_resize_scale`, a region of the source image that holds the crop's window, uint8
  [R, R, 3] (R = `device_region_size`) as 'image', and the window, int32 [y, x, size] as 'window',
  for the device to resize (`crop_region`, `pixels.resize_windows`)."""
  sizes = dict(resize_size=config.resize_size, image_size=config.image_size)
  side = geometry.device_region_size(config)
  if side:
    region, window = crop_region(crop_position, encoded, center_square=config.center_square,
                                 random=config.augment.random_crop, side=side, **sizes)
    return {'image': region, 'window': window}
  if config.augment.random_crop:
    crop = random_crop(crop_position, encoded, center_square=config.center_square, **sizes)
  else:
    crop = center_crop(encoded, **sizes)
  return {'image': tf.ensure_shape(crop, [config.image_size, config.image_size, 3])}


def preprocess_eval(encoded: tf.Tensor, config: ml_collections.ConfigDict) -> tf.Tensor:
  """One evaluation image: uint8 [S, S, 3], or with `eval_crops=10` its five crops [5, S, S, 3]
  (the device adds their mirrors).

  The center crop is decoded and resized as a window, like a training image without `random_crop`
  (the same function): 40% fewer pixels to compute than resizing the whole image to shorter side
  256, and no IDCT or color conversion outside the window. It matches resize-then-crop up to the
  interpolation at the crop's border (tested); it is the same crop with or without
  `center_square`. The five crops are cut from the whole resized image, or with `center_square`
  from its central `resize_size` square, the paper's 256x256 image (§2), of which only the
  shorter-side square of the original is decoded and resized.
  """
  sizes = dict(resize_size=config.resize_size, image_size=config.image_size)
  if config.eval_crops != 10:
    return center_crop(encoded, **sizes)
  if config.center_square:
    image = central_square(encoded, config.resize_size)
  else:
    image = resize_shorter_side(decode_window(encoded, geometry.whole_image_window),
                                config.resize_size)
  return five_crop(image, config.image_size)
