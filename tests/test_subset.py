"""config.train_examples: a class-balanced, deterministic subset of the training split, chosen before
sharding (the same examples for every process count), for TFDS and folder datasets; and
config.eval_train_examples, the training error measured on it without augmentation."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import config_validation
from alexnet_jax import data
from alexnet_jax import defaults
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import sources
from alexnet_jax.data import stream
from alexnet_jax.data import subset
import input_images
from test_fashion_mnist import images_of, prepare, write_idx
from test_train import tiny_config

# A training split of 60 whose classes are far from equal: 7, 8 and 9 cannot fill a share of 4.
CLASS_SIZES = (10, 9, 9, 9, 9, 6, 4, 2, 1, 1)


def _labels() -> np.ndarray:
  labels = np.repeat(np.arange(10), CLASS_SIZES)
  return np.random.default_rng(0).permutation(labels)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory) -> str:
  """A tiny `fashion_mnist` built by prepare: 60 training images whose pixels name their index
  (`images_of`: rows 2-3) and whose labels follow CLASS_SIZES, 12 test images."""
  idx_dir = str(tmp_path_factory.mktemp('idx'))
  for prefix, labels, split_id in (('train', _labels(), 1), ('t10k', np.arange(12) % 10, 2)):
    write_idx(idx_dir, f'{prefix}-images-idx3-ubyte', images_of(labels, split_id), False)
    write_idx(idx_dir, f'{prefix}-labels-idx1-ubyte', labels, False)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare(idx_dir, data_dir)
  return data_dir


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> str:
  return input_images.write_folder_dataset(str(tmp_path_factory.mktemp('folder')), classes=3,
                                           train_per_class=6, size=(20, 24))


def _tfds_config(data_dir: str, **overrides):
  config = defaults.get_config()
  config.dataset, config.data_dir, config.eval_split = 'fashion_mnist', data_dir, 'test'
  config.image_size = config.resize_size = 28
  config.device_resize_scale = 0  # the crops themselves: 28 of 28, the images as they are
  config.update(overrides)
  return config


def _folder_config(root: str):
  config = defaults.get_config()
  config.dataset = f'folder:{root}'
  config.resize_size, config.image_size = 24, 20
  return config


def _image_ids(images: np.ndarray) -> np.ndarray:
  """The idx-file index `images_of` wrote into rows 2 and 3 of each image [N, 28, 28, C]."""
  return images[:, 2, 0, 0].astype(int) * 256 + images[:, 3, 0, 0]


def _subset_ids(config, count: int) -> list[int]:
  """The images of a balanced subset of `count` of the TFDS split (whose record order is not the
  idx files' order), by their idx-file index."""
  whole = sources.shard(config, config.train_split, 0, 1)
  examples = sources.to_numpy(whole.examples(0, whole.size), whole.size)
  chosen = subset.balanced_subset(examples['label'], count)
  images = np.stack([tf.io.decode_png(examples['encoded'][i]).numpy() for i in chosen])
  return sorted(_image_ids(images).tolist())


def test_a_balanced_subset_gives_every_class_an_equal_share():
  labels = _labels()
  chosen = subset.balanced_subset(labels, 40)
  assert np.all(np.diff(chosen) > 0) and chosen.dtype == np.int64
  # Shares of 40 over 10 classes are 4; classes 6-9 give all they have (4, 2, 1, 1), and the 32
  # left are shared by the other six: 5 each, and one more for the first two labels.
  assert np.bincount(labels[chosen], minlength=10).tolist() == [6, 6, 5, 5, 5, 5, 4, 2, 1, 1]
  np.testing.assert_array_equal(subset.balanced_subset(labels, 40), chosen)  # deterministic
  np.testing.assert_array_equal(subset.balanced_subset(labels, -1), np.arange(60))
  np.testing.assert_array_equal(subset.balanced_subset(labels, 60), np.arange(60))


def test_subsets_are_nested_and_equal_when_classes_allow():
  labels = np.random.default_rng(1).integers(0, 7, 500)
  previous = np.zeros(0, np.int64)
  for count in range(1, 501, 7):
    chosen = subset.balanced_subset(labels, count)
    assert len(chosen) == count and set(previous) <= set(chosen)
    counts = np.bincount(labels[chosen], minlength=7)
    room = np.bincount(labels, minlength=7) > counts  # classes not yet exhausted
    if room.any():  # shares equal to one example, but for exhausted classes, which have less
      assert counts.max() - counts[room].min() <= 1
    previous = chosen


def test_the_subset_is_a_function_of_the_labels_alone():
  labels = _labels()
  # The same labels in another container (another reader of the split) give the same positions.
  np.testing.assert_array_equal(subset.balanced_subset(list(labels), 25),
                                subset.balanced_subset(labels.astype(np.int16), 25))
  for count in (0, 61, -2):
    with pytest.raises(ValueError, match='ask for 1 to 60'):
      subset.balanced_subset(labels, count)


@pytest.mark.parametrize('source', ['tfds', 'tfds read from its records', 'folder'])
def test_every_process_count_reads_the_same_subset(source, tfds_dir, folder, monkeypatch):
  config = _folder_config(folder) if source == 'folder' else _tfds_config(tfds_dir)
  if source == 'tfds read from its records':  # as a subset too large to keep in memory is
    monkeypatch.setattr(sources, '_SUBSET_IN_MEMORY_BYTES', 0)
    sources._memoized_shard.cache_clear()  # pylint: disable=protected-access
  count = 25 if source == 'tfds' else 8
  whole = sources.shard(config, config.train_split, 0, 1)
  labels = sources.to_numpy(whole.examples(0, whole.size), whole.size)['label']
  expected = subset.balanced_subset(labels, count)
  for process_count in (1, 2, 3):
    read = []
    for process_index in range(process_count):
      shard = sources.shard(config, config.train_split, process_index, process_count, count)
      assert shard.split_size == count
      examples = sources.to_numpy(shard.examples(0, shard.size), shard.size)
      np.testing.assert_array_equal(examples['label'], labels[examples['index']])
      read.append(examples['index'])
    np.testing.assert_array_equal(np.concatenate(read), expected)  # contiguous shares, in order
  sources._memoized_shard.cache_clear()  # pylint: disable=protected-access


def test_training_sees_exactly_the_subset_each_epoch_in_every_process(tfds_dir):
  config = _tfds_config(tfds_dir, train_examples=20, batch_size=4)
  assert data.get_dataset_info(config).num_train_examples == 20
  expected = _subset_ids(config, 20)
  for process_count in (1, 2):
    by_process = []
    for process_index in range(process_count):
      batches = data.train_batches(config, start_step=0, local_batch_size=4 // process_count,
                                   process_index=process_index, process_count=process_count)
      seen = []
      for _ in range(10):  # two epochs of 5 steps
        batch = next(batches)
        index = _image_ids(batch['image'])
        np.testing.assert_array_equal(batch['label'], _labels()[index])
        seen.append(index)
      by_process.append(np.concatenate(seen).reshape(2, -1))  # [epoch, this process's examples]
    for epoch in range(2):
      assert sorted(np.concatenate([p[epoch] for p in by_process])) == expected


def test_the_stream_of_a_subset_resumes_at_any_position(tfds_dir):
  config = _tfds_config(tfds_dir)
  shard = sources.shard(config, config.train_split, 0, 1, 30)
  whole = np.concatenate([next(stream.train_windows(shard, 3, 30 * e))['index'] for e in range(2)])
  resumed = next(stream.train_windows(shard, 3, 41))['index']
  np.testing.assert_array_equal(resumed, whole[41:60])


def test_training_set_evaluation_covers_the_chosen_examples_unaugmented(tfds_dir):
  config = _tfds_config(tfds_dir, train_examples=30, eval_train_examples=12)
  masked = []
  for process_index in range(2):
    for batch in data.eval_batches(config, local_batch_size=5, process_index=process_index,
                                   process_count=2, on_training_set=True):
      masked.append(_image_ids(batch['image'][batch['mask']]))
  # The 12 are a balanced 12 of the split, so they lie inside the 30 trained on.
  chosen = sorted(np.concatenate(masked).tolist())
  assert chosen == _subset_ids(config, 12) and set(chosen) <= set(_subset_ids(config, 30))
  config.eval_train_examples = -1  # every example trained on
  batches = list(data.eval_batches(config, local_batch_size=8, process_index=0, process_count=1,
                                   on_training_set=True))
  assert sum(int(b['mask'].sum()) for b in batches) == 30


def test_subset_keys_are_checked(tfds_dir):
  config = _tfds_config(tfds_dir, train_examples=61)
  with pytest.raises(ValueError, match='train_examples=61 is more than the 60 examples'):
    data.get_dataset_info(config)
  for overrides, message in (
      ({'train_examples': 0}, 'config.train_examples=0 is invalid'),
      ({'train_examples': 10, 'eval_train_examples': 20},
       'eval_train_examples=20 is more than the config.train_examples=10'),
      ({'dataset': 'synthetic', 'train_examples': 10}, 'sized by synthetic_train_examples')):
    with pytest.raises(config_validation.ConfigError, match=message):
      config_validation.validate(_tfds_config(tfds_dir, image_size=67, resize_size=67, **overrides))


def test_a_run_logs_its_error_on_training_examples_without_augmentation_or_dropout(tmp_path):
  config = tiny_config(num_train_steps=4, eval_every_steps=2, log_every_steps=2,
                       eval_train_examples=40)
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    on_train = [r for r in map(json.loads, f) if r['split'] == 'eval_train']
  assert [(r['step'], r['num_examples']) for r in on_train] == [(2, 40), (4, 40)]
  # The same error computed here: the final params on the first 40 training examples, dropout off.
  loaded = workdir_lib.load(str(tmp_path))
  batches = data.train_batches(config, start_step=0, local_batch_size=config.batch_size,
                               process_index=0, process_count=1)
  first = [next(batches) for _ in range(2)]  # 64 examples, in order
  images, labels = (np.concatenate([b[key] for b in first])[:40] for key in ('image', 'label'))
  logits = loaded.model.apply({'params': loaded.params}, images, train=False)
  errors = np.asarray(jnp.argmax(logits, -1) != labels)
  assert on_train[-1]['top1_err'] == pytest.approx(errors.mean(), abs=1e-6)
