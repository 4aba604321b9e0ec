"""ImageNet, or any TFDS or image-folder dataset, through tf.data with the paper's augmentation (§4.1).

Sources (`config.dataset`):
  * a TFDS image-classification name (`imagenet2012` by default), read from `config.data_dir`;
    ImageNet must be built once with `python -m alexnet_jax.prepare` (alexnet_jax/prepare.py);
  * `folder:/path`: `/path/train/<class>/*.jpg|png` and `/path/val/<class>/...` (or `validation/`,
    `test/`); classes are the sorted folder names of `train/`. Which files, and which of them
    decode, is alexnet_jax/image_folders.py's concern; the pipeline reads the list it gives.

Training images (each step a switch in `config.augment`):
  1. crop: a random `image_size` square of the image resized so that its shorter side is
     `resize_size` (227 of 256, §4.1), placed in the central `resize_size` square of it when
     `config.center_square` is set (default): the paper stored ImageNet as those 256x256 squares
     (§2) and drew its crops from them; unset, anywhere in the whole resized image. The window is
     chosen in resized coordinates, mapped back to the original image, and only that window is
     decoded (`tf.io.decode_and_crop_jpeg`) and then resized to `image_size`. This is
     resize-then-crop up to rounding the window to whole source pixels and the interpolation at its
     borders. Without `random_crop`: the center crop, the same way. By default
     (`config.device_resize_scale`) the host only decodes a fixed-size region around the window and
     the device does the resize (`crop_region`, `pixels.resize_windows`): the same crop, and
     TensorFlow's resize was the largest cost on the host after the decode.
  2. flip: a horizontal reflection with probability 1/2, drawn here and delivered with the image
     as 'flip'; the mirroring itself is done on the device.
  3. pca_lighting: the RGB shift sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, pca_lighting^2), with the
     eigenvalues lambda_i and eigenvectors p_i of ImageNet's RGB covariance (§4.1), drawn here and
     delivered with the image as 'rgb_shift'.
  4. subtract_mean, then (`divide_std`) a division by the per-channel standard deviation.
Evaluation images: the center crop, taken like the training center crop above (window decoded,
then resized), or, with `eval_crops=10`, the four corner and the center crops of the image resized to
shorter side `resize_size` (of its central square with `center_square`, the only part decoded); the
device adds their mirror images, §4.1's other five patches (`pixels.model_input`).

Output: uint8 pixels. The resize of training regions, the flip, the lighting shift, the mean and the
std are applied on the device, inside the jitted step (alexnet_jax/pixels.py): a quarter of the bytes to batch and
send, and no pass over the pixels on the host beyond the decode and the resize (docs/benchmarks.md,
"Input pipeline"). With the defaults (`subtract_mean` and `divide_std`) the network sees
(x + shift - mean) / std per channel, roughly zero-mean, unit-variance inputs (what He
initialization assumes); with `divide_std=False` it sees the 0..255 scale minus the mean, as in the
paper.

Determinism and resumption: each process reads its own contiguous 1/process_count of every split.
Its training stream is an endless sequence of epochs; epoch e visits the shard in an order that is a
function of (seed, e), and the random crop position, flip and lighting of an example are a function
of (seed, e, example index) (`training_draws`: counter-based, drawn with numpy for a window of
examples at a time). The batch of step s is therefore a function of
(config, s, process_index, process_count) and a run restarted at step s seeks straight to it. An epoch
order is built from blocks (for TFDS, the part of one record file in the shard), shuffled and grouped
into windows of about `_WINDOW_EXAMPLES` examples; each window is loaded and permuted as a whole. A
seek reads at most the window it lands in and decodes nothing it skips. A folder dataset's shard is
one block (its file paths cost nothing to hold) and a single window, so every epoch is a uniform
permutation.
"""

import atexit
import ctypes
import dataclasses
import functools
import multiprocessing.pool
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

# TensorFlow only feeds the host; every accelerator belongs to JAX.
tf.config.set_visible_devices([], 'GPU')

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from alexnet_jax import image_folders  # pylint: disable=g-import-not-at-top,wrong-import-position

# Eigenvalues and eigenvectors (columns) of the 3x3 covariance of ImageNet RGB pixels on the 0..1 scale,
# as published with fb.resnet.torch (datasets/imagenet.lua) and used since by most reimplementations
# of §4.1. The eigenvalues are multiplied by 255 so that alpha_i = N(0, 0.1) moves pixels as much on
# the 0..255 scale as it does on the 0..1 scale there (a shift of a few grey levels).
IMAGENET_PCA_EIGENVALUES = tuple(255.0 * v for v in (0.2175, 0.0188, 0.0045))
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# Examples loaded and permuted together in a training epoch. For ImageNet this is about 8 record files
# (~1 GB of JPEG bytes); up to three windows are in memory at a time.
_WINDOW_EXAMPLES = 8192


# Making TFDS datasets is not thread-safe; window readers of several pipelines may run at once.
_TFDS_LOCK = threading.Lock()


class DatasetNotPreparedError(FileNotFoundError):
  """The TFDS dataset has not been built in the data dir yet."""


# --------------------------------------------------------------------------------------------------
# Augmentation: small functions on one image, each a step of §4.1.
# --------------------------------------------------------------------------------------------------


def _crop_size(height: tf.Tensor, width: tf.Tensor, resize_size: int, image_size: int):
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
  `position`, float32 [2] in [0, 1) (uniform for a uniformly placed crop, `training_draws`).

  With `center_square`, the crop lies in the central square of the resized image, the
  `resize_size` x `resize_size` image the paper stored and drew its crops from (§2, §4.1); in source
  pixels that square is the central shorter-side x shorter-side square.
  """
  # Few, vectorized ops: each costs about a microsecond per image in tf.data.
  size = _crop_size(height, width, resize_size, image_size)
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
  size = _crop_size(height, width, resize_size, image_size)
  return tf.stack([(height - size) // 2, (width - size) // 2, size, size])


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
  """(height, width) -> the crop's window: at `position` (`random_crop_window`) or central."""
  if random:
    return functools.partial(random_crop_window, position, resize_size=resize_size,
                             image_size=image_size, center_square=center_square)
  return functools.partial(center_crop_window, resize_size=resize_size, image_size=image_size)


def random_crop(position: tf.Tensor, encoded: tf.Tensor, *, resize_size: int, image_size: int,
                center_square: bool = False) -> tf.Tensor:
  """The `image_size` crop at `position` of the image resized to shorter side `resize_size` (of its
  central square with `center_square`, see `random_crop_window`): uint8."""
  window_fn = _crop_window_fn(position, resize_size=resize_size, image_size=image_size,
                              center_square=center_square, random=True)
  return _resize(decode_window(encoded, window_fn), [image_size, image_size])


def center_crop(encoded: tf.Tensor, *, resize_size: int, image_size: int) -> tf.Tensor:
  """The central `image_size` crop of the image resized to shorter side `resize_size`: uint8."""
  window_fn = functools.partial(center_crop_window, resize_size=resize_size, image_size=image_size)
  return _resize(decode_window(encoded, window_fn), [image_size, image_size])


def device_region_size(config: ml_collections.ConfigDict) -> int:
  """Side of the regions a training batch carries for the device to resize its crops from
  (`crop_region`); 0 when the crops are resized on the host (`config.device_resize_scale` 0)."""
  return int(round(config.device_resize_scale * config.image_size))


def region_around(window: tf.Tensor, height: tf.Tensor, width: tf.Tensor, side: int) -> tf.Tensor:
  """[y, x, h, w]: the `side` x `side` region of a height x width image (less where the image is
  smaller) that holds the square `window` [y, x, size, size], size <= side, placed at the window's
  top-left corner as far as the image allows."""
  corner = tf.maximum(tf.minimum(window[:2], tf.stack([height, width]) - side), 0)
  return tf.concat([corner, tf.minimum(tf.stack([height, width]), side)], axis=0)


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
    region = tf.where(fits, region_around(window, height, width, side), window)
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


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finalizer: a bijection of uint64 arrays whose outputs for nearby inputs look
  independent (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's counter increment


def example_uniforms(seed: int, epoch: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
  """float64 [n, count], uniform in (0, 1): `count` random numbers for each example `index` [n] of
  `epoch` [n], a function of (seed, epoch, index) alone (counter-based: SplitMix64 of a key hashed
  from the three)."""
  key = np.full(len(index), seed % 2**64, np.uint64)
  for part in (epoch, index):
    key = _mix64(_mix64(key + _GOLDEN_GAMMA) ^ np.asarray(part).astype(np.uint64))
  counters = key[:, None] + _GOLDEN_GAMMA * np.arange(1, count + 1, dtype=np.uint64)
  return ((_mix64(counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def lighting_shifts(alpha: np.ndarray) -> np.ndarray:
  """sum_i alpha_i lambda_i p_i for each row of `alpha` [n, 3]: the RGB shifts of §4.1, float32
  [n, 3]. Each is added to every pixel of its image on the device (`pixels.model_input`)."""
  eigenvectors = np.asarray(IMAGENET_PCA_EIGENVECTORS)  # [rgb, component]
  return ((alpha * np.asarray(IMAGENET_PCA_EIGENVALUES)) @ eigenvectors.T).astype(np.float32)


def training_draws(config: ml_collections.ConfigDict, epoch: np.ndarray, index: np.ndarray
                   ) -> dict[str, np.ndarray]:
  """The random choices of §4.1 for training examples `index` [n] in `epoch` [n], from
  (config.seed, epoch, index) alone: 'crop_position' float32 [n, 2] in [0, 1), where the random
  crop lies (`random_crop_window`); 'flip' bool [n], whether to mirror the image, True with
  probability 1/2 (False without `augment.flip`); 'rgb_shift' float32 [n, 3], the lighting shift
  with alpha_i ~ N(0, pca_lighting^2) (zeros without `augment.pca_lighting`).

  Drawn with numpy for a whole window of examples at once, not per image in tf.data: each small
  TensorFlow op in the per-image map costs about a microsecond, a stateless random draw more, and
  drawing these there cost ~50 us per image, ~4% of a decode (docs/benchmarks.md, "Input
  pipeline").
  The flip and the shift are applied on the device (`pixels.model_input`).
  """
  uniform = example_uniforms(int(config.seed), epoch, index, 9)
  augment = config.augment
  flip = uniform[:, 2] < 0.5 if augment.flip else np.zeros(len(index), bool)
  # Box-Muller: three standard normals from six uniforms.
  normal = np.sqrt(-2 * np.log(uniform[:, 3:6])) * np.cos(2 * np.pi * uniform[:, 6:9])
  return {'crop_position': np.minimum(uniform[:, :2], 1 - 2.0**-24).astype(np.float32),
          'flip': flip,
          'rgb_shift': lighting_shifts(normal * augment.pca_lighting)}


def resize_shorter_side(image: tf.Tensor, size: int, *, antialias: bool = False) -> tf.Tensor:
  """Resizes uint8 [H, W, 3] so that min(H, W) == size: uint8. `antialias` widens the bilinear
  filter when shrinking (for offline copies, `downsample`; the pipeline's own resizes do not)."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  new_shape = tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)
  return _resize(image, tf.maximum(new_shape, size), antialias=antialias)


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
  side = device_region_size(config)
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
  window_fn = central_square_window if config.center_square else whole_image_window
  image = resize_shorter_side(decode_window(encoded, window_fn), config.resize_size)
  return five_crop(image, config.image_size)


# --------------------------------------------------------------------------------------------------
# Sources: a split of a dataset, its per-process shards, and reading examples by index.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shard:
  """One process's contiguous range [start, stop) of the examples of a split, in a fixed order.

  `examples(a, b)` is a dataset of the shard's examples [a, b), in order: 'label', 'index' (the
  example's index in the whole split) and `image_field`: 'encoded' (image bytes) or 'path' (an image
  file). `blocks` cut [0, size) into ranges that are cheap to read as a unit; a training epoch loads
  and permutes about `window_examples` examples at a time.
  """
  split_size: int
  start: int
  stop: int
  blocks: tuple[tuple[int, int], ...]
  window_examples: int
  image_field: str
  examples: Callable[[int, int], tf.data.Dataset]

  @property
  def size(self) -> int:
    return self.stop - self.start


def _shard_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous, disjoint, covering ranges whose sizes differ by at most one."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _split_blocks(boundaries: Sequence[int], start: int, stop: int) -> list[tuple[int, int]]:
  """Cuts [start, stop) at `boundaries`."""
  cuts = [start] + [b for b in boundaries if start < b < stop] + [stop]
  return list(zip(cuts[:-1], cuts[1:]))


# TFDS ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tfds_builder(name: str, data_dir: str | None, prepared: bool = True
                  ) -> tfds.core.DatasetBuilder:
  """The builder of TFDS dataset `name`; unless `prepared` is False, it must be built in `data_dir`."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"Unknown dataset {name!r}. config.dataset is a TFDS name (e.g. 'imagenet2012'), "
        f"'{image_folders.PREFIX}/path/to/images', 'synthetic' or 'synthetic_learnable'.") from e
  if prepared and not builder.info.splits:
    raise DatasetNotPreparedError(_not_prepared_message(name, builder, data_dir))
  return builder


def _not_prepared_message(name: str, builder: tfds.core.DatasetBuilder, data_dir: str | None
                          ) -> str:
  data_dir_flag = f' --data_dir={data_dir}' if data_dir else ''
  if name.split('/')[0].split(':')[0] == 'imagenet2012':
    return (
        f'ImageNet ({name!r}) is not prepared: nothing at {builder.data_dir}.\n'
        'Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
        'https://image-net.org/download-images into one folder, DIR, and build it once with\n'
        f'  python -m alexnet_jax.prepare --dataset={name} --manual_dir=DIR{data_dir_flag}\n'
        '(about 150 GB of disk and a few hours), or set --config.data_dir to the TFDS data dir '
        'that already holds it.')
  return (f'Dataset {name!r} is not prepared: nothing at {builder.data_dir}. Build it once with\n'
          f'  python -m alexnet_jax.prepare --dataset={name}{data_dir_flag}\n'
          'or set --config.data_dir to the TFDS data dir that already holds it.')


def _tfds_shard(name: str, data_dir: str | None, split: str, process_index: int,
                process_count: int) -> _Shard:
  builder = _tfds_builder(name, data_dir)
  image_key, label_key = builder.info.supervised_keys
  decoders = {image_key: tfds.decode.SkipDecoding()}
  # The split spec ('train', 'train[:10%]', 'train+validation', ...) as pieces (name, from, to) of
  # named splits; example i of the spec is the i-th example of their concatenation.
  pieces = []
  for instruction in tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits):
    # Absolute: no negative index is left, and None stands for an end of the split.
    length = builder.info.splits[instruction.splitname].num_examples
    pieces.append((instruction.splitname, instruction.from_ or 0,
                   length if instruction.to is None else instruction.to))
  piece_starts = np.cumsum([0] + [to - from_ for _, from_, to in pieces])
  lo, hi = _shard_range(int(piece_starts[-1]), process_index, process_count)

  def locate(start: int, stop: int) -> list[str]:
    """TFDS split strings for examples [start, stop) of the spec."""
    specs = []
    for (name, from_, _), offset, end in zip(pieces, piece_starts[:-1], piece_starts[1:]):
      a, b = max(start, offset), min(stop, end)
      if a < b:
        specs.append(f'{name}[{from_ + a - offset}:{from_ + b - offset}]')
    return specs

  # Block boundaries: piece ends and record-file ends, so that a block is read from one file.
  boundaries = set(piece_starts.tolist())
  for (name, from_, to), offset in zip(pieces, piece_starts[:-1]):
    file_ends = np.cumsum(builder.info.splits[name].shard_lengths) - from_ + offset
    boundaries.update(int(b) for b in file_ends if offset < b < offset + to - from_)
  blocks = tuple((a - lo, b - lo) for a, b in _split_blocks(sorted(boundaries), lo, hi))

  def examples(start: int, stop: int) -> tf.data.Dataset:
    # In file order (one reader per file in turn), so that the n-th record is example start + n.
    # No examples (a process with none of a small eval split): none of the spec's first one, as TFDS
    # reads no empty split; the element spec stays the same.
    specs = locate(lo + start, lo + stop) if start < stop else locate(0, 1)
    with _TFDS_LOCK:
      ds = builder.as_dataset(
          split='+'.join(specs), decoders=decoders, shuffle_files=False,
          read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
    ds = ds.take(stop - start).apply(tf.data.experimental.assert_cardinality(stop - start))
    return tf.data.Dataset.zip(ds, tf.data.Dataset.range(lo + start, lo + stop)).map(
        lambda ex, i: {'encoded': ex[image_key], 'label': ex[label_key], 'index': i})

  return _Shard(split_size=int(piece_starts[-1]), start=lo, stop=hi, blocks=blocks,
                window_examples=_WINDOW_EXAMPLES, image_field='encoded', examples=examples)


# Image folders ------------------------------------------------------------------------------------


def _folder_shard(root: str, split: str, strict: bool, process_index: int, process_count: int
                  ) -> _Shard:
  paths, labels = image_folders.images(root, split, strict)
  lo, hi = _shard_range(len(paths), process_index, process_count)

  def examples(start: int, stop: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {'path': paths[lo + start:lo + stop], 'label': labels[lo + start:lo + stop],
         'index': np.arange(lo + start, lo + stop)})

  # Paths cost nothing to hold: one block, one window, so each epoch is a uniform permutation.
  return _Shard(split_size=len(paths), start=lo, stop=hi, blocks=((0, hi - lo),),
                window_examples=hi - lo, image_field='path', examples=examples)


# Both ---------------------------------------------------------------------------------------------


def _is_folder(config: ml_collections.ConfigDict) -> bool:
  return config.dataset.startswith(image_folders.PREFIX)


def _shard(config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
           ) -> _Shard:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count}).')
  return _memoized_shard(config.dataset, config.data_dir, split, config.strict_data,
                         config.cache, process_index, process_count)


@functools.lru_cache(maxsize=8)
def _memoized_shard(dataset: str, data_dir: str | None, split: str, strict: bool, cache: bool,
                    process_index: int, process_count: int) -> _Shard:
  if dataset.startswith(image_folders.PREFIX):
    shard = _folder_shard(image_folders.root(dataset), split, strict, process_index, process_count)
  else:
    shard = _tfds_shard(dataset, data_dir, split, process_index, process_count)
  return _cached(shard) if cache else shard


def _cached(shard: _Shard) -> _Shard:
  """The same shard with its encoded images read once and kept in memory (small datasets only)."""
  examples = shard.examples(0, shard.size)
  if shard.image_field == 'path':
    examples = examples.map(lambda ex: {'encoded': tf.io.read_file(ex['path']),
                                        'label': ex['label'], 'index': ex['index']},
                            num_parallel_calls=tf.data.AUTOTUNE)
  arrays = _to_numpy(examples, shard.size)

  return dataclasses.replace(
      shard, image_field='encoded',
      examples=lambda start, stop: tf.data.Dataset.from_tensor_slices(
          {k: v[start:stop] for k, v in arrays.items()}))


def _to_numpy(examples: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
  """All `count` elements of `examples` as numpy arrays."""
  if count == 0:  # the shard of a process with no example of a small split; batch(0) is refused
    return {k: np.zeros([0], spec.dtype.as_numpy_dtype)
            for k, spec in examples.element_spec.items()}
  return {k: v.numpy() for k, v in examples.batch(count).get_single_element().items()}


def _encoded(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return example['encoded'] if 'encoded' in example else tf.io.read_file(example['path'])


# glibc's mallopt parameters, and the largest values its own adaptive thresholds reach on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20


@functools.cache
def _undo_generator_malloc_setting() -> None:
  """Gives glibc's malloc back the thresholds that TensorFlow's generator datasets lower.

  The first `tf.data.Dataset.from_generator` a process runs sets malloc's mmap and trim thresholds
  to 128 KB for the whole process (TensorFlow's workaround for a memory growth it saw with Python
  3.11, logged as "Memory patch applied"). Every malloc'd buffer above 128 KB is then mapped afresh
  and page-faulted in on each use: with malloc serving TensorFlow's tensors, that was every decoded
  window, resized crop and batch of this pipeline, and it cost more CPU per training image than the
  resize (docs/benchmarks.md, "Input pipeline"). TensorFlow now keeps its tensors in a pool of its
  own (alexnet_jax/__init__.py); JAX's host buffers, numpy's and Python's still come from malloc.
  This runs a generator dataset once, so that TensorFlow's setting is made now, and then sets the
  thresholds to the largest values glibc's adaptive ones would reach (32 MB and twice that), so
  image-sized buffers are reused from the heap again. Other C libraries have no `mallopt` and are
  left alone.
  """
  list(tf.data.Dataset.from_generator(lambda: iter([0]), output_signature=tf.TensorSpec([], tf.int32)))
  libc = ctypes.CDLL(None)
  if hasattr(libc, 'mallopt'):
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MAX_MMAP_THRESHOLD)


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


# --------------------------------------------------------------------------------------------------
# The data interface (docs/design.md).
# --------------------------------------------------------------------------------------------------


def get_dataset_info(config: ml_collections.ConfigDict):
  """Class count, class names and split sizes of `config.dataset`: an `alexnet_jax.data.DatasetInfo`."""
  from alexnet_jax.dataset_info import DatasetInfo  # pylint: disable=g-import-not-at-top
  if _is_folder(config):
    root = image_folders.root(config.dataset)
    classes = image_folders.class_names(root)
    train = image_folders.images(root, config.train_split, config.strict_data)[0]
    evaluation = image_folders.images(root, config.eval_split, config.strict_data)[0]
    return DatasetInfo(num_classes=len(classes), num_train_examples=len(train),
                       num_eval_examples=len(evaluation), class_names=classes)
  builder = _tfds_builder(config.dataset, config.data_dir)
  label = _label_feature(builder)
  return DatasetInfo(
      num_classes=label.num_classes,
      num_train_examples=builder.info.splits[config.train_split].num_examples,
      num_eval_examples=builder.info.splits[config.eval_split].num_examples,
      class_names=tuple(label.names))


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names of `config.dataset` in label order, reading no image: a folder dataset's class
  folders, or a TFDS dataset's label names (known without its data)."""
  if _is_folder(config):
    return image_folders.class_names(image_folders.root(config.dataset))
  return tuple(_label_feature(_tfds_builder(config.dataset, config.data_dir, prepared=False)).names)


def _label_feature(builder: tfds.core.DatasetBuilder) -> tfds.features.ClassLabel:
  return builder.info.features[builder.info.supervised_keys[1]]


def split_examples(config: ml_collections.ConfigDict, split: str,
                   skip: np.ndarray | None = None) -> tf.data.Dataset:
  """Every example of `split` once, in order: {'encoded': image bytes, 'label': int64, 'index': int64}.

  Folder datasets leave out the images that cannot be decoded, as training does. `skip`, bool
  [split size] by 'index', leaves out examples before a folder dataset's files are read.
  """
  shard = _shard(config, split, process_index=0, process_count=1)
  examples = shard.examples(0, shard.size)
  if skip is not None:
    examples = examples.filter(lambda ex: ~tf.gather(tf.constant(skip), ex['index']))
  return examples.map(
      lambda ex: {'encoded': _encoded(ex), 'label': ex['label'], 'index': ex['index']},
      num_parallel_calls=tf.data.AUTOTUNE)


def _epoch_windows(shard: _Shard, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
  """Epoch `epoch`'s blocks in a (seed, epoch)-random order, grouped into windows."""
  order = np.random.default_rng([seed, epoch]).permutation(len(shard.blocks))
  windows, window, size = [], [], 0
  for i in order:
    window.append(shard.blocks[i])
    size += shard.blocks[i][1] - shard.blocks[i][0]
    if size >= shard.window_examples:
      windows.append(window)
      window, size = [], 0
  return windows + [window] if window else windows


def _read_blocks(shard: _Shard, blocks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
  """The examples of `blocks`, concatenated; the blocks (separate files) are read in parallel."""
  datasets = [(shard.examples(a, b), b - a) for a, b in blocks]
  if len(datasets) == 1:  # a folder dataset's window: no thread needed
    parts = [_to_numpy(*datasets[0])]
  else:
    # multiprocessing's thread pool, not concurrent.futures: its executors refuse new work once the
    # interpreter starts to exit, before `_ClosedAtExit` has dropped a stream that is still alive and
    # may be reading its next window then (a traceback at every exit).
    with multiprocessing.pool.ThreadPool(min(len(blocks), 8)) as pool:
      parts = pool.map(lambda dataset_count: _to_numpy(*dataset_count), datasets)
  return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _train_windows(shard: _Shard, seed: int, start: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's endless training stream from position `start`, a permuted window at a time."""
  epoch, offset = divmod(start, shard.size)
  while True:
    for window_index, blocks in enumerate(_epoch_windows(shard, seed, epoch)):
      size = sum(b - a for a, b in blocks)
      if offset >= size:  # seeking: skip the window without reading it
        offset -= size
        continue
      examples = _read_blocks(shard, blocks)
      order = np.random.default_rng([seed, epoch, window_index]).permutation(size)[offset:]
      offset = 0
      examples = {k: v[order] for k, v in examples.items()}
      examples['epoch'] = np.full(len(order), epoch, np.int64)
      yield examples
    epoch += 1


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches of this process; the first is the batch of global step `start_step`.

  {'image': uint8 [local_batch_size, image_size, image_size, 3] (crops, not yet mirrored), or with
            `config.device_resize_scale` [local_batch_size, R, R, 3], regions that hold the crops'
            windows (R = `device_region_size(config)`),
   'window': int32 [local_batch_size, 3] (with regions only: [y, x, size] of each crop's window in
            its region, resized to the crop on the device, `pixels.resize_windows`),
   'flip': bool [local_batch_size] (which images to mirror, on the device),
   'rgb_shift': float32 [local_batch_size, 3] (the lighting noise, added on the device),
   'label': int32 [local_batch_size]}
  """
  _check_sizes(config)
  shard = _shard(config, config.train_split, process_index, process_count)
  if shard.size < local_batch_size:
    raise ValueError(f'{config.dataset} {config.train_split}: process {process_index} has '
                     f'{shard.size} examples, fewer than one batch of {local_batch_size}.')
  signature = {shard.image_field: tf.TensorSpec([None], tf.string),
               'label': tf.TensorSpec([None], tf.int32),
               'crop_position': tf.TensorSpec([None, 2], tf.float32),
               'flip': tf.TensorSpec([None], tf.bool),
               'rgb_shift': tf.TensorSpec([None, 3], tf.float32)}

  def windows_with_draws():
    for examples in _train_windows(shard, int(config.seed), start_step * local_batch_size):
      yield {shard.image_field: examples[shard.image_field],
             'label': examples['label'].astype(np.int32),
             **training_draws(config, examples['epoch'], examples['index'])}

  _undo_generator_malloc_setting()
  windows = tf.data.Dataset.from_generator(windows_with_draws, output_signature=signature)

  def preprocess(example):
    crop = preprocess_train(_encoded(example), example['crop_position'], config)
    return crop | {k: example[k] for k in ('flip', 'rgb_shift', 'label')}

  ds = windows.prefetch(1).unbatch()
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _ClosedAtExit(iter(tfds.as_numpy(ds.with_options(_options()))))


class _ClosedAtExit:
  """An iterator that is dropped when the interpreter starts to exit, if it is still alive then.

  The training stream's windows come from a Python generator that TensorFlow calls from its own
  threads. An iterator still alive when Python finalizes (a module global, a notebook variable) would
  be destroyed after those threads can no longer enter Python: a window read in flight then never
  ends and the process hangs at exit. Dropping the iterator from an `atexit` hook, while Python still
  runs, lets any call in flight finish.
  """

  _open: 'weakref.WeakSet[_ClosedAtExit]' = weakref.WeakSet()

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]]):
    self._iterator = iterator
    self._open.add(self)

  def __iter__(self) -> '_ClosedAtExit':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  @classmethod
  def close_all(cls) -> None:
    for stream in list(cls._open):
      stream._iterator = iter(())


atexit.register(_ClosedAtExit.close_all)


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard of the eval split, padded to a batch count all processes share.

  {'image': uint8 [B, S, S, 3] or [B, 5, S, S, 3] (eval_crops=10: the corner and center crops,
   mirrored on the device), 'label': int32 [B],
   'mask': bool [B]}, where padding examples have mask False.
  """
  _check_sizes(config)
  shard = _shard(config, config.eval_split, process_index, process_count)
  # The largest shard sets the batch count of every process, so that their collectives line up.
  largest = -(-shard.split_size // process_count)
  num_batches = -(-largest // local_batch_size)
  crops = [5] if config.eval_crops == 10 else []
  image_shape = crops + [config.image_size, config.image_size, 3]

  ds = shard.examples(0, shard.size).map(
      lambda ex: {'image': preprocess_eval(_encoded(ex), config),
                  'label': tf.cast(ex['label'], tf.int32), 'mask': True},
      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors(
      {'image': tf.zeros(image_shape, tf.uint8), 'label': 0, 'mask': False})
  ds = ds.concatenate(padding.repeat(num_batches * local_batch_size - shard.size))
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_options())))
