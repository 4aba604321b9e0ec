"""Where examples come from: TFDS datasets and image folders, split into per-process shards.

A `Shard` is one process's contiguous 1/process_count of a split, in a fixed order, readable by
position: `examples(a, b)` is a tf.data dataset of its examples [a, b), each {'encoded' or 'path',
'label', 'index'} ('index': the example's position in the whole split). Its `blocks` cut it into
ranges cheap to read as a unit (for TFDS, the part of one record file in the shard), which the
training stream (alexnet_jax/data/stream.py) shuffles and reads a window at a time.

Sources (`config.dataset`):
  * a TFDS image-classification name (`imagenet2012` by default), read from `config.data_dir`;
    ImageNet must be built once with `python -m alexnet_jax.prepare`;
  * `folder:/path`: `/path/train/<class>/*.jpg|png` and `/path/val/<class>/...`; which files, and
    which of them decode, is alexnet_jax/data/folders.py's concern.

A shard may hold only a class-balanced subset of its split (`config.train_examples`,
alexnet_jax/data/subset.py), chosen from the labels of the whole split before it is cut into
shards, so every process count trains on the same examples.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
import multiprocessing.pool
import os
import threading

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax import runtime
from alexnet_jax.data import folders
from alexnet_jax.data import stream
from alexnet_jax.data import subset as subset_lib
from alexnet_jax.data.info import DatasetInfo

# Examples loaded and permuted together in a training epoch. For ImageNet this is about 8 record files
# (~1 GB of JPEG bytes); up to three windows are in memory at a time.
_WINDOW_EXAMPLES = 8192


# A subset of a TFDS split (`config.train_examples`) is read by scanning the records it lies among:
# 3.3 s an epoch for 1,000 of Fashion-MNIST's 60,000 images, against 0.01 s from memory. Subsets
# whose images take less than this (estimated from the split's size) are read once and kept.
_SUBSET_IN_MEMORY_BYTES = 1 << 30

# Making TFDS datasets is not thread-safe; window readers of several pipelines may run at once.
_TFDS_LOCK = threading.Lock()


class DatasetNotPreparedError(errors.NotFoundError):
  """The TFDS dataset has not been built in the data dir yet."""


@dataclasses.dataclass(frozen=True)
class Shard:
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

  def read(self, blocks: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The examples of `blocks`, concatenated, as numpy arrays; the blocks (separate files) are
    read in parallel."""
    datasets = [(self.examples(a, b), b - a) for a, b in blocks]
    if len(datasets) == 1:  # a folder dataset's window: no thread needed
      parts = [to_numpy(*datasets[0])]
    else:
      # multiprocessing's thread pool, not concurrent.futures: its executors refuse new work once
      # the interpreter starts to exit, before `stream.ClosedAtExit` has dropped a stream that is
      # still alive and may be reading its next window then (a traceback at every exit).
      with multiprocessing.pool.ThreadPool(min(len(blocks), 8)) as pool:
        parts = pool.map(lambda dataset_count: to_numpy(*dataset_count), datasets)
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _split_blocks(boundaries: Sequence[int], start: int, stop: int) -> list[tuple[int, int]]:
  """Cuts [start, stop) at `boundaries`."""
  cuts = [start] + [b for b in boundaries if start < b < stop] + [stop]
  return list(zip(cuts[:-1], cuts[1:]))


def is_folder(config: ml_collections.ConfigDict) -> bool:
  return config.dataset.startswith(folders.PREFIX)


def shard(config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int,
          examples: int = -1) -> Shard:
  """This process's shard of `split` of `config.dataset`, or of its class-balanced subset of
  `examples` (-1: all; `subset.balanced_subset`), memoized: folder datasets check their images
  once."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count}).')
  return _memoized_shard(config.dataset, config.data_dir, split, config.strict_data,
                         config.cache, examples, process_index, process_count)


@functools.lru_cache(maxsize=8)
def _memoized_shard(dataset: str, data_dir: str | None, split: str, strict: bool, cache: bool,
                    examples: int, process_index: int, process_count: int) -> Shard:
  runtime.hide_gpus_from_tensorflow()
  if examples != -1:
    whole = _memoized_shard(dataset, data_dir, split, strict, False, -1, 0, 1)
    labels = _split_labels(dataset, data_dir, split, strict)
    try:
      positions = subset_lib.balanced_subset(labels, examples)
    except ValueError as e:
      raise errors.InvalidError(f'{dataset} {split}: {e}') from None
    made = _subset_shard(whole, positions, process_index, process_count)
    cache = cache or (not dataset.startswith(folders.PREFIX)
                      and _tfds_bytes(dataset, data_dir, split, examples) < _SUBSET_IN_MEMORY_BYTES)
  elif dataset.startswith(folders.PREFIX):
    made = _folder_shard(folders.root(dataset), split, strict, process_index, process_count)
  else:
    made = _tfds_shard(dataset, data_dir, split, process_index, process_count)
  return _cached(made) if cache else made


def _tfds_bytes(dataset: str, data_dir: str | None, split: str, examples: int) -> float:
  """About how many bytes `examples` records of a TFDS split take (its files' average)."""
  splits = _tfds_builder(dataset, data_dir).info.splits
  named = [splits[name] for name in _named_splits(splits, split)]
  return examples * sum(s.num_bytes for s in named) / sum(s.num_examples for s in named)


@functools.lru_cache(maxsize=4)
def _split_labels(dataset: str, data_dir: str | None, split: str, strict: bool) -> np.ndarray:
  """The label of every example of a split, in order (one pass that reads no image's pixels)."""
  whole = _memoized_shard(dataset, data_dir, split, strict, False, -1, 0, 1)
  labels = whole.examples(0, whole.size).map(lambda ex: {'label': ex['label']})
  return to_numpy(labels, whole.size)['label']


def _subset_shard(whole: Shard, positions: np.ndarray, process_index: int, process_count: int
                  ) -> Shard:
  """This process's contiguous share of the examples at `positions` (sorted) of the split `whole`
  holds. Its blocks are the parts of `whole`'s blocks (record files) in the subset; reading one
  reads the span of its examples in `whole` and keeps those of the subset."""
  lo, hi = stream.shard_range(len(positions), process_index, process_count)
  ends = np.searchsorted(positions, [b for _, b in whole.blocks])  # block ends, in subset positions
  blocks = tuple((a - lo, b - lo) for a, b in _split_blocks(sorted(set(ends.tolist())), lo, hi))
  member = np.zeros(whole.size, bool)
  member[positions] = True

  def examples(start: int, stop: int) -> tf.data.Dataset:
    if start == stop:
      return whole.examples(0, 0)
    wanted = positions[lo + start:lo + stop]
    span = whole.examples(int(wanted[0]), int(wanted[-1]) + 1)
    return span.filter(lambda ex: tf.gather(member, ex['index'])).apply(
        tf.data.experimental.assert_cardinality(stop - start))

  return dataclasses.replace(whole, split_size=len(positions), start=lo, stop=hi, blocks=blocks,
                             examples=examples)


def _cached(shard: Shard) -> Shard:
  """The same shard with its encoded images read once and kept in memory (small datasets only)."""
  examples = shard.examples(0, shard.size)
  if shard.image_field == 'path':
    examples = examples.map(lambda ex: {'encoded': tf.io.read_file(ex['path']),
                                        'label': ex['label'], 'index': ex['index']},
                            num_parallel_calls=tf.data.AUTOTUNE)
  arrays = to_numpy(examples, shard.size)

  return dataclasses.replace(
      shard, image_field='encoded',
      examples=lambda start, stop: tf.data.Dataset.from_tensor_slices(
          {k: v[start:stop] for k, v in arrays.items()}))


def to_numpy(examples: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
  """All `count` elements of `examples` as numpy arrays."""
  if count == 0:  # the shard of a process with no example of a small split; batch(0) is refused
    return {k: np.zeros([0], spec.dtype.as_numpy_dtype)
            for k, spec in examples.element_spec.items()}
  return {k: v.numpy() for k, v in examples.batch(count).get_single_element().items()}


def encoded(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return example['encoded'] if 'encoded' in example else tf.io.read_file(example['path'])


# TFDS ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tfds_builder(name: str, data_dir: str | None, prepared: bool = True
                  ) -> tfds.core.DatasetBuilder:
  """The builder of TFDS dataset `name`; unless `prepared` is False, it must be built in `data_dir`."""
  runtime.hide_gpus_from_tensorflow()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.InvalidError(
        f"Unknown dataset {name!r}. config.dataset is a TFDS name (e.g. 'imagenet2012'), "
        f"'{folders.PREFIX}/path/to/images', 'synthetic' or 'synthetic_learnable'.") from e
  if prepared and not builder.info.splits:
    raise DatasetNotPreparedError(_not_prepared_message(name, builder, data_dir))
  return builder


def _not_prepared_message(name: str, builder: tfds.core.DatasetBuilder, data_dir: str | None
                          ) -> str:
  data_dir_flag = f' --data_dir={data_dir}' if data_dir else ''
  if name.split('/')[0].split(':')[0] == 'imagenet2012':
    return (
        f'ImageNet ({name!r}) is not prepared: nothing at {builder.data_dir}. Download '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
        'https://image-net.org/download-images into one folder, DIR, and build it once with '
        f'`python -m alexnet_jax.prepare --dataset={name} --manual_dir=DIR{data_dir_flag}` (about '
        '150 GB of disk and a few hours), or set --config.data_dir to the TFDS data dir that '
        'already holds it. To try the code first: --config=configs/smoke.py (no data needed).')
  return (f'Dataset {name!r} is not prepared: nothing at {builder.data_dir}. Build it once with '
          f'`python -m alexnet_jax.prepare --dataset={name}{data_dir_flag}`, or set '
          '--config.data_dir to the TFDS data dir that already holds it.')


def _label_feature(builder: tfds.core.DatasetBuilder) -> tfds.features.ClassLabel:
  return builder.info.features[builder.info.supervised_keys[1]]


def _tfds_shard(name: str, data_dir: str | None, split: str, process_index: int,
                process_count: int) -> Shard:
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
  lo, hi = stream.shard_range(int(piece_starts[-1]), process_index, process_count)

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

  return Shard(split_size=int(piece_starts[-1]), start=lo, stop=hi, blocks=blocks,
               window_examples=_WINDOW_EXAMPLES, image_field='encoded', examples=examples)


# Image folders ------------------------------------------------------------------------------------


def _folder_shard(root: str, split: str, strict: bool, process_index: int, process_count: int
                  ) -> Shard:
  paths, labels = folders.images(root, split, strict)
  lo, hi = stream.shard_range(len(paths), process_index, process_count)

  def examples(start: int, stop: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {'path': paths[lo + start:lo + stop], 'label': labels[lo + start:lo + stop],
         'index': np.arange(lo + start, lo + stop)})

  # Paths cost nothing to hold: one block, one window, so each epoch is a uniform permutation.
  return Shard(split_size=len(paths), start=lo, stop=hi, blocks=((0, hi - lo),),
               window_examples=hi - lo, image_field='path', examples=examples)


# Dataset facts ------------------------------------------------------------------------------------


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Class count, class names and split sizes of `config.dataset`; the training split's size is
  that of its subset with `config.train_examples`."""
  if is_folder(config):
    root = folders.root(config.dataset)
    classes = folders.class_names(root)
    train = folders.images(root, config.train_split, config.strict_data)[0]
    evaluation = folders.images(root, config.eval_split, config.strict_data)[0]
    info = DatasetInfo(num_classes=len(classes), num_train_examples=len(train),
                       num_eval_examples=len(evaluation), class_names=classes)
  else:
    builder = _tfds_builder(config.dataset, config.data_dir)
    label = _label_feature(builder)
    info = DatasetInfo(
        num_classes=label.num_classes,
        num_train_examples=builder.info.splits[config.train_split].num_examples,
        num_eval_examples=builder.info.splits[config.eval_split].num_examples,
        class_names=tuple(label.names))
  if config.train_examples == -1:
    return info
  if config.train_examples > info.num_train_examples:
    raise errors.InvalidError(f'config.train_examples={config.train_examples} is more than the '
                              f'{info.num_train_examples} examples of {config.dataset} '
                              f'{config.train_split}: use at most that, or -1 for all of them.')
  return dataclasses.replace(info, num_train_examples=config.train_examples)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names of `config.dataset` in label order, reading no image: a folder dataset's class
  folders, or a TFDS dataset's label names (known without its data)."""
  if is_folder(config):
    return folders.class_names(folders.root(config.dataset))
  return tuple(_label_feature(_tfds_builder(config.dataset, config.data_dir, prepared=False)).names)


def split_identity(config: ml_collections.ConfigDict, split: str) -> tuple[str, dict]:
  """Where facts about `split` can be kept beside its data (a TFDS dataset's version directory, a
  folder dataset's root), and what identifies the split's contents there: the TFDS record files'
  sizes and example counts, or a folder split's `folders.files_digest`."""
  if is_folder(config):
    root = folders.root(config.dataset)
    paths = folders.images(root, split, config.strict_data)[0]
    directory = folders.split_dir(root, split)
    return root, {'folder': os.path.realpath(directory), 'split': split,
                  'files': folders.files_digest(directory, paths.tolist())}
  builder = _tfds_builder(config.dataset, config.data_dir)
  return os.fspath(builder.data_dir), {
      'tfds': builder.info.full_name, 'split': split,
      'files': {name: {'shard_lengths': list(builder.info.splits[name].shard_lengths),
                       'num_bytes': builder.info.splits[name].num_bytes}
                for name in _named_splits(builder.info.splits, split)}}


def _named_splits(splits: tfds.core.SplitDict, spec: str) -> list[str]:
  """The named splits a split spec ('train[:10%]+validation', ...) reads from, sorted."""
  return sorted({instruction.splitname for instruction in
                 tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits)})


def split_examples(config: ml_collections.ConfigDict, split: str,
                   skip: np.ndarray | None = None) -> tf.data.Dataset:
  """Every example of `split` once, in order: {'encoded': image bytes, 'label': int64, 'index': int64}.

  Folder datasets leave out the images that cannot be decoded, as training does. `skip`, bool
  [split size] by 'index', leaves out examples before a folder dataset's files are read.
  """
  whole = shard(config, split, process_index=0, process_count=1)
  examples = whole.examples(0, whole.size)
  if skip is not None:
    examples = examples.filter(lambda ex: ~tf.gather(tf.constant(skip), ex['index']))
  return examples.map(
      lambda ex: {'encoded': encoded(ex), 'label': ex['label'], 'index': ex['index']},
      num_parallel_calls=tf.data.AUTOTUNE)
