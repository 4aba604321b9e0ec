"""imagenet2012 on `tfds.testing.mock_data`: tiny splits whose examples TFDS makes up, safe to read
from the pipeline's threads.

The mock is not thread-safe: each mocked `as_dataset` call patches TensorFlow's file functions for
the whole process onto a temporary folder of its own and removes that folder on return, so two
calls at once (the pipeline reads a window's record files in parallel, `sources.Shard.read`) can
leave one of them writing into the other's removed folder. `mocked` serialises those calls.
"""

import contextlib
import os
import threading
from typing import Iterator, Sequence

import tensorflow_datasets as tfds


@contextlib.contextmanager
def mocked(metadata_dir: str, train_files: Sequence[int],
           validation_files: Sequence[int]) -> Iterator[None]:
  """TFDS mocked for imagenet2012 with `train_files` and `validation_files` record files of the
  given example counts, its metadata written under `metadata_dir`."""
  builder = tfds.builder('imagenet2012', data_dir=metadata_dir)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=list(lengths), num_bytes=0)
      for name, lengths in (('train', train_files), ('validation', validation_files))]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=max([*train_files, *validation_files]),
                              policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata_dir):
    builder_class = tfds.core.DatasetBuilder  # a local: still there if this ends at exit
    mocked_as_dataset = builder_class.as_dataset
    lock = threading.Lock()

    def as_dataset_one_at_a_time(self, *args, **kwargs):
      with lock:
        return mocked_as_dataset(self, *args, **kwargs)

    builder_class.as_dataset = as_dataset_one_at_a_time
    try:
      yield
    finally:
      builder_class.as_dataset = mocked_as_dataset
