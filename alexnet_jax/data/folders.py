"""`folder:/path` datasets: images in class folders, and which of them decode.

  /path/train/<class>/**/*.jpg|jpeg|png    the training split; classes are the sorted folder names
  /path/val/<class>/...                    'validation' reads validation/, else val/, else test/

Each split is checked before its first use by decoding every image (JPEGs at 1/8 scale); images that
fail are left out and logged by name, or are an error with `strict`. Checking up front, rather than
dropping failures while training, keeps the batch of step s a fixed function of s. The check costs
about a training epoch's decoding, so its result is remembered under
$XDG_CACHE_HOME/alexnet_jax/folder_checks (default ~/.cache/...), named by a digest of every file's
path, size and modification time (docs/input_pipeline.md, "Bad images").

The shards and the tf.data pipeline over these files are built in sources.py and pipeline.py.
"""

import concurrent.futures
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from alexnet_jax import errors
from alexnet_jax import runtime

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Where a split may live when it has no folder of its own name, in order of preference.
_OTHER_SPLIT_DIRS = {
    'validation': ('val', 'test'),
    'val': ('validation', 'test'),
}


def root(dataset: str) -> str:
  """The folder of a `folder:/path` dataset name."""
  return dataset[len(PREFIX):]


def split_dir(root: str, split: str) -> str:
  """The folder that holds `split`: the one of its own name, else for 'validation' val/ or test/."""
  names = (split,) + _OTHER_SPLIT_DIRS.get(split, ())
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  raise errors.NotFoundError(
      f'Folder dataset {root}: no folder for split {split!r}; looked for '
      f'{", ".join(os.path.join(root, n) for n in names)}. '
      'Expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or test/).')


@functools.lru_cache(maxsize=None)
def class_names(root: str) -> tuple[str, ...]:
  """The sorted folder names of train/: class k is the k-th."""
  train_dir = split_dir(root, 'train')
  classes = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir()))
  if not classes:
    raise errors.NotFoundError(f'Folder dataset {root}: {train_dir} has no class folders.')
  return classes


def _list_images(directory: str, classes: Sequence[str]) -> tuple[list[str], list[int]]:
  class_index = {name: i for i, name in enumerate(classes)}
  paths, labels = [], []
  for name in sorted(e.name for e in os.scandir(directory) if e.is_dir()):
    if name not in class_index:
      raise errors.InvalidError(
          f'{os.path.join(directory, name)} is not a class of the training split '
          f'({len(classes)} classes in {os.path.dirname(directory)}/train): remove it, or add the '
          'class to train/ too.')
    for folder, _, files in sorted(os.walk(os.path.join(directory, name))):
      for file in sorted(files):
        if file.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(folder, file))
          labels.append(class_index[name])
  return paths, labels


def _decodable(path: tf.Tensor) -> tf.Tensor:
  """Whether an image decodes to at least one pixel, cheaply (JPEGs at 1/8 scale); fails like the
  real decode would."""
  encoded = tf.io.read_file(path)
  image = tf.cond(tf.io.is_jpeg(encoded),
                  lambda: tf.io.decode_jpeg(encoded, channels=3, ratio=8),
                  lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  return tf.size(image) > 0


def files_digest(directory: str, paths: Sequence[str]) -> str:
  """A digest of `directory` and every file's path, size and modification time: a file added,
  removed or rewritten changes it."""
  def stat_all(chunk: Sequence[str]) -> list[tuple[int, int]]:
    return [(st.st_size, st.st_mtime_ns) for st in map(os.stat, chunk)]

  # Stats in parallel: on a network file system each one can wait on the server.
  chunks = [paths[i:i + 4096] for i in range(0, len(paths), 4096)]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    stats = [st for chunk in pool.map(stat_all, chunks) for st in chunk]
  digest = hashlib.sha256(os.path.realpath(directory).encode())
  for path, (size, mtime) in zip(paths, stats):
    digest.update(f'{path}\0{size}\0{mtime}\n'.encode())
  return digest.hexdigest()


def cache_home() -> str:
  """$XDG_CACHE_HOME/alexnet_jax (default ~/.cache/alexnet_jax): what the project remembers about
  datasets where it may not write beside them."""
  home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(home, 'alexnet_jax')


def _check_record(directory: str, paths: Sequence[str]) -> str:
  """The file that remembers the decode check of `paths`, named by their `files_digest`: a file
  added, removed or rewritten makes a new name, so a new check.

  Under $XDG_CACHE_HOME/alexnet_jax/folder_checks (default ~/.cache/...): a shared home directory
  lets every node of a cluster, and every later run, resume or sweep point, reuse one check.
  """
  return os.path.join(cache_home(), 'folder_checks', f'{files_digest(directory, paths)}.json')


def _undecodable(paths: Sequence[str]) -> list[int]:
  """Indices of the images that fail to decode: one parallel pass that drops every example whose
  decode fails; the survivors are the good ones."""
  checks = tf.data.Dataset.from_tensor_slices((list(paths), np.arange(len(paths))))
  checks = checks.map(lambda p, i: (_decodable(p), i), num_parallel_calls=tf.data.AUTOTUNE)
  # The check's result is passed on, and filtered on, so that the decode runs: TensorFlow prunes an
  # op whose output nothing reads, and every image would pass.
  checks = checks.ignore_errors().filter(lambda ok, _: ok)
  checks = checks.map(lambda _, index: index)
  good = np.concatenate([np.zeros([0], np.int64)] + [b.numpy() for b in checks.batch(65536)])
  return sorted(set(range(len(paths))) - set(good.tolist()))


def _remembered_undecodable(directory: str, paths: Sequence[str]) -> list[int]:
  """`_undecodable(paths)`, read from the record of an earlier check of the same files if there is one.

  Decoding a whole split costs about what a training epoch's decoding does (~1 ms of CPU per
  500x375 JPEG) and reads every file; without the record, every start of every process would pay it.
  """
  record = _check_record(directory, paths)
  try:
    with open(record, encoding='utf-8') as f:
      bad = json.load(f)['undecodable']
    logging.info('%s: decode check of %d images read from %s', directory, len(paths), record)
    return bad
  except (OSError, ValueError, KeyError):
    pass
  bad = _undecodable(paths)
  try:  # written whole, then renamed: processes that check at once never read half a record
    os.makedirs(os.path.dirname(record), exist_ok=True)
    # A name no other writer has: process ids repeat across the nodes that share a home directory.
    descriptor, partial = tempfile.mkstemp(suffix='.tmp', dir=os.path.dirname(record))
    with open(descriptor, 'w', encoding='utf-8') as f:
      json.dump({'split_dir': directory, 'images': len(paths), 'undecodable': bad}, f)
    os.replace(partial, record)
  except OSError as error:
    logging.warning('Could not record the decode check of %s in %s (%s); the next run checks '
                    'again.', directory, record, error)
  return bad


@functools.lru_cache(maxsize=None)
def images(root: str, split: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
  """(paths, labels) of the decodable images of a split, sorted; undecodable ones logged or fatal.

  Every class must keep an image: a class without any in one split would give the model an output
  it never learns (train/) or never tested (the eval split), so it is an error naming its folder.
  """
  runtime.hide_gpus_from_tensorflow()
  directory = split_dir(root, split)
  classes = class_names(root)
  paths, labels = _list_images(directory, classes)
  if not paths:
    raise errors.NotFoundError(f'Folder dataset {root}: no {"/".join(IMAGE_EXTENSIONS)} images in '
                               f'{directory}/<class>/.')
  bad = _remembered_undecodable(directory, paths)
  if bad:
    names = '\n  '.join(paths[i] for i in bad)
    if strict:
      logging.error('%d undecodable image(s) in %s:\n  %s', len(bad), directory, names)
      shown = ', '.join(paths[i] for i in bad[:5]) + (f' and {len(bad) - 5} more (all in the log)'
                                                      if len(bad) > 5 else '')
      raise errors.InvalidError(f'{len(bad)} image(s) in {directory} cannot be decoded: {shown}. '
                                'Remove or fix them, or set config.strict_data=False to skip them.')
    logging.warning('Skipping %d undecodable image(s) in %s (config.strict_data=True makes this '
                    'an error):\n  %s', len(bad), directory, names)
  good = np.setdiff1d(np.arange(len(paths)), bad)
  paths, labels = np.array(paths)[good], np.array(labels, np.int64)[good]
  empty = [os.path.join(directory, name) for k, name in enumerate(classes)
           if not np.any(labels == k)]
  if empty:
    raise errors.InvalidError(
        f'Folder dataset {root}: {len(empty)} of the {len(classes)} classes have no decodable '
        f'image in split {split!r}: {", ".join(empty[:5])}{" ..." if len(empty) > 5 else ""}. Every '
        'class needs images in every split (or the model gets an output it never learns or is '
        'tested on): add images, or remove the class from every split.')
  return paths, labels
