"""`prepare --downsample_to` on a folder dataset, and the class folder names of a copy.

The TFDS path (a copy of the miniature ImageNet that `prepare` builds) is in tests/test_prepare.py.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from alexnet_jax import defaults
from alexnet_jax.data import downsample
from alexnet_jax.data import folders
from alexnet_jax.data import resumable
from alexnet_jax.data import sources
import input_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_class_dirs_sort_back_into_label_order():
  assert downsample.class_dirs(['n01', 'n02', 'n10']) == ['n01', 'n02', 'n10']
  assert downsample.class_dirs(['dog', 'cat']) == ['0_dog', '1_cat']
  names = [str(label) for label in range(12)]  # '10' sorts before '2'
  folders = downsample.class_dirs(names)
  assert folders[2] == '02_2' and sorted(folders) == folders
  assert downsample.class_dirs(['a/b', 'c']) == ['a_b', 'c']


def test_prepare_downsamples_a_folder_dataset(tmp_path):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), size=(48, 64))
  out = tmp_path / 'copy'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.prepare', f'--dataset=folder:{source}',
       f'--downsample_to={out}', '--shorter_side=40'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  files = sorted(p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file()
                 and p.name != downsample.RECORD)
  assert len(files) == 3 * (6 + 2)
  record = json.loads((out / downsample.RECORD).read_text())
  assert record['train']['complete'] and record['train']['images'] == 18
  assert record['val']['settings']['shorter_side'] == 40
  assert all(f.split('/')[0] in ('train', 'val') and f.endswith('.JPEG') for f in files)
  for f in files:
    with Image.open(out / f) as image:
      assert min(image.size) == 40 and max(image.size) == 53  # 64 * 40 / 48, rounded
  config = defaults.get_config()
  config.dataset = f'folder:{out}'
  info = sources.get_dataset_info(config)
  assert info.class_names == ('class_0', 'class_1', 'class_2')
  assert (info.num_train_examples, info.num_eval_examples) == (18, 6)


def test_a_png_small_enough_stays_a_png(tmp_path):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), classes=1, size=(48, 64))
  config = defaults.get_config()
  config.dataset = f'folder:{source}'
  out = tmp_path / 'copy'
  assert downsample.downsample(config, str(out), shorter_side=48) == {'train': 6, 'validation': 2}
  pngs = list(out.rglob('*.png'))
  assert len(pngs) == 1  # the one PNG of the training split, its bytes as they were
  originals = {p.read_bytes() for p in (tmp_path / 'source' / 'train').rglob('*.png')}
  assert pngs[0].read_bytes() in originals


def test_small_images_keep_their_bytes_and_other_formats_become_pngs():
  array = input_images.image_array(np.random.default_rng(3), 20, 30)
  for image_format, kept, is_jpeg in (('JPEG', True, True), ('PNG', True, False),
                                      ('BMP', False, False)):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format)
    data, jpeg = downsample.downsampled(tf.constant(buffer.getvalue()), 24, 95)
    assert bool(jpeg) == is_jpeg
    assert (data.numpy() == buffer.getvalue()) == kept
    if not kept:  # lossless
      np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data.numpy()))), array)
  data, jpeg = downsample.downsampled(tf.constant(input_images.encode(array, 'PNG')), 10, 95)
  assert bool(jpeg) and Image.open(io.BytesIO(data.numpy())).size == (15, 10)


def _copy_files(root) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*')
          if p.is_file() and p.name != downsample.RECORD}


def test_an_interrupted_copy_resumes_where_it_stopped(tmp_path, monkeypatch):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), size=(48, 64))
  config = defaults.get_config()
  config.dataset = f'folder:{source}'
  uninterrupted = tmp_path / 'uninterrupted'
  downsample.downsample(config, str(uninterrupted), shorter_side=40)

  images_written = []
  write = resumable.write_atomically
  replace = os.replace

  def stop(*_):
    raise KeyboardInterrupt

  def write_then_stop(path, data):
    if os.path.basename(path) != downsample.RECORD:
      if len(images_written) == 5:  # the copy is stopped in the middle of the training split,
        monkeypatch.setattr(downsample.os, 'replace', stop)  # while it writes the sixth image
      images_written.append(path)
    write(path, data)

  monkeypatch.setattr(resumable, 'write_atomically', write_then_stop)
  out = tmp_path / 'copy'
  with pytest.raises(KeyboardInterrupt):
    downsample.downsample(config, str(out), shorter_side=40)
  monkeypatch.setattr(downsample.os, 'replace', replace)
  # Nothing looks like a dataset yet: five images and the sixth's unfinished write wait in
  # train.partial/.
  assert not (out / 'train').exists() and len(_copy_files(out / 'train.partial')) == 6
  assert not json.loads((out / downsample.RECORD).read_text())['train']['complete']
  config.dataset = f'folder:{out}'
  with pytest.raises(FileNotFoundError, match='no folder for split'):
    sources.get_dataset_info(config)

  config.dataset = f'folder:{source}'
  # The sources of the five images written are not read again: removed (this process keeps its
  # listing of the folder), a read of them would fail.
  source_paths, _ = folders.images(source, 'train', strict=False)
  for name in _copy_files(out / 'train.partial'):
    if not name.endswith('.tmp'):  # the sixth image's unfinished write: it is written again
      os.remove(source_paths[int(os.path.basename(name).split('.')[0])])
  images_written.clear()
  monkeypatch.setattr(resumable, 'write_atomically',
                      lambda path, data: images_written.append(path) or write(path, data))
  assert downsample.downsample(config, str(out), shorter_side=40) == {'train': 18, 'validation': 6}
  assert len([p for p in images_written if os.path.basename(p) != downsample.RECORD]) == 13 + 6
  # The same files, byte for byte, and no other: writing the sixth image again replaced its
  # unfinished write.
  assert _copy_files(out) == _copy_files(uninterrupted)


def test_a_copy_stopped_as_a_split_is_renamed_completes_on_the_next_run(tmp_path, monkeypatch):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), classes=1, size=(48, 64))
  config = defaults.get_config()
  config.dataset = f'folder:{source}'
  uninterrupted = tmp_path / 'uninterrupted'
  downsample.downsample(config, str(uninterrupted), shorter_side=40)
  rename = os.rename

  def stop_after_renaming(source_dir, target_dir):
    rename(source_dir, target_dir)
    raise KeyboardInterrupt  # the training split is in place, and nothing after it ran

  monkeypatch.setattr(downsample.os, 'rename', stop_after_renaming)
  out = tmp_path / 'copy'
  with pytest.raises(KeyboardInterrupt):
    downsample.downsample(config, str(out), shorter_side=40)
  monkeypatch.setattr(downsample.os, 'rename', rename)
  assert downsample.downsample(config, str(out), shorter_side=40) == {'train': 6, 'validation': 2}
  assert _copy_files(out) == _copy_files(uninterrupted)
  assert all(split['complete'] for split in json.loads((out / downsample.RECORD).read_text()).values())


def test_a_folder_not_made_by_downsample_is_refused(tmp_path):
  source = input_images.write_folder_dataset(str(tmp_path / 'source'), classes=1, size=(48, 64))
  config = defaults.get_config()
  config.dataset = f'folder:{source}'
  (tmp_path / 'copy' / 'val').mkdir(parents=True)
  (tmp_path / 'copy' / 'val' / 'notes.txt').write_text('mine\n')
  with pytest.raises(FileExistsError, match='val is not empty'):
    downsample.downsample(config, str(tmp_path / 'copy'), shorter_side=40)
