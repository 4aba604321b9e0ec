"""Which examples a process reads, and in which order it trains on them: shards and epochs.

A process reads a contiguous shard of each split (`shard_range`). Its training stream is an
endless sequence of epochs of that shard; epoch e visits the shard in an order that is a function
of (seed, e): its blocks (ranges cheap to read as a unit, e.g. a TFDS record file,
alexnet_jax/data/sources.py) in a random order, grouped into windows of about `window_examples`
examples, each window loaded and permuted as a whole (`window_order`). So the examples of stream
position p are a function of (seed, p), and a run restarted at step s seeks straight to its batch:
a seek reads at most the window it lands in and decodes nothing it skips. A folder dataset's shard
is one block and a single window, and so is a pixel store's (alexnet_jax/data/store.py), read by
position: each of their epochs is a uniform permutation, the same one for the same shard size.

NumPy only: the pixel store reads its shards without TensorFlow.
"""

import atexit
from collections.abc import Iterator, Sequence
import functools
from typing import Protocol
import weakref

import numpy as np


def shard_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """The examples [start, stop) of a split of `num_examples` that process `process_index` reads:
  contiguous, disjoint, covering ranges whose sizes differ by at most one."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


class Blocks(Protocol):
  """A shard as the training stream reads it (`sources.Shard`)."""
  size: int
  blocks: tuple[tuple[int, int], ...]
  window_examples: int

  def read(self, blocks: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The examples of `blocks`, concatenated: 'index' and whatever else the shard holds."""


def epoch_windows(shard: Blocks, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
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


def window_order(seed: int, epoch: int, window_index: int, size: int) -> np.ndarray:
  """The order, int64 [size], in which epoch `epoch` visits the `size` examples of its window
  `window_index`: for a shard that is one window (a folder dataset, a pixel store), the whole
  epoch's order."""
  return np.random.default_rng([seed, epoch, window_index]).permutation(size)


def train_windows(shard: Blocks, seed: int, start: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's endless training stream from position `start`, a permuted window at a time,
  each example with its 'epoch'."""
  epoch, offset = divmod(start, shard.size)
  while True:
    for window_index, blocks in enumerate(epoch_windows(shard, seed, epoch)):
      size = sum(b - a for a, b in blocks)
      if offset >= size:  # seeking: skip the window without reading it
        offset -= size
        continue
      examples = shard.read(blocks)
      order = window_order(seed, epoch, window_index, size)[offset:]
      offset = 0
      examples = {k: v[order] for k, v in examples.items()}
      examples['epoch'] = np.full(len(order), epoch, np.int64)
      yield examples
    epoch += 1


class ClosedAtExit:
  """An iterator that is dropped when the interpreter starts to exit, if it is still alive then.

  The training streams' work runs in other threads: TensorFlow calls the window generator from its
  own, and a pixel store makes its batches in a thread pool (alexnet_jax/data/store.py). An
  iterator still alive when Python finalizes (a module global, a notebook variable) would be
  destroyed after those threads can no longer enter Python: a window read in flight then never ends
  and the process hangs at exit, and a pool ended then fails noisily. Dropping the iterator from an
  `atexit` hook, while Python still runs, lets any call in flight finish. The hook is registered by
  the first such stream, not on import.
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
