"""How fast the training input pipeline runs, per CPU core, against plain JPEG decoding of the same files.

  python -m bench.input_pipeline [--num_images=512] [--cores=N]

Writes ImageNet-like JPEGs (500x375 and 375x500, quality 90, photo-like content: smooth shapes plus
fine noise, ~67 KB each) as a folder dataset, then measures, in the same process and on the same
files, with TensorFlow's libjpeg-turbo throughout:
  * plain decode: read + full `tf.io.decode_jpeg`, nothing else;
  * window decode: read + `decode_and_crop_jpeg` of the window that a random 227 crop of the 256
    resize covers (in its central square, as in training with the default config), nothing kept;
  * window, no resize: those windows cut to 227x227 (no resampling) and batched: the pipeline less
    its resize and lighting draw, an upper bound for any pipeline built on this decode;
  * train pipeline: `pipeline.train_batches` with the paper's recipe (resize 256, random 227
    crop decoded with decode_and_crop_jpeg, flip, PCA lighting shift), uint8 batches of --batch_size,
    as the default config sets it: the host decodes a 336x336 region around each crop's window and
    the device resizes the window (`config.device_resize_scale`);
  * train, host resize: the same with `device_resize_scale=0`: TensorFlow resizes each crop on the
    host, and the batch holds the 227x227 crops;
  * eval, 1 crop(s) and eval, 10 crop(s): `pipeline.eval_batches`: the center crop (its
    window decoded and resized) or the five crops of the central square (decoded as a window and
    resized to 256x256) whose mirrors the device adds, §4.1's ten; per image;
  * plain decode, 256, train pipeline, 256 and train, host resize, 256: the same three on the same
    images stored at shorter side 256, as the paper stored ImageNet (§2): a training window is then
    the crop, nothing is resized. Their ratio is to the decode of those files; a line each compares
    the pipelines on them with the decode of the 500x375 files;
  * train, store: `store.train_batches` from a pixel store of the same files (`prepare --store_to`,
    alexnet_jax/data/store.py, written here first: each image's central square at 256x256), the
    batches training gets: the stored squares, each crop's offset, flip and lighting shift; the
    host copies bytes and decodes nothing. Its ratio is to the plain decode of the 500x375 files;
    it is timed over 10x the batches of the other rows (it is that much faster).
All run tf.data parallel maps over the same cores. The per-core rate is images per second of CPU
time the process used (all threads), which holds up on a machine shared with other work; wall-clock
images/s are printed too. Each of --rounds rounds measures every row in turn; a row's ratio to the
plain decode is taken within each round, and the medians over rounds are printed. The goal is
train >= 0.9x plain decode per core: the augmentation should cost no more than the decode it saves.

The last steps (the resize of the regions, mirroring, lighting shift, mean, std) run inside the
jitted train step (alexnet_jax/data/pixels.py) and are not part of this measure; bench/step_inputs.py
shows what they add to a step.
"""

import dataclasses
import functools
import itertools
import os
import tempfile
import time
from collections.abc import Callable

from absl import app
from absl import flags
import ml_collections
import numpy as np
from PIL import Image
import tensorflow as tf

from alexnet_jax import defaults
from alexnet_jax import runtime
from alexnet_jax.data import decode
from alexnet_jax.data import draws
from alexnet_jax.data import geometry
from alexnet_jax.data import pipeline
from alexnet_jax.data import sources
from alexnet_jax.data import store
from alexnet_jax.data import store_writer

_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Distinct JPEG files written.')
_CORES = flags.DEFINE_integer('cores', None, 'CPU cores to use; default: all this process may use.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_PASSES = flags.DEFINE_integer('passes', 4, 'Timed passes over the files per measurement.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of all measurements; medians are reported.')


def photo_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: coarse random colour fields, upsampled smoothly, plus pixel noise.

  JPEG decode time depends on content; like photos, this compresses to ~0.6 bytes/pixel at
  quality 90 (pure noise would be 3x larger and slower to decode, flat colour far faster).
  """
  coarse = rng.uniform(0, 255, size=(max(2, height // 16), max(2, width // 16), 3))
  smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
  noise = rng.normal(0, 8, size=(height, width, 3))
  return np.clip(np.asarray(smooth, np.float32) + noise, 0, 255).astype(np.uint8)


def write_images(root: str, num_images: int, shorter_side: int | None = None) -> list[str]:
  """ROOT/train/class_k/*.JPEG and ROOT/val/class_0/: an ImageNet-like folder dataset.

  With `shorter_side`, each image is first downsampled (PIL, antialiased) so that its shorter side
  has that length, as the paper stored ImageNet (§2): the same content in fewer pixels.
  """
  rng = np.random.default_rng(0)
  paths = []
  for i in range(num_images):
    directory = os.path.join(root, 'train', f'class_{i % 8}')
    os.makedirs(directory, exist_ok=True)
    height, width = (375, 500) if i % 4 else (500, 375)
    image = Image.fromarray(photo_like_image(rng, height, width))
    if shorter_side:
      scale = shorter_side / min(height, width)
      image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    paths.append(os.path.join(directory, f'{i:06d}.JPEG'))
    image.save(paths[-1], quality=90)
  os.makedirs(os.path.join(root, 'val', 'class_0'), exist_ok=True)
  return paths


@dataclasses.dataclass(frozen=True)
class Rate:
  images_per_second: float  # wall clock
  images_per_cpu_second: float  # per second of CPU time of this process, all threads: per core


def _rate(batches, images_per_batch: int, num_batches: int) -> Rate:
  # Warm up (tracing, thread pools, the first window), and drain what the prefetch buffers filled
  # meanwhile: the timed batches are made while they are timed.
  for _ in range(2):
    next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  images = num_batches * images_per_batch
  return Rate(images / (time.perf_counter() - wall), images / (time.process_time() - cpu))


def map_rate(paths: list[str], per_image: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], cores: int,
             batch_size: int, num_batches: int) -> Rate:
  """Images/s of `per_image(path, crop_position)` over the files, `cores` parallel calls, results
  batched; each file has a random crop position, drawn as training draws them."""
  positions = draws.example_uniforms(0, np.zeros(len(paths)), np.arange(len(paths)), 2)
  ds = tf.data.Dataset.from_tensor_slices((paths, positions.astype(np.float32))).repeat()
  ds = ds.map(per_image, num_parallel_calls=cores).batch(batch_size).prefetch(2)
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  return _rate(iter(ds.with_options(options)), batch_size, num_batches)


def full_decode(path: tf.Tensor, crop_position: tf.Tensor) -> tf.Tensor:
  """The plain decode: read and decode the whole file; only its shape is batched, so the measure is
  decoding, not copying."""
  del crop_position
  return tf.shape(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))


def training_window(path: tf.Tensor, crop_position: tf.Tensor) -> tf.Tensor:
  """The window of a random 227 crop of the 256 resize (as in training), decoded: uint8 [s, s, 3]."""
  window_fn = functools.partial(geometry.random_crop_window, crop_position, resize_size=256,
                                image_size=227, center_square=True)
  return decode.decode_window(tf.io.read_file(path), window_fn)


STAGES = {
    'plain decode': full_decode,
    'window decode': lambda path, position: tf.shape(training_window(path, position)),
    'window, no resize': lambda path, position: training_window(path, position)[:227, :227],
}


def _folder_config(root: str, eval_crops: int = 1) -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.dataset = f'folder:{root}'
  config.eval_split = 'train'  # the files written, evaluated too
  config.eval_crops = eval_crops
  return config


def train_rate(root: str, batch_size: int, num_batches: int, host_resize: bool = False) -> Rate:
  config = _folder_config(root)
  if host_resize:
    config.device_resize_scale = 0
  batches = pipeline.train_batches(config, start_step=0, local_batch_size=batch_size,
                                         process_index=0, process_count=1)
  return _rate(batches, batch_size, num_batches)


def eval_rate(root: str, eval_crops: int, batch_size: int, num_batches: int) -> Rate:
  """The evaluation pipeline (`eval_crops` 1 or 10) over the files, repeated: one pass after
  another, as many batches as the training rows time."""
  config = _folder_config(root, eval_crops)
  passes = itertools.chain.from_iterable(
      pipeline.eval_batches(config, local_batch_size=batch_size, process_index=0,
                                  process_count=1) for _ in itertools.count())
  return _rate(passes, batch_size, num_batches)


def store_rate(store_dir: str, batch_size: int, num_batches: int) -> Rate:
  """Training batches from the pixel store in `store_dir` (at STORED_SIZE)."""
  config = defaults.get_config()
  config.dataset, config.eval_split = f'{store.PREFIX}{store_dir}', 'train'
  batches = store.train_batches(config, start_step=0, local_batch_size=batch_size,
                                process_index=0, process_count=1)
  return _rate(batches, batch_size, num_batches)


def write_store(root: str, store_dir: str) -> float:
  """Writes the pixel store of the folder dataset `root`'s training split; returns the CPU seconds
  per image it took (decode, resize to 256x256, write), after the folder's decode check."""
  config = _folder_config(root)
  sources.get_dataset_info(config)  # the decode check, remembered in this process
  cpu = time.process_time()
  count = store_writer.write(config, store_dir, resize_size=STORED_SIZE, splits=('train',))['train']
  return (time.process_time() - cpu) / count


# The paper's storage (§2): the same images at shorter side 256, so a training window is the crop.
STORED_SIZE = 256
STORED_ROWS = (f'plain decode, {STORED_SIZE}', f'train pipeline, {STORED_SIZE}',
               f'train, host resize, {STORED_SIZE}')
STORE_ROW = 'train, store'
STORE_BATCHES = 10  # times the other rows' batches: the store row is that much faster


def measure(roots: dict[str, str], paths: dict[str, list[str]], cores: int, batch_size: int,
            num_batches: int) -> dict[str, Rate]:
  """One round: every row, each with a fresh iterator, in turn. `roots` has the datasets
  'original' and 'stored' and the pixel store 'store'; `paths` the files of the first two."""
  rates = {name: map_rate(paths['original'], per_image, cores, batch_size, num_batches)
           for name, per_image in STAGES.items()}
  rates['train pipeline'] = train_rate(roots['original'], batch_size, num_batches)
  rates['train, host resize'] = train_rate(roots['original'], batch_size, num_batches,
                                           host_resize=True)
  for crops in (1, 10):
    rates[f'eval, {crops} crop(s)'] = eval_rate(roots['original'], crops, batch_size, num_batches)
  rates[STORED_ROWS[0]] = map_rate(paths['stored'], full_decode, cores, batch_size, num_batches)
  rates[STORED_ROWS[1]] = train_rate(roots['stored'], batch_size, num_batches)
  rates[STORED_ROWS[2]] = train_rate(roots['stored'], batch_size, num_batches, host_resize=True)
  rates[STORE_ROW] = store_rate(roots['store'], batch_size, STORE_BATCHES * num_batches)
  return rates


def main(argv):
  del argv
  cores = _CORES.value or len(os.sched_getaffinity(0))
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
  with tempfile.TemporaryDirectory() as tmp:
    # The decode checks of these files are of no use after this run: kept here, removed with them.
    os.environ['XDG_CACHE_HOME'] = os.path.join(tmp, 'cache')
    roots = {'original': os.path.join(tmp, 'original'), 'stored': os.path.join(tmp, 'stored'),
             'store': os.path.join(tmp, 'store')}
    paths = {'original': write_images(roots['original'], _NUM_IMAGES.value),
             'stored': write_images(roots['stored'], _NUM_IMAGES.value, STORED_SIZE)}
    kilobytes = {k: sum(map(os.path.getsize, v)) / len(v) / 1e3 for k, v in paths.items()}
    store_write_ms = 1e3 * write_store(roots['original'], roots['store'])
    num_batches = max(1, _PASSES.value * _NUM_IMAGES.value // _BATCH_SIZE.value)
    rounds = [measure(roots, paths, cores, _BATCH_SIZE.value, num_batches)
              for _ in range(_ROUNDS.value)]
  print(f'{_NUM_IMAGES.value} JPEGs, 500x375 / 375x500, quality 90, {kilobytes["original"]:.0f} KB '
        f'average (", {STORED_SIZE}" rows: the same images stored at {STORED_SIZE}x341 / '
        f'341x{STORED_SIZE}, {kilobytes["stored"]:.0f} KB); {cores} core(s), TensorFlow '
        f'{tf.__version__}; medians of {len(rounds)} round(s)')
  print(f'{"":24s} {"images/s (wall)":>16s} {"per core":>10s} {"/ decode":>9s}')
  # A row's ratio to the plain decode of the same files is taken within each round (the two measured
  # a minute apart at most, under the same load), then the median over rounds.
  ratios = {name: [r[name].images_per_cpu_second /
                   r[STORED_ROWS[0] if name in STORED_ROWS else 'plain decode'].images_per_cpu_second
                   for r in rounds] for name in rounds[0]}
  for name in rounds[0]:
    wall = np.median([r[name].images_per_second for r in rounds])
    per_core = np.median([r[name].images_per_cpu_second for r in rounds])
    print(f'{name:24s} {wall:16.1f} {per_core:10.1f} {np.median(ratios[name]):8.2f}x')
  for name in STORED_ROWS[1:]:
    speedup = [r[name].images_per_cpu_second / r['plain decode'].images_per_cpu_second
               for r in rounds]
    print(f'{name}: / 500x375 decode per core: {np.median(speedup):.2f}x')
  print(f'{STORE_ROW}: writing the store took {store_write_ms:.2f} ms of CPU per image; its batches '
        f'per core / plain decode: {np.median(ratios[STORE_ROW]):.2f}x '
        f'(rounds: {", ".join(f"{r:.2f}" for r in ratios[STORE_ROW])})')
  train = ratios['train pipeline']
  print(f'train / decode per core: {np.median(train):.2f}x '
        f'(rounds: {", ".join(f"{r:.2f}" for r in train)})')


if __name__ == '__main__':
  runtime.configure()  # TensorFlow's host memory pool, as training has it
  app.run(main)
