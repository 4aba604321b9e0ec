"""`folder:/path` datasets: layout, classes, bad images, determinism, resumption, and a real training run."""

import json
import logging
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import defaults
from alexnet_jax import errors
from alexnet_jax.data import folders
from alexnet_jax.data import pipeline
from alexnet_jax.data import pixels
from alexnet_jax.data import sources
import input_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(root: str, **overrides):
  config = defaults.get_config()
  config.dataset = f'folder:{root}'
  config.resize_size, config.image_size = 40, 32
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> str:
  return input_images.write_folder_dataset(str(tmp_path_factory.mktemp('folder')))


def test_info_from_folder_names(folder):
  info = sources.get_dataset_info(_config(folder))
  assert info.class_names == ('class_0', 'class_1', 'class_2')
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (3, 18, 6)


def test_validation_reads_test_folder_when_there_is_no_val(tmp_path):
  root = input_images.write_folder_dataset(str(tmp_path), classes=2, val_dir='test')
  assert sources.get_dataset_info(_config(root)).num_eval_examples == 4
  config = _config(root, eval_split='val', dataset=f'folder:{tmp_path / "nowhere"}')
  with pytest.raises(FileNotFoundError, match='no folder for split'):
    sources.get_dataset_info(config)


def test_a_class_without_images_in_a_split_is_refused_naming_its_folder(tmp_path):
  # Before, both were accepted: a 3-way head trained with a class it never sees, or is never
  # tested on.
  root = input_images.write_folder_dataset(str(tmp_path / 'empty_train_class'), classes=3,
                                           train_per_class=2, val_per_class=1)
  for image in Path(root, 'train', 'class_1').iterdir():
    image.unlink()
  with pytest.raises(errors.InvalidError, match=r"1 of the 3 classes have no decodable image in "
                     rf"split 'train': {Path(root, 'train', 'class_1')}\. Every class needs"):
    sources.get_dataset_info(_config(root))

  root = input_images.write_folder_dataset(str(tmp_path / 'class_missing_in_val'), classes=3,
                                           train_per_class=2, val_per_class=1)
  for image in Path(root, 'val', 'class_2').iterdir():
    image.unlink()
  Path(root, 'val', 'class_2').rmdir()
  with pytest.raises(errors.InvalidError,
                     match=rf"split 'validation': {Path(root, 'val', 'class_2')}\."):
    sources.get_dataset_info(_config(root))


def test_batches_hold_every_class_as_uint8_pixels(folder):
  batches = pipeline.train_batches(_config(folder), start_step=0, local_batch_size=6,
                                         process_index=0, process_count=1)
  epoch = [next(batches) for _ in range(3)]  # 18 images: one epoch
  labels = np.concatenate([b['label'] for b in epoch])
  np.testing.assert_array_equal(np.bincount(labels), [6, 6, 6])
  # The crops, resized from their regions as on the device.
  images = np.concatenate([pixels.resize_windows(b, 32)['image'] for b in epoch])
  assert images.shape == (18, 32, 32, 3) and images.dtype == np.uint8
  inputs = np.asarray(pixels.model_input({'image': images,
                                          'rgb_shift': np.concatenate([b['rgb_shift'] for b in epoch])},
                                         _config(folder).augment))
  assert abs(inputs.mean()) < 1.5 and 0.2 < inputs.std() < 3


def test_same_seed_same_batches_other_seed_other_batches(folder):
  def first_batches(seed, cache=False):
    batches = pipeline.train_batches(_config(folder, seed=seed, cache=cache), start_step=0,
                                           local_batch_size=4, process_index=0, process_count=1)
    return [next(batches) for _ in range(5)]

  first, again, other = first_batches(0), first_batches(0), first_batches(1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['window'], b['window'])
    np.testing.assert_array_equal(a['flip'], b['flip'])
    np.testing.assert_array_equal(a['rgb_shift'], b['rgb_shift'])
  assert not all(np.array_equal(a['label'], b['label']) for a, b in zip(first, other))
  # The in-memory cache changes where the bytes come from, nothing else.
  for a, b in zip(first, first_batches(0, cache=True)):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_each_epoch_is_a_new_permutation(folder):
  config = _config(folder)
  config.augment.random_crop = config.augment.flip = False
  config.augment.pca_lighting = 0.0
  batches = pipeline.train_batches(config, start_step=0, local_batch_size=18,
                                         process_index=0, process_count=1)
  epochs = [next(batches)['image'] for _ in range(3)]  # one batch = one epoch
  keys = [[image.tobytes() for image in epoch] for epoch in epochs]
  assert sorted(keys[0]) == sorted(keys[1]) == sorted(keys[2])  # every example once per epoch
  assert keys[0] != keys[1] and keys[1] != keys[2]


@pytest.mark.parametrize('process_count', [1, 2])
def test_resume_at_step_s_gives_the_uninterrupted_batches(folder, process_count):
  config = _config(folder)
  for process_index in range(process_count):
    kwargs = dict(local_batch_size=4, process_index=process_index, process_count=process_count)
    input_images.assert_resumed_streams_match(  # more than an epoch
        lambda start: pipeline.train_batches(config, start_step=start, **kwargs), 9, (2, 4, 7))


def test_eval_shards_are_disjoint_padded_and_covering(folder):
  config = _config(folder, eval_crops=10)
  seen, batch_counts = [], set()
  for process_index in range(4):  # 6 images over 4 processes: shards of 1 or 2
    batches = list(pipeline.eval_batches(config, local_batch_size=3,
                                               process_index=process_index, process_count=4))
    batch_counts.add(len(batches))
    for batch in batches:
      assert batch['image'].shape == (3, 5, 32, 32, 3)
      seen += [image.tobytes() for image in batch['image'][batch['mask']]]
  assert batch_counts == {1}
  assert len(seen) == len(set(seen)) == 6


@pytest.fixture
def folder_with_bad_images(tmp_path):
  root = input_images.write_folder_dataset(str(tmp_path), classes=2, train_per_class=4)
  good = os.path.join(root, 'train', 'class_0', '0_0.jpg')
  with open(good, 'rb') as f:
    data = f.read()
  truncated = os.path.join(root, 'train', 'class_0', 'truncated.jpg')
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) // 2])
  not_an_image = os.path.join(root, 'train', 'class_1', 'notes.jpg')
  with open(not_an_image, 'w') as f:
    f.write('not an image\n')
  return root, (truncated, not_an_image)


def test_undecodable_images_are_skipped_counted_and_logged(folder_with_bad_images, caplog):
  root, bad_files = folder_with_bad_images
  config = _config(root)
  with caplog.at_level(logging.WARNING):
    info = sources.get_dataset_info(config)
  assert info.num_train_examples == 8  # 10 files, 2 undecodable
  assert 'Skipping 2 undecodable image(s)' in caplog.text
  for path in bad_files:
    assert path in caplog.text
  batches = pipeline.train_batches(config, start_step=0, local_batch_size=4,
                                         process_index=0, process_count=1)
  for _ in range(2):  # two epochs, no decode error: each the 4 good images of each class, once
    epoch = [next(batches) for _ in range(2)]
    np.testing.assert_array_equal(np.bincount(np.concatenate([b['label'] for b in epoch])), [4, 4])
    assert len({image.tobytes() for b in epoch for image in b['image']}) == 8


def test_strict_data_makes_undecodable_images_an_error(folder_with_bad_images):
  root, bad_files = folder_with_bad_images
  with pytest.raises(ValueError, match='2 image\\(s\\) in .* cannot be decoded') as error:
    sources.get_dataset_info(_config(root, strict_data=True))
  for path in bad_files:
    assert path in str(error.value)
  assert 'strict_data=False' in str(error.value)


def test_the_decode_check_is_remembered_until_a_file_changes(folder_with_bad_images, monkeypatch,
                                                              caplog):
  root, (truncated, _) = folder_with_bad_images
  config = _config(root)
  assert sources.get_dataset_info(config).num_train_examples == 8
  records = list((Path(os.environ['XDG_CACHE_HOME']) / 'alexnet_jax' / 'folder_checks').iterdir())
  # A new process (here: the in-process memo cleared) reads the check instead of decoding again.
  folders.images.cache_clear()
  decoded = []
  real_undecodable = folders._undecodable  # pylint: disable=protected-access
  monkeypatch.setattr(folders, '_undecodable',
                      lambda paths: decoded.append(len(paths)) or real_undecodable(paths))
  with caplog.at_level(logging.WARNING):
    assert sources.get_dataset_info(config).num_train_examples == 8
  assert decoded == [] and truncated in caplog.text  # still skipped and logged, by name
  # Rewriting a file (here: the truncated one, now whole) makes a new check.
  with open(os.path.join(root, 'train', 'class_0', '0_0.jpg'), 'rb') as f:
    whole = f.read()
  with open(truncated, 'wb') as f:
    f.write(whole)
  folders.images.cache_clear()
  assert sources.get_dataset_info(config).num_train_examples == 9
  assert decoded == [10]  # the training split checked again; the validation split's record held
  new_records = set((Path(os.environ['XDG_CACHE_HOME']) / 'alexnet_jax' / 'folder_checks').iterdir())
  assert set(records) < new_records


def test_the_decode_check_works_without_a_writable_cache(folder_with_bad_images, monkeypatch,
                                                         caplog):
  root, _ = folder_with_bad_images
  unwritable = Path(root) / 'cache_home'
  unwritable.write_text('a file where the cache directory would go\n')
  monkeypatch.setenv('XDG_CACHE_HOME', str(unwritable))
  with caplog.at_level(logging.WARNING):
    assert sources.get_dataset_info(_config(root)).num_train_examples == 8
  assert 'Could not record the decode check' in caplog.text


@pytest.mark.slow
def test_main_trains_on_a_folder_dataset(tmp_path):
  root = input_images.write_folder_dataset(str(tmp_path / 'images'), classes=4,
                                           train_per_class=16, val_per_class=4, size=(80, 96))
  workdir = tmp_path / 'workdir'
  command = [
      sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py', f'--workdir={workdir}',
      f'--config.dataset=folder:{root}', '--config.num_classes=4', '--config.resize_size=72',
      '--config.image_size=67', '--config.batch_size=16', '--config.num_epochs=1',
      '--config.eval_every_steps=2', '--config.log_every_steps=2']
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [row for row in rows if row['split'] == 'eval']
  assert evals and all(np.isfinite(row['loss']) for row in evals)
  assert max(row['step'] for row in rows) == 4  # an epoch of 64 images in batches of 16
