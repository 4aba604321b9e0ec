"""The pixel store: written by `prepare --store_to` from folder and Fashion-MNIST data, resumed,
refused when made otherwise, and read back by position: batches equal to the JPEG pipeline's,
resumable, sharded over processes, without TensorFlow, and a training run resumed from it."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import config_validation
from alexnet_jax import data
from alexnet_jax import defaults
from alexnet_jax.data import fashion_mnist
from alexnet_jax.data import folders
from alexnet_jax.data import pipeline
from alexnet_jax.data import pixels
from alexnet_jax.data import store
from alexnet_jax.data import store_writer
import input_images
from test_fashion_mnist import images_of, write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE, CROP = 72, 67  # resize_size and image_size of the small stores here (67: AlexNet's least)


def _folder_config(root: str, **overrides):
  config = defaults.get_config()
  config.dataset = f'folder:{root}'
  config.resize_size, config.image_size = SIDE, CROP
  config.update(overrides)
  return config


def _store_config(root: str, **overrides):
  return _folder_config(root, dataset=f'{store.PREFIX}{root}', **overrides)


def write_png_folder(root: str, side: int, classes: int = 3, train_per_class: int = 6,
                     val_per_class: int = 2) -> str:
  """ROOT/train/class_k/*.png and ROOT/val/...: side x side PNGs, decoded to the same pixels by
  every reader (JPEG decodes of a window can differ at its border)."""
  rng = np.random.default_rng(1)
  for split, count in (('train', train_per_class), ('val', val_per_class)):
    for k in range(classes):
      os.makedirs(os.path.join(root, split, f'class_{k}'))
      for i in range(count):
        Image.fromarray(input_images.image_array(rng, side, side)).save(
            os.path.join(root, split, f'class_{k}', f'{i}.png'))
  return root


@pytest.fixture(scope='module')
def pngs(tmp_path_factory) -> str:
  """18 training and 6 validation PNGs at SIDE x SIDE: the store holds their pixels as they are."""
  return write_png_folder(str(tmp_path_factory.mktemp('pngs')), SIDE)


@pytest.fixture(scope='module')
def png_store(pngs, tmp_path_factory) -> str:
  """The store of `pngs`, in shards of 5 examples (4 training shards, the last of 3)."""
  out = str(tmp_path_factory.mktemp('png_store'))
  assert store_writer.write(_folder_config(pngs), out, resize_size=SIDE, examples_per_shard=5) == {
      'train': 18, 'validation': 6}
  return out


def test_prepare_writes_the_central_square_of_each_image_with_its_label(tmp_path):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), size=(48, 64))
  out = tmp_path / 'store'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.prepare', f'--dataset=folder:{source}',
       f'--store_to={out}', f'--resize_size={SIDE}'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / store.RECORD).read_text())
  assert record['train']['complete'] and record['train']['examples'] == 18
  assert record['validation']['settings']['resize_size'] == SIDE
  assert record['train']['class_names'] == ['class_0', 'class_1', 'class_2']
  assert sorted(os.listdir(out)) == [store.RECORD, 'train', 'validation']
  images = np.load(out / 'train' / store.images_file(0))
  labels = np.load(out / 'train' / store.labels_file(0))
  assert images.shape == (18, SIDE, SIDE, 3) and images.dtype == np.uint8
  paths, folder_labels = folders.images(source, 'train', strict=False)
  np.testing.assert_array_equal(labels, folder_labels)
  # The PNGs, checked against an independent computation: the central 48x48 square of the 48x64
  # or 64x48 image, bilinearly resized to SIDE x SIDE and rounded.
  for index in [i for i, path in enumerate(paths) if path.endswith('.png')]:
    array = np.asarray(Image.open(paths[index]).convert('RGB'))
    height, width = array.shape[:2]
    top, left = (height - 48) // 2, (width - 48) // 2
    square = array[top:top + 48, left:left + 48].astype(np.float32)
    expected = np.round(tf.image.resize(square, [SIDE, SIDE], 'bilinear').numpy()).astype(np.uint8)
    np.testing.assert_array_equal(images[index], expected)


def test_a_store_of_fashion_mnist_holds_its_grey_pixels_as_rgb(tmp_path):
  idx_dir = tmp_path / 'idx'
  idx_dir.mkdir()
  labels = {'train': np.arange(30) % 10, 't10k': np.arange(12)[::-1] % 10}
  for prefix, split_id in (('train', 1), ('t10k', 2)):
    write_idx(str(idx_dir), f'{prefix}-images-idx3-ubyte', images_of(labels[prefix], split_id), False)
    write_idx(str(idx_dir), f'{prefix}-labels-idx1-ubyte', labels[prefix], False)
  fashion_mnist.build(str(idx_dir), str(tmp_path / 'tfds'))
  config = defaults.get_config()
  config.dataset, config.data_dir = fashion_mnist.NAME, str(tmp_path / 'tfds')
  out = tmp_path / 'store'
  # At 28, the images' own size: their pixels, unresampled.
  assert store_writer.write(config, str(out), resize_size=28, splits=('train', 'test')) == {
      'train': 30, 'test': 12}
  for split, prefix, split_id in (('train', 'train', 1), ('test', 't10k', 2)):
    images = np.load(out / split / store.images_file(0))
    assert images.shape == (len(labels[prefix]), 28, 28, 3)
    # TFDS shuffled the examples when it built the split; each image says which it is (rows 2-3).
    index = images[:, 2, 0, 0].astype(int) * 256 + images[:, 3, 0, 0]
    assert sorted(index) == list(range(len(labels[prefix])))
    expected = images_of(labels[prefix], split_id)[index]
    np.testing.assert_array_equal(images, np.repeat(expected[..., None], 3, axis=-1))
    np.testing.assert_array_equal(np.load(out / split / store.labels_file(0)), labels[prefix][index])
  # Upsampled as the ablations train (28 -> 72, crops of 67): shapes, and one training batch.
  store_writer.write(config, str(tmp_path / 'store72'), resize_size=72, splits=('train', 'test'))
  train_config = _store_config(str(tmp_path / 'store72'), resize_size=72, image_size=67,
                               eval_split='test')
  config_validation.validate(train_config)
  batch = next(store.train_batches(train_config, start_step=0, local_batch_size=8, process_index=0,
                                   process_count=1))
  assert batch['image'].shape == (8, 72, 72, 3) and batch['crop_offset'].max() <= 72 - 67
  assert np.asarray(pixels.training_crops(batch, 67)['image']).shape == (8, 67, 67, 3)


def _files(root) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*')
          if p.is_file() and p.name != store.RECORD}


def test_an_interrupted_write_resumes_with_the_shards_it_lacks(tmp_path, monkeypatch):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), size=(48, 64))
  config = _folder_config(source)
  uninterrupted = tmp_path / 'uninterrupted'
  store_writer.write(config, str(uninterrupted), resize_size=SIDE, examples_per_shard=4)

  add = store_writer._ShardFile.add  # pylint: disable=protected-access
  added = []

  def add_then_stop(shard, image, label):
    if len(added) == 10:  # stopped in the middle of the third shard of the training split
      raise KeyboardInterrupt
    added.append(label)
    return add(shard, image, label)

  monkeypatch.setattr(store_writer._ShardFile, 'add', add_then_stop)  # pylint: disable=protected-access
  out = tmp_path / 'store'
  with pytest.raises(KeyboardInterrupt):
    store_writer.write(config, str(out), resize_size=SIDE, examples_per_shard=4)
  monkeypatch.setattr(store_writer._ShardFile, 'add', add)  # pylint: disable=protected-access
  # Two complete shards and the third's unfinished file wait in train.partial/; nothing reads them.
  assert not (out / 'train').exists()
  assert sorted(_files(out / 'train.partial')) == [
      'images-00000.npy', 'images-00001.npy', 'images-00002.npy.tmp', 'labels-00000.npy',
      'labels-00001.npy']
  with pytest.raises(store.StoreError, match="no complete split 'train'"):
    store.check_config(_store_config(str(out)))

  # The sources of the eight images written are not read again: removed, a read would fail.
  paths, _ = folders.images(source, 'train', strict=False)
  for path in paths[:8]:
    os.remove(path)
  assert store_writer.write(config, str(out), resize_size=SIDE, examples_per_shard=4) == {
      'train': 18, 'validation': 6}
  assert _files(out) == _files(uninterrupted)  # byte for byte, and the unfinished file is gone
  # Once complete, the same command writes nothing.
  written = {p: p.stat().st_mtime_ns for p in out.rglob('*')}
  assert store_writer.write(config, str(out), resize_size=SIDE, examples_per_shard=4) == {
      'train': 18, 'validation': 6}
  assert {p: p.stat().st_mtime_ns for p in out.rglob('*')} == written


def test_a_store_made_otherwise_is_refused_in_one_line(png_store, pngs, tmp_path):
  # Writing into it with other settings: refused, naming both.
  with pytest.raises(FileExistsError, match=f"'resize_size': {SIDE}.*'resize_size': 80"):
    store_writer.write(_folder_config(pngs), png_store, resize_size=80, examples_per_shard=5)
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.prepare', f'--dataset=folder:{pngs}',
       f'--store_to={png_store}', '--resize_size=80'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2
  error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1 and 'remove it, or write the store to another folder' in error[0]
  # Training with settings the store does not hold: one line naming the key, both values and the
  # fix, before anything compiles (exit 2).
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py',
       f'--workdir={tmp_path / "run"}', f'--config.dataset=store:{png_store}',
       '--config.resize_size=80'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: config.resize_size=80 does not match the store {png_store}, written at resize_size '
      f'{SIDE}: set --config.resize_size={SIDE}, or write a store at 80 into another folder (python '
      f'-m alexnet_jax.prepare --dataset=folder:{pngs} --store_to=DIR --resize_size=80 '
      '--splits=train).')
  assert not (tmp_path / 'run' / 'checkpoints').exists()
  for overrides, message in (
      ({'center_square': False}, 'config.center_square=False: the store .* holds the central '
       'square'),
      ({'eval_split': 'test'}, "no complete split 'test' \\(complete: train, validation\\). Write "
       f'it with python -m alexnet_jax.prepare --dataset=folder:{pngs} --store_to={png_store} '
       f'--resize_size={SIDE} --splits=test'),
  ):
    with pytest.raises(store.StoreError, match=message):
      store.check_config(_store_config(png_store, **overrides))
  with pytest.raises(store.StoreError, match='is not a pixel store'):
    store.check_config(_store_config(str(tmp_path)))


def test_a_split_the_source_lacks_is_named_before_anything_is_written(pngs, tmp_path):
  with pytest.raises(ValueError, match="--splits: 'test': .*no folder for split"):
    store_writer.write(_folder_config(pngs), str(tmp_path / 'store'), resize_size=SIDE,
                       splits=('train', 'test'))
  assert not (tmp_path / 'store').exists()


def _crops(batch, image_size=CROP) -> np.ndarray:
  return np.asarray(pixels.training_crops(batch, image_size)['image'])


@pytest.mark.parametrize('device_resize_scale', [1.48, 0.0])
def test_store_batches_equal_the_jpeg_pipelines(pngs, png_store, device_resize_scale):
  """Step for step the same crops, flips, lighting and labels, over three epochs: the pipeline's
  regions resized on the device (or crops made on the host) against the store's squares cut on the
  device."""
  kwargs = dict(start_step=0, local_batch_size=4, process_index=0, process_count=1)
  decoded = pipeline.train_batches(
      _folder_config(pngs, device_resize_scale=device_resize_scale), **kwargs)
  stored = store.train_batches(_store_config(png_store), **kwargs)
  for _ in range(14):
    a, b = next(decoded), next(stored)
    assert b['image'].shape == (4, SIDE, SIDE, 3) and b['crop_offset'].shape == (4, 2)
    np.testing.assert_array_equal(_crops(a), _crops(b))
    for key in ('flip', 'rgb_shift', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  config = _store_config(png_store)
  config.augment.random_crop = False  # the center crop
  first = next(store.train_batches(config, **kwargs))
  config = _folder_config(pngs, device_resize_scale=device_resize_scale)
  config.augment.random_crop = False
  np.testing.assert_array_equal(_crops(first), _crops(next(pipeline.train_batches(config, **kwargs))))


@pytest.mark.parametrize('eval_crops', [1, 10])
def test_store_eval_batches_equal_the_jpeg_pipelines(pngs, png_store, eval_crops):
  for process_index in range(2):
    kwargs = dict(local_batch_size=4, process_index=process_index, process_count=2)
    decoded = list(pipeline.eval_batches(_folder_config(pngs, eval_crops=eval_crops), **kwargs))
    stored = list(store.eval_batches(_store_config(png_store, eval_crops=eval_crops), **kwargs))
    assert len(stored) == len(decoded) == 1
    for a, b in zip(decoded, stored):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_store_trains_and_measures_on_the_same_subset_as_the_jpeg_pipeline(pngs, png_store):
  """`train_examples=9` of 18: the same three examples of each class, step for step the same
  batches over three epochs; `eval_train_examples=6` evaluates the same six of them."""
  kwargs = dict(start_step=0, local_batch_size=3, process_index=0, process_count=1)
  decoded = pipeline.train_batches(_folder_config(pngs, train_examples=9), **kwargs)
  stored = store.train_batches(_store_config(png_store, train_examples=9), **kwargs)
  labels = []
  for _ in range(9):
    a, b = next(decoded), next(stored)
    np.testing.assert_array_equal(_crops(a), _crops(b))
    for key in ('flip', 'rgb_shift', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
    labels += b['label'].tolist()
  assert sorted(labels) == [0] * 9 + [1] * 9 + [2] * 9  # three epochs of 3 per class
  info = data.get_dataset_info(_store_config(png_store, train_examples=9))
  assert (info.num_train_examples, info.num_eval_examples) == (9, 6)
  for process_index in range(2):
    kwargs = dict(local_batch_size=2, process_index=process_index, process_count=2,
                  on_training_set=True)
    a = list(pipeline.eval_batches(_folder_config(pngs, train_examples=9, eval_train_examples=6),
                                   **kwargs))
    b = list(store.eval_batches(_store_config(png_store, train_examples=9, eval_train_examples=6),
                                **kwargs))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def test_a_subset_larger_than_the_split_is_refused_in_one_line(png_store):
  with pytest.raises(store.StoreError, match='ask for 1 to 18'):
    data.get_dataset_info(_store_config(png_store, train_examples=19))


def test_store_pixel_statistics_equal_those_measured_from_the_source(pngs, png_store):
  """The store holds the PNGs' pixels as they are, so its exact sums give the statistics the
  TensorFlow measurement of the source folder gives, bit for bit; the second call reads them from
  the store."""
  from alexnet_jax.data import measure  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = _store_config(png_store)
  config.augment.statistics = 'dataset'
  measured = data.dataset_statistics(config)
  assert measured == measure.split_statistics(_folder_config(pngs))
  path = os.path.join(png_store, 'statistics-train.json')
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  assert record['count'] == 18 * SIDE * SIDE
  record['sums'][0] += 18 * SIDE * SIDE  # a record that says the red mean is 1 higher is believed
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f)
  assert data.dataset_statistics(config).mean[0] == pytest.approx(measured.mean[0] + 1)
  os.remove(path)


@pytest.mark.parametrize('process_count', [1, 2])
def test_a_stream_resumed_at_step_s_gives_the_uninterrupted_batches(png_store, process_count):
  config = _store_config(png_store)
  for process_index in range(process_count):
    kwargs = dict(local_batch_size=4, process_index=process_index, process_count=process_count)
    input_images.assert_resumed_streams_match(  # over two epochs
        lambda start: store.train_batches(config, start_step=start, **kwargs), 11, (1, 4, 9))


def test_each_process_reads_its_own_shard_files_and_together_they_cover_the_split(
    png_store, tmp_path):
  """18 examples in shards of 5 over 3 processes: process p trains on examples [6p, 6p + 6), one
  batch an epoch, from the files that hold them only (the others are deleted here)."""
  stored = np.concatenate([np.load(os.path.join(png_store, 'train', store.images_file(k)))
                           for k in range(4)])
  seen = []
  for process_index, files in enumerate(([0, 1], [1, 2], [2, 3])):
    own = tmp_path / f'process_{process_index}'
    shutil.copytree(png_store, own)
    for k in set(range(4)) - set(files):
      os.remove(own / 'train' / store.images_file(k))
    batches = store.train_batches(_store_config(str(own)), start_step=0, local_batch_size=6,
                                  process_index=process_index, process_count=3)
    epochs = [next(batches)['image'] for _ in range(2)]
    index = [int(np.flatnonzero((stored == image).all(axis=(1, 2, 3)))[0]) for image in epochs[0]]
    assert sorted(index) == list(range(6 * process_index, 6 * process_index + 6))
    assert sorted(map(bytes, epochs[1])) == sorted(map(bytes, epochs[0]))  # the same examples,
    assert [bytes(image) for image in epochs[1]] != [bytes(image) for image in epochs[0]]  # reordered
    seen += index
  assert sorted(seen) == list(range(18))


@pytest.mark.parametrize('process_count', [4, 8])
def test_eval_shards_are_disjoint_padded_and_covering(png_store, process_count):
  """6 images over 4 processes (shards of 1 or 2) or 8 (two processes have none): every process
  yields one batch, and the unmasked images are the split, once."""
  config = _store_config(png_store)
  seen, batch_counts = [], set()
  for process_index in range(process_count):
    batches = list(store.eval_batches(config, local_batch_size=3, process_index=process_index,
                                      process_count=process_count))
    batch_counts.add(len(batches))
    for batch in batches:
      assert batch['image'].shape == (3, CROP, CROP, 3)
      assert not batch['image'][~batch['mask']].any()  # padding is zeros
      seen += [image.tobytes() for image in batch['image'][batch['mask']]]
  assert batch_counts == {1}
  assert len(seen) == len(set(seen)) == 6


def test_training_from_a_store_never_imports_tensorflow(png_store):
  code = (
      'import sys\n'
      'from alexnet_jax import config_validation, data, defaults\n'
      'config = defaults.get_config()\n'
      f'config.dataset, config.resize_size, config.image_size = "store:{png_store}", {SIDE}, {CROP}\n'
      'config_validation.validate(config)\n'
      'info = data.get_dataset_info(config)\n'
      'kwargs = dict(local_batch_size=4, process_index=0, process_count=1)\n'
      'batch = next(data.train_batches(config, start_step=0, **kwargs))\n'
      'evaluation = next(data.eval_batches(config, **kwargs))\n'
      'print(info.num_train_examples, batch["image"].shape, "tensorflow" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['18', '(4,', f'{SIDE},', f'{SIDE},', '3)', 'False']


def _main(workdir, store_dir, *overrides):
  command = [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py',
             f'--workdir={workdir}', f'--config.dataset=store:{store_dir}',
             '--config.resize_size=72', '--config.model.width=0.125', '--config.batch_size=8',
             '--config.lr_schedule=constant', '--config.log_every_steps=2',
             '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4', *overrides]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.mark.slow
def test_a_run_from_a_store_resumed_in_a_new_process_matches_an_uninterrupted_one(tmp_path):
  source = write_png_folder(str(tmp_path / 'source'), 72, classes=2, train_per_class=10,
                            val_per_class=4)
  store_dir = str(tmp_path / 'store')
  store_writer.write(_folder_config(source), store_dir, resize_size=72)
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  _main(straight, store_dir, '--config.num_train_steps=6')  # over two epochs of 20 examples
  _main(resumed, store_dir, '--config.num_train_steps=4')
  assert 'resuming from' in _main(resumed, store_dir, '--config.num_train_steps=6').stderr
  from orbax import checkpoint as ocp  # pylint: disable=g-import-not-at-top
  params = []
  for workdir in (straight, resumed):
    manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
    assert manager.latest_step() == 6
    params.append(manager.restore(6)['params'])
  jax.tree.map(np.testing.assert_array_equal, *params)  # bit for bit
  evals = [[json.loads(line) for line in open(os.path.join(d, 'metrics.jsonl')) if '"eval"' in line]
           for d in (straight, resumed)]
  assert evals[0][-1]['loss'] == evals[1][-1]['loss'] and evals[0][-1]['num_examples'] == 8
