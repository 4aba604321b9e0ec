"""augment.statistics='dataset': a training split's per-channel mean and std and RGB covariance
eigenvectors, measured once (exactly), recorded beside the data and reused, and used by training,
evaluation and prediction; ImageNet's published values otherwise."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from alexnet_jax import config_validation
from alexnet_jax import data
from alexnet_jax import defaults
from alexnet_jax.data import draws
from alexnet_jax.data import measure
from alexnet_jax.data import pixels
from alexnet_jax.data import statistics
import test_distributed
from test_fashion_mnist import REPO, prepare, write_idx

RECORD = 'alexnet_jax-statistics-train.json'


def _reference(images: list[np.ndarray]) -> statistics.Statistics:
  """The statistics as NumPy computes them, in float64, from every pixel of `images` [H, W, 3]."""
  pixels_ = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64)
  covariance = np.cov(pixels_.T, bias=True)
  values, vectors = np.linalg.eigh(covariance / 255**2)
  return statistics.Statistics(
      mean=tuple(pixels_.mean(0)), std=tuple(pixels_.std(0)),
      eigenvalues=tuple(255 * values[::-1]), eigenvectors=tuple(map(tuple, vectors[:, ::-1])))


def _assert_close(measured: statistics.Statistics, expected: statistics.Statistics) -> None:
  np.testing.assert_allclose(measured.mean, expected.mean, rtol=1e-12)
  np.testing.assert_allclose(measured.std, expected.std, rtol=1e-9)
  np.testing.assert_allclose(measured.eigenvalues, expected.eigenvalues, rtol=1e-7, atol=1e-9)
  # Eigenvectors up to their sign (which the measurement fixes: first clear component positive).
  for i, value in enumerate(expected.eigenvalues):
    if value > 1e-6:
      dot = np.dot(np.asarray(measured.eigenvectors)[:, i], np.asarray(expected.eigenvectors)[:, i])
      np.testing.assert_allclose(abs(dot), 1, atol=1e-9)


def _colour_images(seed: int) -> list[np.ndarray]:
  """Images of several sizes whose channels are correlated, as in photographs."""
  rng = np.random.default_rng(seed)
  images = []
  for height, width in ((9, 13), (16, 8), (5, 5)):
    grey = rng.integers(0, 200, (height, width, 1))
    tint = rng.integers(0, 56, (height, width, 3)) * np.array([1, 0.6, 0.2])
    images.append((grey + tint).astype(np.uint8))
  return images


def test_statistics_from_exact_sums_equal_numpy():
  images = _colour_images(0)
  flat = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.int64)
  measured = statistics.from_sums(len(flat), flat.sum(0), flat.T @ flat)
  _assert_close(measured, _reference(images))
  assert list(measured.eigenvalues) == sorted(measured.eigenvalues, reverse=True)
  vectors = np.asarray(measured.eigenvectors)
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-12)


def test_pixel_sums_are_exact_in_any_order_and_kept_for_their_data_only(tmp_path):
  pixels = np.random.default_rng(7).integers(0, 256, (1000, 3)).astype(np.float64)
  whole, chunks, per_pixel = statistics.PixelSums(), statistics.PixelSums(), statistics.PixelSums()
  whole.add(len(pixels), pixels.sum(axis=0), pixels.T @ pixels)
  for chunk in np.array_split(pixels[::-1], 7):  # another order, in float64 partial sums
    chunks.add(len(chunk), chunk.sum(axis=0), chunk.T @ chunk)
  per_pixel.add(np.ones(len(pixels), np.int64), pixels, pixels[:, :, None] * pixels[:, None, :])
  assert whole == chunks == per_pixel
  assert whole.sums == [int(v) for v in np.int64(pixels).sum(axis=0)]
  path = str(tmp_path / 'sums.json')
  statistics.write_sums(path, {'files': 1}, whole)
  assert statistics.read_sums(path, {'files': 1}) == whole
  assert statistics.read_sums(path, {'files': 2}) is None  # other contents: measure again
  assert statistics.read_sums(str(tmp_path / 'none.json'), {'files': 1}) is None
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_a_grey_dataset_has_one_colour_component():
  grey = np.random.default_rng(1).integers(0, 256, (50, 1)).repeat(3, axis=1)
  measured = statistics.from_sums(50, grey.sum(0), grey.T @ grey)
  assert measured.eigenvalues[1:] == (0.0, 0.0) and measured.eigenvalues[0] > 0
  np.testing.assert_allclose(np.asarray(measured.eigenvectors)[:, 0], np.full(3, 3**-0.5))
  # Its lighting noise brightens or darkens, and colours nothing.
  shifts = draws.lighting_shifts(np.random.default_rng(2).standard_normal((10, 3)), measured)
  np.testing.assert_allclose(shifts, shifts[:, :1].repeat(3, axis=1), rtol=1e-6)
  assert measured.std[0] == measured.std[1] == measured.std[2] == pytest.approx(grey[:, 0].std())


def _png_folder(root: str) -> list[np.ndarray]:
  """A folder dataset of PNGs (one of them greyscale), decoded exactly alike by PIL and TensorFlow;
  returns the training images as RGB arrays."""
  images = []
  for label, image in enumerate(_colour_images(3) + [np.full((6, 7), 77, np.uint8)]):
    for split in ('train', 'val'):
      directory = os.path.join(root, split, f'class_{label % 2}')
      os.makedirs(directory, exist_ok=True)
      Image.fromarray(image).save(os.path.join(directory, f'{label}.png'))
    images.append(np.asarray(Image.fromarray(image).convert('RGB')))
  return images


def _folder_config(root: str):
  config = defaults.get_config()
  config.dataset = f'folder:{root}'
  config.augment.statistics = 'dataset'
  return config


def test_measured_on_a_folder_dataset_equal_numpy_recorded_and_reused(tmp_path):
  images = _png_folder(str(tmp_path))
  config = _folder_config(str(tmp_path))
  measured = data.dataset_statistics(config)
  _assert_close(measured, _reference(images))

  # Recorded beside the data, with the exact sums; read back rather than measured again: a record
  # edited by hand is believed while the files it describes are unchanged.
  path = tmp_path / RECORD
  record = json.loads(path.read_text())
  assert record['count'] == sum(i.shape[0] * i.shape[1] for i in images)
  record['sums'] = [record['count'] * 10] * 3
  path.write_text(json.dumps(record))
  assert data.dataset_statistics(config).mean == (10.0, 10.0, 10.0)
  # A file rewritten changes what the record must describe: measured again.
  images[0] = np.full((4, 4, 3), 200, np.uint8)
  Image.fromarray(images[0]).save(tmp_path / 'train' / 'class_0' / '0.png')
  _assert_close(data.dataset_statistics(config), _reference(images))


def test_where_the_data_cannot_be_written_the_record_goes_to_the_cache_home(tmp_path):
  images = _png_folder(str(tmp_path))
  os.makedirs(tmp_path / RECORD)  # a directory in the way: no file can be written there
  config = _folder_config(str(tmp_path))
  _assert_close(data.dataset_statistics(config), _reference(images))
  paths, _ = measure._record_paths(config, 'train')  # pylint: disable=protected-access
  cached = paths[1]
  assert cached.startswith(os.environ['XDG_CACHE_HOME']) and os.path.isfile(cached)
  record = json.loads(open(cached).read())
  record['sums'] = [0, 0, 0]
  with open(cached, 'w') as f:
    json.dump(record, f)
  assert data.dataset_statistics(config).mean == (0.0, 0.0, 0.0)  # read from there


@pytest.fixture(scope='module')
def fashion_mnist(tmp_path_factory) -> tuple[str, np.ndarray]:
  """A tiny `fashion_mnist` (grey 28x28 images of random pixels, 40 training, 20 test) built by
  prepare; returns its data dir and the training images."""
  idx_dir = str(tmp_path_factory.mktemp('idx'))
  rng = np.random.default_rng(4)
  train = None
  for prefix, count in (('train', 40), ('t10k', 20)):
    labels = np.arange(count) % 10
    images = rng.integers(0, 256, (count, 28, 28)) * (labels[:, None, None] + 1) // 10
    write_idx(idx_dir, f'{prefix}-images-idx3-ubyte', images, False)
    write_idx(idx_dir, f'{prefix}-labels-idx1-ubyte', labels, False)
    train = images if prefix == 'train' else train
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare(idx_dir, data_dir)
  return data_dir, train.astype(np.uint8)


def _fashion_config(data_dir: str):
  config = defaults.get_config()
  config.dataset, config.data_dir, config.eval_split = 'fashion_mnist', data_dir, 'test'
  config.augment.statistics = 'dataset'
  return config


def test_a_tfds_dataset_is_measured_in_its_version_directory(fashion_mnist):
  data_dir, train = fashion_mnist
  measured = data.dataset_statistics(_fashion_config(data_dir))
  _assert_close(measured, _reference([np.repeat(image[..., None], 3, axis=2) for image in train]))
  assert measured.eigenvalues[1:] == (0.0, 0.0)  # grey images decoded as RGB: rank 1
  assert os.path.isfile(os.path.join(data_dir, 'fashion_mnist', '3.0.1', RECORD))


def test_normalization_and_lighting_follow_the_choice():
  augment = defaults.get_config().augment
  images = np.random.default_rng(5).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  imagenet = (images - np.float32(statistics.IMAGENET.mean)) / np.float32(statistics.IMAGENET.std)
  np.testing.assert_allclose(pixels.model_input({'image': images}, augment), imagenet, rtol=1e-5)

  augment.statistics = 'dataset'
  with pytest.raises(ValueError, match='no statistics are recorded'):
    pixels.model_input({'image': images}, augment)
  own = statistics.Statistics(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0),
                              eigenvalues=(3.0, 0.0, 0.0),
                              eigenvectors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
  statistics.record(augment, own)
  np.testing.assert_allclose(pixels.model_input({'image': images}, augment),
                             (images - np.float32(own.mean)) / np.float32(own.std), rtol=1e-6)
  config = defaults.get_config()
  config.augment = augment
  shifts = draws.training_draws(config, np.zeros(100), np.arange(100))['rgb_shift']
  assert np.all(shifts[:, 1:] == 0) and shifts[:, 0].std() == pytest.approx(0.3, rel=0.25)


def test_statistics_keys_are_checked():
  config = defaults.get_config()
  config.augment.mean_rgb = (1.0, 2.0, 3.0)
  with pytest.raises(config_validation.ConfigError, match="augment.statistics='imagenet'"):
    config_validation.validate(config)
  config.augment.statistics = 'dataset'
  with pytest.raises(config_validation.ConfigError, match='augment.std_rgb is not'):
    config_validation.validate(config)
  config.augment.std_rgb = (1.0, 0.0, 1.0)
  with pytest.raises(config_validation.ConfigError, match='std_rgb=.* three numbers > 0'):
    config_validation.validate(config)


def test_a_run_records_its_statistics_and_evaluate_uses_them_after_the_data_moves(
    fashion_mnist, tmp_path):
  data_dir, _ = fashion_mnist
  moved = str(tmp_path / 'moved')
  shutil.copytree(data_dir, moved)
  workdir = str(tmp_path / 'run')
  flags = {'dataset': 'fashion_mnist', 'data_dir': moved, 'eval_split': 'test',
           'augment.statistics': 'dataset', 'num_train_steps': 2, 'batch_size': 8,
           'log_every_steps': 1, 'eval_every_steps': 2, 'checkpoint_every_steps': 2}
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py', f'--workdir={workdir}',
       *(f'--config.{k}={v}' for k, v in flags.items())],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'config.json')) as f:
    recorded = json.load(f)['augment']
  measured = data.dataset_statistics(_fashion_config(data_dir))
  assert tuple(recorded['mean_rgb']) == measured.mean
  assert tuple(recorded['pca_eigenvalues']) == measured.eigenvalues

  # The data moves again, and its statistics record is gone: evaluation still normalizes as
  # training did, from config.json, and measures nothing.
  again = str(tmp_path / 'again')
  shutil.move(moved, again)
  os.remove(os.path.join(again, 'fashion_mnist', '3.0.1', RECORD))
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={workdir}', f'--data_dir={again}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if r['split'] == 'eval']
  assert evals[-1]['checkpoint'] == 'latest'
  assert evals[-1]['top1_err'] == evals[-2]['top1_err']
  assert evals[-1]['loss'] == pytest.approx(evals[-2]['loss'], rel=1e-5)
  assert not os.path.exists(os.path.join(again, 'fashion_mnist', '3.0.1', RECORD))


@pytest.mark.slow
def test_in_two_processes_the_first_measures_and_the_other_reads_its_record(fashion_mnist,
                                                                             tmp_path):
  data_dir = str(tmp_path / 'data')
  shutil.copytree(fashion_mnist[0], data_dir)
  for record in glob.glob(os.path.join(data_dir, '*', '*', RECORD)):
    os.remove(record)  # measured afresh, by the run
  workdir = str(tmp_path / 'run')
  overrides = {'dataset': 'fashion_mnist', 'data_dir': data_dir, 'eval_split': 'test',
               'train_examples': 24, 'augment.statistics': 'dataset'}
  result = subprocess.run(
      [sys.executable, '-m', 'launch.local', '--num_processes=2', '--cpu_devices_per_process=1',
       '--', *test_distributed.tiny_run_args(workdir, **overrides)],
      cwd=REPO, env=test_distributed.env_with_cpu_devices(1), capture_output=True, text=True,
      timeout=600)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  assert len(re.findall(r'pixel statistics of fashion_mnist train measured', output)) == 1
  assert len(re.findall(r'pixel statistics of fashion_mnist train read from', output)) == 1
  with open(os.path.join(workdir, 'config.json')) as f:
    recorded = tuple(json.load(f)['augment']['std_rgb'])
  assert recorded == data.dataset_statistics(_fashion_config(fashion_mnist[0])).std
