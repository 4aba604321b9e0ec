"""A process's endless, seekable training stream: epochs of a shard, a permuted window at a time.

Epoch e visits the shard in an order that is a function of (seed, e): its blocks
(alexnet_jax/data/sources.py) in a random order, grouped into windows of about
`shard.window_examples` examples, each window loaded and permuted as a whole. So the examples of
stream position p are a function of (seed, p), and a run restarted at step s seeks straight to its
batch: a seek reads at most the window it lands in and decodes nothing it skips. A folder dataset's
shard is one block and a single window, so each of its epochs is a uniform permutation.
"""

import atexit
from collections.abc import Iterator
import functools
import multiprocessing.pool
import weakref

import numpy as np

from alexnet_jax.data import sources

def epoch_windows(shard: sources.Shard, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
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


def _read_blocks(shard: sources.Shard, blocks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
  """The examples of `blocks`, concatenated; the blocks (separate files) are read in parallel."""
  datasets = [(shard.examples(a, b), b - a) for a, b in blocks]
  if len(datasets) == 1:  # a folder dataset's window: no thread needed
    parts = [sources.to_numpy(*datasets[0])]
  else:
    # multiprocessing's thread pool, not concurrent.futures: its executors refuse new work once the
    # interpreter starts to exit, before `ClosedAtExit` has dropped a stream that is still alive and
    # may be reading its next window then (a traceback at every exit).
    with multiprocessing.pool.ThreadPool(min(len(blocks), 8)) as pool:
      parts = pool.map(lambda dataset_count: sources.to_numpy(*dataset_count), datasets)
  return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def train_windows(shard: sources.Shard, seed: int, start: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's endless training stream from position `start`, a permuted window at a time."""
  epoch, offset = divmod(start, shard.size)
  while True:
    for window_index, blocks in enumerate(epoch_windows(shard, seed, epoch)):
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


class ClosedAtExit:
  """An iterator that is dropped when the interpreter starts to exit, if it is still alive then.

  The training stream's windows come from a Python generator that TensorFlow calls from its own
  threads. An iterator still alive when Python finalizes (a module global, a notebook variable) would
  be destroyed after those threads can no longer enter Python: a window read in flight then never
  ends and the process hangs at exit. Dropping the iterator from an `atexit` hook, while Python still
  runs, lets any call in flight finish. The hook is registered by the first such stream, not on
  import.
  """

  _open: 'weakref.WeakSet[ClosedAtExit]' = weakref.WeakSet()

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]]):
    self._iterator = iterator
    self._open.add(self)
    _close_streams_at_exit()

  def __iter__(self) -> 'ClosedAtExit':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  @classmethod
  def close_all(cls) -> None:
    for stream in list(cls._open):
      stream._iterator = iter(())


@functools.cache
def _close_streams_at_exit() -> None:
  atexit.register(ClosedAtExit.close_all)
