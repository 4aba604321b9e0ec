"""A pixel store: a dataset's images decoded once, as the paper stored them (§2), read by position.

  python -m alexnet_jax.prepare --dataset=imagenet2012 --data_dir=D --store_to=DIR [--resize_size=256]
  python -m alexnet_jax.main --config=configs/default.py --workdir=W --config.dataset=store:DIR

AlexNet is cheap per image (~4.35 GFLOP to train on one), and an accelerator eats in a second what
dozens of host cores decode from JPEGs. The paper stored every image once as the central 256x256
square of the image resized to shorter side 256 and cropped from those (§2, §4.1); a store holds
exactly that, `decode.central_square` of each image, as uint8 pixels. Training from it decodes
nothing: per batch the host copies each image's bytes (196 KB at 256x256) into one array and draws
the crop position, flip and lighting as the JPEG pipeline does; the device cuts the crops
(`pixels.cut_crops`), mirrors, shifts and normalizes them. Per CPU core that is 44-51x the images
of a plain JPEG decode (docs/benchmarks.md, "Pixel store").

Layout (written by alexnet_jax/data/store_writer.py; resumable, alexnet_jax/data/resumable.py):
  DIR/store.json                  each split's settings (source, resize_size, shard size), whether
                                  it is complete, its size and the class names
  DIR/<split>/images-00000.npy    uint8 [n, R, R, 3]: the split's examples [0, n), in its order
  DIR/<split>/labels-00000.npy    int32 [n]
  DIR/<split>/images-00001.npy    examples [n, 2n), ...
Every shard but the last holds `examples_per_shard` examples (~1 GiB). The shards are NumPy files,
memory-mapped: a stored image is a contiguous run of bytes that one copy moves into the batch. They
measured 6.6-8.6x the images per core of ArrayRecord records of the same bytes, whose reads copy
each record twice (bench/store_formats.py, docs/benchmarks.md), and need no new dependency; any
NumPy reads them (`np.load(path, mmap_mode='r')`). A process opens only the files of its own shard
of a split, so a host may hold only those.

The store holds each split's labels, so a subset of a split (`config.train_examples`,
`config.eval_train_examples`) is a set of its indices: `subset.balanced_subset` of those labels,
the same examples the JPEG pipeline takes from the source split. Its pixel statistics
(`augment.statistics='dataset'`) are measured from the stored squares, the pixels the network is
fed, exactly and once (`split_statistics`).

Training (`train_batches`): the same order as a folder dataset's shard (one block, one window:
each epoch a (seed, epoch) permutation, alexnet_jax/data/stream.py) and the same random choices
(`draws.training_draws` of (seed, epoch, index)), so the batch of step s is a function of the seed
and s, and a batch equals the JPEG pipeline's for the same step where the store was written from
the same decoded pixels (tested). Batches are made ahead in a few threads. NumPy only: training
from a store never imports TensorFlow.
"""

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import functools
import itertools
import json
import multiprocessing.pool
import os
from typing import Any

import ml_collections
import numpy as np

from alexnet_jax import errors
from alexnet_jax.data import draws
from alexnet_jax.data import statistics
from alexnet_jax.data import stream
from alexnet_jax.data import subset
from alexnet_jax.data.info import DatasetInfo

PREFIX = 'store:'
RECORD = 'store.json'
FORMAT = 1  # recorded with each split; a reader of another format refuses it
SHARD_BYTES = 2**30  # images per shard file: as many as fit in 1 GiB (5461 at 256x256)


class StoreError(errors.InvalidError):
  """A store that is missing, incomplete, or made with settings the config does not match."""


def examples_per_shard(resize_size: int) -> int:
  return max(1, SHARD_BYTES // (resize_size * resize_size * 3))


def images_file(shard: int) -> str:
  return f'images-{shard:05d}.npy'


def labels_file(shard: int) -> str:
  return f'labels-{shard:05d}.npy'


def root(dataset: str) -> str:
  return dataset[len(PREFIX):]


def _prepare_command(record: dict[str, Any], directory: str, resize_size: int, split: str) -> str:
  any_split = next(iter(record.values()), {'settings': {'dataset': 'NAME', 'data_dir': None}})
  source = any_split['settings']
  data_dir = f' --data_dir={source["data_dir"]}' if source['data_dir'] else ''
  return (f'python -m alexnet_jax.prepare --dataset={source["dataset"]}{data_dir} '
          f'--store_to={directory} --resize_size={resize_size} --splits={split}')


def _read_record(directory: str) -> dict[str, Any]:
  try:
    with open(os.path.join(directory, RECORD), encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise StoreError(
        f'{directory} holds no {RECORD}: it is not a pixel store. Write one with python -m '
        f'alexnet_jax.prepare --dataset=NAME --store_to={directory}') from None


@dataclasses.dataclass(frozen=True)
class Split:
  """One complete split of a store: its labels, and its images on disk, opened by range."""
  directory: str
  size: int
  resize_size: int
  examples_per_shard: int
  labels: np.ndarray  # int32 [size]
  class_names: tuple[str, ...]

  def images(self, start: int, stop: int) -> 'Images':
    """The stored images of examples [start, stop), memory-mapped (only the files that hold them)."""
    return Images(self, start, stop)


class Images:
  """Examples [start, stop) of a split, memory-mapped: `copy` gathers them into a batch."""

  def __init__(self, split: Split, start: int, stop: int):
    self._per_shard = split.examples_per_shard
    shards = range(start // self._per_shard, (stop - 1) // self._per_shard + 1) if stop > start else ()
    self._files = {k: np.load(os.path.join(split.directory, images_file(k)), mmap_mode='r')
                   for k in shards}

  def copy(self, indices: Iterable[int], out: np.ndarray, rows: slice = slice(None),
           columns: slice = slice(None)) -> None:
    """out[j] = image `indices[j]` (its `rows` and `columns`): one copy per image, straight from the
    page cache into the batch."""
    for j, index in enumerate(indices):
      shard, offset = divmod(int(index), self._per_shard)
      out[j] = self._files[shard][offset, rows, columns]


def _record_mtime(directory: str) -> int:
  try:
    return os.stat(os.path.join(directory, RECORD)).st_mtime_ns
  except FileNotFoundError:
    return 0


def open_split(config: ml_collections.ConfigDict, split: str) -> Split:
  """Split `split` of the store `config.dataset`, checked against the config (`check_config`)."""
  directory = root(config.dataset)
  _checked_split(directory, split, config.resize_size, config.center_square)
  return _open_split(directory, split, _record_mtime(directory))


def _checked_split(directory: str, split: str, resize_size: int, center_square: bool
                   ) -> dict[str, Any]:
  """The record of `split` of the store in `directory`, if training with `resize_size` and
  `center_square` may read it; else StoreError, naming the problem and the fix."""
  if not os.path.isdir(directory):
    raise StoreError(f'config.dataset={PREFIX}{directory}: {directory} is not a directory. Write a '
                     f'pixel store there with python -m alexnet_jax.prepare --dataset=NAME '
                     f'--store_to={directory}')
  record = _read_record(directory)
  made = record.get(split)
  if not (made and made['complete'] and os.path.isdir(os.path.join(directory, split))):
    complete = sorted(name for name, entry in record.items() if entry['complete'])
    raise StoreError(
        f'the store {directory} has no complete split {split!r} (complete: '
        f'{", ".join(complete) or "none"}). Write it with '
        f'{_prepare_command(record, directory, resize_size, split)}, or choose another split.')
  if made['settings']['format'] != FORMAT:
    raise StoreError(f'the store {directory} has format {made["settings"]["format"]}; this version '
                     f'reads format {FORMAT}. Write it again into another folder.')
  stored = made['settings']['resize_size']
  if resize_size != stored:
    raise StoreError(
        f'config.resize_size={resize_size} does not match the store {directory}, written at '
        f'resize_size {stored}: set --config.resize_size={stored}, or write a store at '
        f'{resize_size} into another folder ({_prepare_command(record, "DIR", resize_size, split)}).')
  if not center_square:
    raise StoreError(
        f'config.center_square=False: the store {directory} holds the central square of each image '
        f'only (§2), so crops cannot range over the whole image. Set config.center_square=True, or '
        'train from the source dataset.')
  return made


@functools.lru_cache(maxsize=8)
def _open_split(directory: str, split: str, record_mtime: int) -> Split:
  """The split, read once per version of the record (its labels: one small file per shard)."""
  del record_mtime  # only part of the cache key
  made = _read_record(directory)[split]
  per_shard = made['settings']['examples_per_shard']
  split_dir = os.path.join(directory, split)
  shards = -(-made['examples'] // per_shard)
  labels = [np.load(os.path.join(split_dir, labels_file(k))) for k in range(shards)]
  return Split(directory=split_dir, size=made['examples'],
               resize_size=made['settings']['resize_size'], examples_per_shard=per_shard,
               labels=np.concatenate(labels).astype(np.int32) if labels else np.zeros([0], np.int32),
               class_names=tuple(made['class_names']))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises StoreError unless the store `config.dataset` has complete splits `config.train_split`
  and `config.eval_split` made at `config.resize_size`, and `config.center_square` is set."""
  for split in (config.train_split, config.eval_split):
    _checked_split(root(config.dataset), split, config.resize_size, config.center_square)


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Class count, class names and split sizes; the training split's size is that of its subset with
  `config.train_examples`."""
  train, evaluation = (open_split(config, s) for s in (config.train_split, config.eval_split))
  return DatasetInfo(num_classes=len(train.class_names),
                     num_train_examples=len(_subset(config, train, config.train_examples)),
                     num_eval_examples=evaluation.size, class_names=train.class_names)


def _subset(config: ml_collections.ConfigDict, split: Split, examples: int) -> np.ndarray:
  """The indices (sorted) of the class-balanced subset of `examples` of `split` (-1: all)."""
  try:
    return subset.balanced_subset(split.labels, examples)
  except ValueError as e:
    raise StoreError(f'config.train_examples: {config.dataset} {config.train_split}: {e}') from None


_STATISTICS_FILE = 'statistics-{split}.json'
_STATISTICS_CHUNK = 512  # images summed at a time: 512 squares of 256 hold 3.4e7 pixels


def split_statistics(config: ml_collections.ConfigDict) -> statistics.Statistics:
  """The pixel statistics of the stored squares of `config.train_split` (the whole split, also when
  a run trains on a subset of it), kept in the store as `statistics-<split>.json` once measured.

  Fashion-MNIST's 60,000 squares of 72 take about 3 s here.
  """
  split = open_split(config, config.train_split)
  path = os.path.join(root(config.dataset), _STATISTICS_FILE.format(split=config.train_split))
  identity = _read_record(root(config.dataset))[config.train_split]
  sums = statistics.read_sums(path, identity)
  if sums is not None:
    return sums.statistics()
  images = split.images(0, split.size)
  sums = statistics.PixelSums()
  chunk = np.empty([_STATISTICS_CHUNK, split.resize_size, split.resize_size, 3], np.uint8)
  for start in range(0, split.size, _STATISTICS_CHUNK):
    index = np.arange(start, min(start + _STATISTICS_CHUNK, split.size))
    images.copy(index, chunk)
    pixels = chunk[:len(index)].reshape(-1, 3).astype(np.float64)
    sums.add(len(pixels), pixels.sum(axis=0), pixels.T @ pixels)
  try:
    statistics.write_sums(path, identity, sums)
  except OSError:  # a read-only store: measured again by the next run, in seconds
    pass
  return sums.statistics()


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return open_split(config, config.eval_split).class_names


def _made_ahead(make: Callable[[int, np.ndarray], dict[str, np.ndarray]], items: Iterable[int],
                image_shape: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
  """make(item, pixels) for each of `items`, in order, made ahead in a pool of threads (one per
  core, up to 8) with twice as many batches in flight; `pixels` is a new uint8 array of
  `image_shape` for `make` to fill.

  The arrays are allocated here, in the thread that takes the batches and frees them, not in the
  pool's threads: there malloc mapped each 25 MB batch afresh (110 page faults a batch, huge
  pages), and the kernel's zeroing of them cost about what the copies did: 20-31k images per core,
  against 33-57k allocated here (4-19 faults; `train_batches` from a store of 2048 squares of 256,
  batches of 128, 2 threads, a one-off loop, four rounds each). The pool ends with the iterator,
  or as the interpreter starts to exit (`stream.ClosedAtExit`), while it can still be ended
  cleanly.
  """

  def made():
    threads = min(8, len(os.sched_getaffinity(0)))
    pool = multiprocessing.pool.ThreadPool(threads)
    try:
      pending = collections.deque()
      for item in items:
        pending.append(pool.apply_async(make, (item, np.empty(image_shape, np.uint8))))
        if len(pending) > 2 * threads:
          yield pending.popleft().get()
      while pending:
        yield pending.popleft().get()
    finally:
      pool.terminate()

  return stream.ClosedAtExit(made())


def crop_offsets(crop_position: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """int32 [n, 2]: where ([y, x]) the `image_size` crop of each stored `resize_size` square lies:
  at `crop_position` [n, 2] (`draws.training_draws`) as `geometry.random_crop_window` places it in
  the central square (the same float32 arithmetic, so the same pixels), or at the center without
  `augment.random_crop`."""
  room = config.resize_size - config.image_size + 1  # crop positions per axis
  if not config.augment.random_crop:
    return np.full([len(crop_position), 2], (config.resize_size - config.image_size) // 2, np.int32)
  scaled = (crop_position.astype(np.float32) * np.float32(room)).astype(np.int32)
  return np.minimum(scaled, room - 1)


def train_batches(config: ml_collections.ConfigDict, *, start_step: int, local_batch_size: int,
                  process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches of this process; the first is the batch of global step `start_step`.

  {'image': uint8 [B, R, R, 3] (the stored squares, R = resize_size, whole),
   'crop_offset': int32 [B, 2] ([y, x] of each image_size crop in its square, cut on the device,
            `pixels.cut_crops`),
   'flip': bool [B], 'rgb_shift': float32 [B, 3], 'label': int32 [B]}
  """
  split = open_split(config, config.train_split)
  chosen = _subset(config, split, config.train_examples)
  start, stop = stream.shard_range(len(chosen), process_index, process_count)
  mine, size = chosen[start:stop], stop - start
  if size < local_batch_size:
    raise errors.InvalidError(
        f'{config.dataset} {config.train_split}: process {process_index} has {size} examples, '
        f'fewer than its share of one batch ({local_batch_size}): set config.batch_size to at most '
        f'{size * process_count}, or train on more examples.')
  images = split.images(int(mine[0]), int(mine[-1]) + 1)
  seed, side = int(config.seed), split.resize_size

  @functools.lru_cache(maxsize=4)
  def epoch_order(epoch: int) -> np.ndarray:
    return stream.window_order(seed, epoch, 0, size)  # a shard read by position is one window

  def batch(step: int, pixels: np.ndarray) -> dict[str, np.ndarray]:
    epoch, position = np.divmod(np.arange(step * local_batch_size, (step + 1) * local_batch_size),
                                size)
    index = mine[np.concatenate([epoch_order(e)[position[epoch == e]] for e in np.unique(epoch)])]
    images.copy(index, pixels)
    drawn = draws.training_draws(config, epoch, index)
    return {'image': pixels, 'crop_offset': crop_offsets(drawn['crop_position'], config),
            'flip': drawn['flip'], 'rgb_shift': drawn['rgb_shift'], 'label': split.labels[index]}

  return _made_ahead(batch, itertools.count(start_step), [local_batch_size, side, side, 3])


def eval_corners(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """[y, x] of the evaluation crops in a stored square: its center, or with `eval_crops=10` its four
  corners and its center, in `decode.five_crop`'s order (the device adds their mirrors)."""
  far, center = config.resize_size - config.image_size, (config.resize_size - config.image_size) // 2
  if config.eval_crops != 10:
    return [(center, center)]
  return [(0, 0), (0, far), (far, 0), (far, far), (center, center)]


def eval_batches(config: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int, on_training_set: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard of the eval split, padded to a batch count all processes
  share: {'image': uint8 [B, S, S, 3] or [B, 5, S, S, 3] (eval_crops=10), 'label': int32 [B],
  'mask': bool [B]}, as the JPEG pipeline's (`pipeline.eval_batches`). The crops are cut on the
  host: evaluation is a small part of the images a run reads.

  `on_training_set`: the same, over the training examples whose error a run measures without
  augmentation (`config.eval_train_examples` of the `config.train_examples` it trains on).
  """
  if on_training_set:
    split = open_split(config, config.train_split)
    chosen = _subset(config, split, config.eval_train_examples if config.eval_train_examples > 0
                     else config.train_examples)
  else:
    split = open_split(config, config.eval_split)
    chosen = np.arange(split.size)
  start, stop = stream.shard_range(len(chosen), process_index, process_count)
  mine = chosen[start:stop]
  images = split.images(int(mine[0]), int(mine[-1]) + 1) if len(mine) else split.images(0, 0)
  # The largest shard sets the batch count of every process, so that their collectives line up.
  largest = -(-len(chosen) // process_count)
  num_batches = -(-largest // local_batch_size)
  corners, size = eval_corners(config), config.image_size
  crops = [5] if config.eval_crops == 10 else []

  def batch(number: int, pixels: np.ndarray) -> dict[str, np.ndarray]:
    index = mine[number * local_batch_size:(number + 1) * local_batch_size]
    pixels[len(index):] = 0  # padding
    for k, (y, x) in enumerate(corners):
      images.copy(index, pixels[:, k] if crops else pixels, slice(y, y + size), slice(x, x + size))
    label = np.zeros([local_batch_size], np.int32)
    label[:len(index)] = split.labels[index]
    return {'image': pixels, 'label': label, 'mask': np.arange(local_batch_size) < len(index)}

  return _made_ahead(batch, range(num_batches), [local_batch_size, *crops, size, size, 3])
