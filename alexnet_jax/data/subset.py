"""A class-balanced, deterministic subset of a split: the small-data regime of §4.1 and §4.2.

The paper's dropout and augmentation are remedies for overfitting, which 1.2 million images at 60
million parameters invite and which a small machine reaches only on a small training set
(`config.train_examples`). `balanced_subset(labels, count)` picks that set as a pure function of
the split's labels, so that it is the same in every process and for every process count (it is
chosen before the split is sharded, alexnet_jax/data/sources.py), the same for every seed of a
sweep, and the same for any reader of the split that has its labels (a pixel store of the split
applies the same function).

Each class gets an equal share of `count` (the first `count % classes` labels one more; a class with
fewer examples than its share gives all it has and the others share the rest), and within a class
the examples are taken in an order fixed by a hash of their index. So the subsets are nested: the
subset of n examples is part of the subset of every m > n, and growing a training set only adds
examples.
"""

import numpy as np

_SALT = np.uint64(0x2545F4914F6CDD1D)  # any fixed constant: it decides which examples come first


def _rank_keys(indices: np.ndarray) -> np.ndarray:
  """A fixed pseudo-random uint64 key per example index (SplitMix64's finalizer of index ^ salt):
  examples of a class are taken in increasing key order."""
  x = indices.astype(np.uint64) ^ _SALT
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def class_quotas(class_sizes: dict[int, int], count: int) -> dict[int, int]:
  """How many examples each class gives to a balanced subset of `count`: equal shares, the first
  `remainder` classes by label one more, a class smaller than its share all it has."""
  quotas, open_classes, remaining = {}, sorted(class_sizes), count
  while open_classes:
    share, extra = divmod(remaining, len(open_classes))
    # A class that cannot fill even the smaller share gives everything; the rest is shared again.
    full = [c for c in open_classes if class_sizes[c] <= share]
    if not full:
      for rank, label in enumerate(open_classes):
        quotas[label] = share + (rank < extra)
      break
    for label in full:
      quotas[label] = class_sizes[label]
      remaining -= class_sizes[label]
    open_classes = [c for c in open_classes if c not in full]
  return quotas


def balanced_subset(labels: np.ndarray, count: int) -> np.ndarray:
  """The positions (int64, sorted) of a class-balanced subset of `count` examples of a split whose
  examples have `labels` [n], in split order; all n positions when `count` is -1.

  Raises ValueError when `count` is neither -1 nor in [1, n].
  """
  labels = np.asarray(labels)
  if count == -1:
    return np.arange(len(labels), dtype=np.int64)
  if not 1 <= count <= len(labels):
    raise ValueError(f'a subset of {count} examples of a split of {len(labels)}: ask for 1 to '
                     f'{len(labels)}, or -1 for all of them.')
  classes, sizes = np.unique(labels, return_counts=True)
  quotas = class_quotas(dict(zip(classes.tolist(), sizes.tolist())), count)
  chosen = []
  for label, quota in quotas.items():
    members = np.flatnonzero(labels == label)
    chosen.append(members[np.argsort(_rank_keys(members), kind='stable')[:quota]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)
