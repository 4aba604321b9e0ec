"""How fast the training input pipeline runs, per CPU core, against plain JPEG decoding of the same files.

  python -m alexnet_jax.bench_input [--num_images=512] [--cores=N]

Writes ImageNet-like JPEGs (500x375 and 375x500, quality 90, photo-like content: smooth shapes plus
fine noise, ~110 KB like the average ImageNet file) as a folder dataset, then measures, in the same
process and on the same files, with TensorFlow's libjpeg-turbo in both:
  * decode: read + full `tf.io.decode_jpeg`, nothing else;
  * train: `input_pipeline.train_batches` with the paper's recipe (resize 256, random 227 crop decoded
    with decode_and_crop_jpeg, flip, PCA lighting shift), uint8 batches of --batch_size.
Both run tf.data parallel maps over the same cores. The per-core rate is images per second of CPU
time the process used (all threads), which holds up on a machine shared with other work; wall-clock
images/s are printed too. The goal is train >= 0.9x decode per core: the augmentation should cost no
more than the decode it saves.

The last steps (lighting shift, mean, std) run inside the jitted train step (alexnet_jax/pixels.py)
and are not part of this measure; bench/step_inputs.py shows what they add to a step.
"""

import dataclasses
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow as tf

from alexnet_jax import input_pipeline
from configs import default

_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Distinct JPEG files written.')
_CORES = flags.DEFINE_integer('cores', None, 'CPU cores to use; default: all this process may use.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_PASSES = flags.DEFINE_integer('passes', 4, 'Timed passes over the files per measurement.')


def photo_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: coarse random colour fields, upsampled smoothly, plus pixel noise.

  JPEG decode time depends on content; like photos, this compresses to ~0.6 bytes/pixel at
  quality 90 (pure noise would be 3x larger and slower to decode, flat colour far faster).
  """
  coarse = rng.uniform(0, 255, size=(max(2, height // 16), max(2, width // 16), 3))
  smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
  noise = rng.normal(0, 8, size=(height, width, 3))
  return np.clip(np.asarray(smooth, np.float32) + noise, 0, 255).astype(np.uint8)


def write_images(root: str, num_images: int) -> list[str]:
  """ROOT/train/class_k/*.JPEG and ROOT/val/class_0/: an ImageNet-like folder dataset."""
  rng = np.random.default_rng(0)
  paths = []
  for i in range(num_images):
    directory = os.path.join(root, 'train', f'class_{i % 8}')
    os.makedirs(directory, exist_ok=True)
    height, width = (375, 500) if i % 4 else (500, 375)
    paths.append(os.path.join(directory, f'{i:06d}.JPEG'))
    Image.fromarray(photo_like_image(rng, height, width)).save(paths[-1], quality=90)
  os.makedirs(os.path.join(root, 'val', 'class_0'), exist_ok=True)
  return paths


@dataclasses.dataclass(frozen=True)
class Rate:
  images_per_second: float  # wall clock
  images_per_cpu_second: float  # per second of CPU time of this process, all threads: per core


def _rate(batches, images_per_batch: int, num_batches: int) -> Rate:
  next(batches)  # warm up: tracing, thread pools, first window
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  images = num_batches * images_per_batch
  return Rate(images / (time.perf_counter() - wall), images / (time.process_time() - cpu))


def decode_rate(paths: list[str], cores: int, batch_size: int, num_batches: int) -> Rate:
  """Images/s of reading and fully decoding the files, `cores` parallel calls."""
  ds = tf.data.Dataset.from_tensor_slices(paths).repeat()
  ds = ds.map(lambda path: tf.io.decode_jpeg(tf.io.read_file(path), channels=3),
              num_parallel_calls=cores)
  ds = ds.map(tf.shape).batch(batch_size).prefetch(2)  # keep decoding, not copying, the measure
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  return _rate(iter(ds.with_options(options)), batch_size, num_batches)


def train_rate(root: str, batch_size: int, num_batches: int) -> Rate:
  config = default.get_config()
  config.dataset = f'folder:{root}'
  config.eval_split = 'train'
  batches = input_pipeline.train_batches(config, start_step=0, local_batch_size=batch_size,
                                         process_index=0, process_count=1)
  return _rate(batches, batch_size, num_batches)


def main(argv):
  del argv
  cores = _CORES.value or len(os.sched_getaffinity(0))
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
  with tempfile.TemporaryDirectory() as root:
    paths = write_images(root, _NUM_IMAGES.value)
    kilobytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e3
    num_batches = max(1, _PASSES.value * len(paths) // _BATCH_SIZE.value)
    decode = decode_rate(paths, cores, _BATCH_SIZE.value, num_batches)
    train = train_rate(root, _BATCH_SIZE.value, num_batches)
  print(f'{len(paths)} JPEGs, 500x375 / 375x500, quality 90, {kilobytes:.0f} KB average; '
        f'{cores} core(s), TensorFlow {tf.__version__}')
  print('                images/s (wall)   images per CPU-second (per core)')
  for name, rate in (('plain decode', decode), ('train pipeline', train)):
    print(f'{name:15s} {rate.images_per_second:15.1f}   {rate.images_per_cpu_second:15.1f}')
  print(f'train / decode per core: '
        f'{train.images_per_cpu_second / decode.images_per_cpu_second:.2f}x')


if __name__ == '__main__':
  app.run(main)
