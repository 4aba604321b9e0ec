"""How fast a pixel store's images are gathered into batches, per CPU core, by file format.

  python -m bench.store_formats            # --num_images=2048 --batch_size=128 --rounds=5

Writes --num_images random 256x256x3 uint8 images (196 KB each) in two formats and gathers them in
random batches, one thread, the way a training epoch reads a store:
  * npy, memory-mapped: the store's own reader (`store.Images.copy`: a NumPy file opened with
    `np.load(mmap_mode='r')`, each image one copy from the page cache into the batch);
  * npy, pread: the same file, each image read with one `os.preadv` into the batch;
  * ArrayRecord: one record per image (`group_size:1`, uncompressed, as TFDS writes random-access
    files), read by index with `ArrayRecordReader.read(indices)` and copied into the batch.
Each round opens every reader afresh and reads every image once, in a random order (an epoch's
first touch of each page: the mapping is new, the file is in the page cache, as it is on a host
with the memory to hold the store); rounds interleave the formats. Prints images per second of
CPU time (per core) and per second of wall time, medians over the rounds. Disks are not measured:
the files were just written, so they are in the page cache.
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from array_record.python import array_record_module
import numpy as np

from alexnet_jax.data import store

SIDE = 256


def _npy_mmap(path: str, num_images: int) -> Callable[[np.ndarray, np.ndarray], None]:
  split = store.Split(directory=os.path.dirname(path), size=num_images, resize_size=SIDE,
                      examples_per_shard=num_images, labels=np.zeros([num_images], np.int32),
                      class_names=())
  images = split.images(0, num_images)
  return images.copy


def _npy_pread(path: str, num_images: int) -> Callable[[np.ndarray, np.ndarray], None]:
  del num_images
  descriptor = os.open(path, os.O_RDONLY)
  header = np.load(path, mmap_mode='r').offset
  image_bytes = SIDE * SIDE * 3

  def copy(indices, out):
    for j, index in enumerate(indices):
      os.preadv(descriptor, [out[j]], header + int(index) * image_bytes)
  return copy


def _array_record(path: str, num_images: int) -> Callable[[np.ndarray, np.ndarray], None]:
  del num_images
  reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')

  def copy(indices, out):
    for j, record in enumerate(reader.read([int(i) for i in indices])):
      out[j] = np.frombuffer(record, np.uint8).reshape(SIDE, SIDE, 3)
  return copy


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=2048)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    npy = os.path.join(tmp, store.images_file(0))
    images = np.lib.format.open_memmap(npy, 'w+', np.uint8, (args.num_images, SIDE, SIDE, 3))
    writer = array_record_module.ArrayRecordWriter(os.path.join(tmp, 'images.array_record'),
                                                   'group_size:1,uncompressed')
    for i in range(args.num_images):
      images[i] = rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8)
      writer.write(images[i].tobytes())
    writer.close()
    images.flush()
    del images
    readers = {'npy, memory-mapped': lambda: _npy_mmap(npy, args.num_images),
               'npy, pread': lambda: _npy_pread(npy, args.num_images),
               'ArrayRecord': lambda: _array_record(os.path.join(tmp, 'images.array_record'),
                                                    args.num_images)}
    rates = {name: [] for name in readers}
    batch = np.empty([args.batch_size, SIDE, SIDE, 3], np.uint8)
    for _ in range(args.rounds):
      for name, open_reader in readers.items():
        copy = open_reader()
        order = rng.permutation(args.num_images)
        count = len(order) // args.batch_size * args.batch_size
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, count, args.batch_size):
          copy(order[start:start + args.batch_size], batch)
        rates[name].append((count / (time.process_time() - cpu), count / (time.perf_counter() - wall)))
  print(f'{args.num_images} images of {SIDE}x{SIDE}x3, batches of {args.batch_size}, one thread; '
        f'medians of {args.rounds} rounds')
  print(f'{"":20s} {"per core":>10s} {"wall":>10s}')
  for name, values in rates.items():
    per_core, wall = np.median(np.array(values), axis=0)
    print(f'{name:20s} {per_core:10.0f} {wall:10.0f}')


if __name__ == '__main__':
  main()
