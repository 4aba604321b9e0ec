"""`prepare` builds imagenet2012 with the real TFDS builder from a miniature of the ILSVRC2012 tar files,
and the pipeline reads the result: shards, resumption, evaluation; `downsample` copies it at a shorter side."""

import io
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import defaults
from alexnet_jax import prepare
from alexnet_jax.data import downsample
from alexnet_jax.data import folders
from alexnet_jax.data import pipeline
from alexnet_jax.data import sources
import imagenet_miniature

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(manual_dir, data_dir) of a miniature ImageNet built by `prepare`."""
  root = tmp_path_factory.mktemp('imagenet')
  manual_dir = imagenet_miniature.write_imagenet_tars(str(root / 'manual'))
  data_dir = str(root / 'tfds')
  prepare.prepare('imagenet2012', manual_dir=manual_dir, data_dir=data_dir)
  return manual_dir, data_dir


def _config(data_dir: str, **overrides):
  config = defaults.get_config()
  config.data_dir = data_dir
  config.resize_size, config.image_size = 40, 32
  config.update(overrides)
  return config


def test_prepare_builds_every_image_as_an_rgb_jpeg(prepared):
  _, data_dir = prepared
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  num_train = sum(map(len, imagenet_miniature.TRAIN_IMAGES.values()))
  assert builder.info.splits['train'].num_examples == num_train
  assert builder.info.splits['validation'].num_examples == imagenet_miniature.NUM_VAL_IMAGES
  train = tfds.as_numpy(builder.as_dataset(
      split='train', decoders={'image': tfds.decode.SkipDecoding()}))
  examples = {ex['file_name'].decode(): ex for ex in train}
  label_names = builder.info.features['label'].names
  for synset, names in imagenet_miniature.TRAIN_IMAGES.items():
    for name in names:
      assert label_names[examples[name]['label']] == synset
  # The CMYK image and the PNG were converted to RGB JPEGs by the builder.
  for name in (imagenet_miniature.CMYK_IMAGE, imagenet_miniature.PNG_IMAGE):
    image = Image.open(io.BytesIO(examples[name]['image']))
    assert (image.format, image.mode) == ('JPEG', 'RGB')
  # Validation labels come from the list TFDS ships, in file-name order.
  shipped = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt').read_text().split()
  validation = tfds.as_numpy(builder.as_dataset(split='validation'))
  for ex in validation:
    number = int(ex['file_name'].decode()[len('ILSVRC2012_val_'):-len('.JPEG')])
    assert label_names[ex['label']] == shipped[number - 1]


def test_prepare_is_idempotent(prepared):
  manual_dir, data_dir = prepared
  builder = prepare.prepare('imagenet2012', manual_dir=manual_dir, data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == 9


def test_a_built_imagenet_needs_no_tars(prepared):
  builder = prepare.prepare('imagenet2012', data_dir=prepared[1])  # no --manual_dir
  assert builder.info.splits['validation'].num_examples == imagenet_miniature.NUM_VAL_IMAGES


@pytest.mark.slow
def test_the_documented_copy_command_runs_on_a_built_imagenet(prepared, tmp_path):
  # `prepare --downsample_to` as README.md gives it, without --manual_dir.
  out = tmp_path / 'imagenet32'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.prepare', '--dataset=imagenet2012',
       f'--data_dir={prepared[1]}', f'--downsample_to={out}', '--shorter_side=32',
       '--splits=validation'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(list((out / 'val').rglob('*.JPEG'))) == imagenet_miniature.NUM_VAL_IMAGES


def test_prepare_without_the_tars_says_what_to_download(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar '
                     r'not found in --manual_dir=.*image-net.org'):
    prepare.prepare('imagenet2012', manual_dir=str(tmp_path), data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='--manual_dir=DIR'):
    prepare.prepare('imagenet2012', data_dir=str(tmp_path / 'tfds'))


def test_prepared_info(prepared):
  info = sources.get_dataset_info(_config(prepared[1]))
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (1000, 9, 5)


def _images(batches) -> list[bytes]:
  return [image.tobytes() for batch in batches for image in batch['image'][batch.get(
      'mask', np.ones(len(batch['image']), bool))]]


def test_process_shards_are_disjoint_and_cover_the_split(prepared):
  # No randomness (center crops), so an image identifies its example.
  config = _config(prepared[1])
  for name in ('random_crop', 'flip'):
    config.augment[name] = False
  config.augment.pca_lighting = 0.0
  everyone = set()
  for process_index in range(3):  # 3 training examples each: one batch of 3 is one epoch
    batches = pipeline.train_batches(config, start_step=0, local_batch_size=3,
                                           process_index=process_index, process_count=3)
    mine = set(_images([next(batches)]))
    assert len(mine) == 3 and not mine & everyone
    everyone |= mine
  assert len(everyone) == 9
  evaluated = []
  for process_index in range(2):
    evaluated += _images(pipeline.eval_batches(config, local_batch_size=2,
                                                     process_index=process_index, process_count=2))
  alone = _images(pipeline.eval_batches(config, local_batch_size=2, process_index=0,
                                              process_count=1))
  assert len(evaluated) == 5 and sorted(evaluated) == sorted(alone)


@pytest.mark.parametrize('cache', [False, True])
def test_processes_with_no_eval_example_pad_to_the_same_batch_count(prepared, cache):
  config = _config(prepared[1], cache=cache)
  evaluated, batch_counts = [], set()
  for process_index in range(8):  # 5 validation images: 3 processes have none
    batches = list(pipeline.eval_batches(config, local_batch_size=2,
                                               process_index=process_index, process_count=8))
    batch_counts.add(len(batches))
    evaluated += _images(batches)
  assert batch_counts == {1}
  assert len(evaluated) == len(set(evaluated)) == imagenet_miniature.NUM_VAL_IMAGES


def test_resume_on_record_files_matches_the_uninterrupted_stream(prepared, monkeypatch):
  # A split spec of three pieces gives three blocks; windows of two examples make several windows
  # per epoch, so resuming seeks across windows and epochs.
  monkeypatch.setattr(sources, '_WINDOW_EXAMPLES', 2)
  config = _config(prepared[1], train_split='train[:3]+train[3:6]+train[6:]')
  kwargs = dict(local_batch_size=2, process_index=0, process_count=1)
  stream = pipeline.train_batches(config, start_step=0, **kwargs)
  uninterrupted = [next(stream) for _ in range(14)]  # 28 examples: three epochs and a bit
  labels = np.concatenate([b['label'] for b in uninterrupted])
  assert sorted(labels[:9]) == sorted(labels[9:18])  # each epoch visits every example once
  assert not all(np.array_equal(uninterrupted[i]['image'], uninterrupted[i + 9]['image'])
                 for i in range(4))  # fresh augmentation each epoch
  for start in (1, 4, 10):
    resumed = pipeline.train_batches(config, start_step=start, **kwargs)
    for step in range(start, start + 3):
      np.testing.assert_array_equal(next(resumed)['image'], uninterrupted[step]['image'])


def test_downsampled_copy_keeps_every_image_and_label_at_the_shorter_side(prepared, tmp_path):
  config = _config(prepared[1])
  out = str(tmp_path / 'imagenet32')
  assert downsample.downsample(config, out, shorter_side=32) == {'train': 9, 'validation': 5}
  names = sources.get_dataset_info(config).class_names  # synset ids, sorted: kept as they are
  for split, folder in (('train', 'train'), ('validation', 'val')):
    for ex in tfds.as_numpy(sources.split_examples(config, split)):
      copy = Image.open(os.path.join(out, folder, names[ex['label']], f'{ex["index"]:08d}.JPEG'))
      original = Image.open(io.BytesIO(ex['encoded'])).convert('RGB')
      assert min(copy.size) == 32 and copy.format == 'JPEG'
      assert abs(copy.size[0] / copy.size[1] - original.size[0] / original.size[1]) < 0.05
      # The same picture, smaller: close to PIL's own antialiased resize, far from another image's.
      expected = np.asarray(original.resize(copy.size, Image.BILINEAR), np.float32)
      error = np.abs(np.asarray(copy, np.float32) - expected).mean()
      assert error < 6, error
      other = np.asarray(original.transpose(Image.ROTATE_180).resize(copy.size, Image.BILINEAR))
      assert np.abs(np.asarray(copy, np.float32) - other).mean() > 3 * error
  # Read back as a folder dataset: the same classes in the same order (a folder for every synset,
  # so labels keep ImageNet's numbering). The miniature has images of 3 of them only, which a
  # training run refuses: the model would have 997 outputs it never learns.
  assert folders.class_names(out) == names
  folder = _config(None, dataset=f'folder:{out}', resize_size=32, image_size=28)
  with pytest.raises(ValueError, match="997 of the 1000 classes have no decodable image in split "
                                       f"'train': {os.path.join(out, 'train', names[1])}, "):
    sources.get_dataset_info(folder)
  # The same command again finds the copy complete and writes nothing; other settings are refused.
  before = {p: p.stat().st_mtime_ns for p in Path(out).rglob('*')}
  assert downsample.downsample(config, out, shorter_side=32) == {'train': 9, 'validation': 5}
  assert {p: p.stat().st_mtime_ns for p in Path(out).rglob('*')} == before
  with pytest.raises(FileExistsError, match='holds a copy made with .*shorter_side.: 32'):
    downsample.downsample(config, out, shorter_side=40)


def test_images_already_small_enough_are_copied_byte_for_byte(prepared, tmp_path):
  config = _config(prepared[1])
  downsample.downsample(config, str(tmp_path), shorter_side=40, splits=('validation',))
  names = sources.get_dataset_info(config).class_names
  for ex in tfds.as_numpy(sources.split_examples(config, 'validation')):
    path = tmp_path / 'val' / names[ex['label']] / f'{ex["index"]:08d}.JPEG'
    assert path.read_bytes() == ex['encoded']
  with pytest.raises(ValueError, match='whole splits only'):
    downsample.downsample(config, str(tmp_path / 'x'), splits=('train[:5]',))
