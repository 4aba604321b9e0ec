"""`prepare --dataset=fashion_mnist --manual_dir=DIR` from idx files written here, read back through
TFDS's registered `fashion_mnist` builder and the project's data interface."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import data
from alexnet_jax import defaults
from alexnet_jax import prepare as prepare_command
from alexnet_jax.data import fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
               'Bag', 'Ankle boot']


def images_of(labels: np.ndarray, split_id: int) -> np.ndarray:
  """28x28 images whose pixels say which example they are: row 0 holds the label, row 1 the split,
  rows 2-3 the index (two bytes), the rest a gradient."""
  images = np.tile(np.arange(28, dtype=np.uint8)[None, None, :] * 9, (len(labels), 28, 1))
  images[:, 0] = labels[:, None]
  images[:, 1] = split_id
  images[:, 2] = (np.arange(len(labels)) // 256)[:, None]
  images[:, 3] = (np.arange(len(labels)) % 256)[:, None]
  return images


def write_idx(directory: str, name: str, array: np.ndarray, gzipped: bool) -> None:
  magic = 2051 if array.ndim == 3 else 2049
  header = struct.pack('>II', magic, len(array)) + (
      struct.pack('>II', 28, 28) if array.ndim == 3 else b'')
  payload = header + array.astype(np.uint8).tobytes()
  path = os.path.join(directory, name + ('.gz' if gzipped else ''))
  with (gzip.open if gzipped else open)(path, 'wb') as f:
    f.write(payload)


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  """Tiny Fashion-MNIST idx files: 30 training and 12 test images; the training files gzipped as
  the dataset ships them, the test files plain."""
  directory = str(tmp_path_factory.mktemp('idx'))
  rng = np.random.default_rng(0)
  for prefix, count, split_id, gzipped in (('train', 30, 1, True), ('t10k', 12, 2, False)):
    labels = rng.integers(0, 10, count)
    write_idx(directory, f'{prefix}-images-idx3-ubyte', images_of(labels, split_id), gzipped)
    write_idx(directory, f'{prefix}-labels-idx1-ubyte', labels, gzipped)
  return directory


def prepare(idx_dir: str, data_dir: str) -> None:
  """`python -m alexnet_jax.prepare --dataset=fashion_mnist` from the idx files in `idx_dir`, in a
  process of its own, as users run it."""
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.prepare', '--dataset=fashion_mnist',
       f'--manual_dir={idx_dir}', f'--data_dir={data_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope='module')
def data_dir(idx_dir, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare(idx_dir, data_dir)
  return data_dir


def test_without_manual_dir_prepare_reads_the_files_where_debian_installs_them(
    idx_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, 'DEBIAN_DIR', idx_dir)
  builder = prepare_command.prepare('fashion_mnist', data_dir=str(tmp_path))
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      'train': 30, 'test': 12}


def test_the_registered_builder_reads_every_image_with_its_label(data_dir):
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  assert builder.info.features['label'].names == LABEL_NAMES
  assert builder.info.features['image'].shape == (28, 28, 1)
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      'train': 30, 'test': 12}
  for split, split_id, count in (('train', 1, 30), ('test', 2, 12)):
    seen = set()
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      image = example['image'][..., 0]
      assert image[1, 0] == split_id
      assert example['label'] == image[0, 0]  # each image with the label written beside it
      np.testing.assert_array_equal(image[5], np.arange(28) * 9)
      seen.add(int(image[2, 0]) * 256 + int(image[3, 0]))
    assert seen == set(range(count))


def test_training_reads_it_by_its_tfds_name(data_dir):
  config = defaults.get_config()
  config.dataset, config.data_dir, config.eval_split = 'fashion_mnist', data_dir, 'test'
  info = data.get_dataset_info(config)
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 30, 12)
  assert list(info.class_names) == LABEL_NAMES
  config.image_size, config.resize_size = 32, 36
  batch = next(data.train_batches(config, start_step=0, local_batch_size=8, process_index=0,
                                  process_count=1))
  # Grey images, as RGB: the three channels are equal.
  image = batch['image']
  assert image.dtype == np.uint8 and image.shape[-1] == 3
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_files_that_are_missing_or_not_idx_are_named(idx_dir, tmp_path):
  with pytest.raises(fashion_mnist.IdxFileError, match='lacks t10k-labels-idx1-ubyte'):
    os.makedirs(tmp_path / 'partial')
    for name in os.listdir(idx_dir):
      if not name.startswith('t10k-labels'):
        os.symlink(os.path.join(idx_dir, name), tmp_path / 'partial' / name)
    fashion_mnist.find_files(str(tmp_path / 'partial'))
  labels = os.path.join(idx_dir, 't10k-labels-idx1-ubyte')
  with pytest.raises(fashion_mnist.IdxFileError, match='is not an idx file of images'):
    fashion_mnist.idx_count(labels, 2051)
  assert fashion_mnist.idx_count(labels, 2049) == 12


def test_the_shipped_config_trains_on_it_with_its_own_statistics(data_dir, tmp_path):
  """configs/fashion_mnist.py, as its docstring runs it, for two steps: it measures the split's
  pixel statistics, records them in config.json, and evaluates on the test split."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/fashion_mnist.py',
       f'--workdir={workdir}', f'--config.data_dir={data_dir}', '--config.batch_size=8',
       '--config.num_train_steps=2', '--config.eval_every_steps=2'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'config.json', encoding='utf-8') as f:
    augment = json.load(f)['augment']
  pixels = np.stack([example['image'] for example in tfds.as_numpy(
      tfds.builder('fashion_mnist', data_dir=data_dir).as_dataset(split='train'))]).astype(float)
  np.testing.assert_allclose(augment['mean_rgb'], [pixels.mean()] * 3, rtol=1e-9)
  np.testing.assert_allclose(augment['std_rgb'], [pixels.std()] * 3, rtol=1e-9)
  with open(workdir / 'metrics.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if r['split'] == 'eval'] == [2]
