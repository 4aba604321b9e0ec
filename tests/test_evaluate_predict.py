"""alexnet_jax.evaluate on a trained workdir, alexnet_jax.predict on a folder dataset's model."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import input_images
from alexnet_jax import convert, data, evaluate, predict, train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import pixels
from configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config() -> ml_collections.ConfigDict:
  config = smoke.get_config()
  config.model.width = 0.125
  config.batch_size = 32
  config.synthetic_train_examples = 256
  config.synthetic_eval_examples = 80  # not a multiple of the batch: the last one is padded
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  return config


def read_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


def write_folder_workdir(images_dir: str, workdir: str) -> tuple[str, str]:
  """(workdir, root): a randomly initialized paper-layout model of a new 6-class folder dataset."""
  root = input_images.write_folder_dataset(images_dir, classes=6, train_per_class=1,
                                           val_per_class=1)
  config = tiny_config()
  config.dataset = f'folder:{root}'
  config.num_classes = 6
  config.resize_size = 76
  convert.write_workdir(workdir, config)
  return workdir, root


@pytest.fixture(scope='module')
def folder_workdir(tmp_path_factory):
  return write_folder_workdir(str(tmp_path_factory.mktemp('images')),
                              str(tmp_path_factory.mktemp('folder_model')))


def test_evaluate_reproduces_the_evals_of_training(trained_workdir):
  trained = {r['step']: r for r in read_records(trained_workdir) if r['split'] == 'eval'}
  assert sorted(trained) == [4, 8]
  for checkpoint, step in (('latest', 8), ('4', 4)):
    record = evaluate.evaluate_workdir(trained_workdir, checkpoint)
    assert record['step'] == step and record['num_examples'] == 80
    for key in ('top1_err', 'top5_err', 'loss'):
      np.testing.assert_allclose(record[key], trained[step][key], rtol=1e-6, err_msg=key)

  best = evaluate.evaluate_workdir(trained_workdir, 'best')
  assert best['top1_err'] == pytest.approx(min(r['top1_err'] for r in trained.values()), abs=1e-6)
  assert best['top1_err'] == pytest.approx(trained[best['step']]['top1_err'], abs=1e-6)

  appended = read_records(trained_workdir)[-3:]
  assert [(r['split'], r['checkpoint'], r['eval_crops']) for r in appended] == [
      ('eval', 'latest', 1), ('eval', '4', 1), ('eval', 'best', 1)]


def test_evaluate_with_ten_crops_averages_the_crops_and_their_mirrors(trained_workdir):
  ten = evaluate.evaluate_workdir(trained_workdir, 'latest', eval_crops=10)
  assert ten['eval_crops'] == 10 and read_records(trained_workdir)[-1]['eval_crops'] == 10
  # Synthetic data puts the image itself in all five crop slots; the device adds five mirrors, so
  # the ten softmaxes average to the mean of the image's and its mirror's.
  loaded = workdir_lib.load(trained_workdir, 'latest')
  images = np.concatenate([b['image'][b['mask']] for b in data.eval_batches(
      loaded.config, local_batch_size=40, process_index=0, process_count=1)])
  labels = np.concatenate([b['label'][b['mask']] for b in data.eval_batches(
      loaded.config, local_batch_size=40, process_index=0, process_count=1)])
  probs = [jax.nn.softmax(loaded.model.apply({'params': loaded.params}, x)) for x in
           (images, images[:, :, ::-1])]
  mean_probs = np.asarray((probs[0] + probs[1]) / 2)
  assert ten['num_examples'] == len(labels) == 80
  assert ten['loss'] == pytest.approx(-np.log(mean_probs[np.arange(80), labels]).mean(), rel=1e-4)
  assert ten['top1_err'] == pytest.approx(np.mean(mean_probs.argmax(-1) != labels), abs=1e-6)


def test_evaluate_names_what_is_wrong(trained_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'No checkpoint of step 5 .*\[4, 8\]'):
    evaluate.evaluate_workdir(trained_workdir, '5')
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    evaluate.evaluate_workdir(str(tmp_path))
  with pytest.raises(ValueError, match='config.eval_crops=3'):
    evaluate.evaluate_workdir(trained_workdir, eval_crops=3)


def _drop_dac_override() -> list[str]:
  """A command prefix under which even root obeys file permissions (root ignores them otherwise)."""
  if os.geteuid() != 0:
    return []
  caps = '-dac_override,-dac_read_search'
  return ['setpriv', f'--bounding-set={caps}', f'--inh-caps={caps}']


def test_evaluate_never_changes_the_workdir_it_reads(trained_workdir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, workdir)
  # A checkpoint the run is writing right now, named as Orbax names it until it is complete.
  # evaluate opened the checkpoints with a read-write manager, which deleted it.
  in_flight = os.path.join(workdir, 'checkpoints', '12.orbax-checkpoint-tmp-1764790000000000')
  os.makedirs(in_flight)
  with open(os.path.join(in_flight, 'part'), 'w') as f:
    f.write('being written')
  training_events = sorted(os.listdir(os.path.join(workdir, 'tensorboard', 'eval')))
  shutil.rmtree(os.path.join(workdir, 'tensorboard', 'evaluate_1crop'), ignore_errors=True)
  steps = [evaluate.evaluate_workdir(workdir, checkpoint)['step']
           for checkpoint in ('latest', 'best', '4')]
  assert os.listdir(in_flight) == ['part']
  # Its records are a TensorBoard run of their own, not points on training's eval curves.
  assert sorted(os.listdir(os.path.join(workdir, 'tensorboard', 'eval'))) == training_events
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard', 'evaluate_1crop'))
  accumulator.Reload()
  assert [e.step for e in accumulator.Scalars('top1_err')] == steps

  # A read-only workdir is evaluated too: the result is printed, with a warning that it could
  # not be recorded (it was an unexpected-error traceback from opening the checkpoints).
  before = read_records(workdir)
  for directory, _, _ in os.walk(workdir):
    os.chmod(directory, 0o555)
  try:
    result = subprocess.run([*_drop_dac_override(), sys.executable, '-m', 'alexnet_jax.evaluate',
                             f'--workdir={workdir}'],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
  finally:
    for directory, _, _ in os.walk(workdir):
      os.chmod(directory, 0o755)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{workdir}: latest checkpoint (step 8), 80 images, 1 crop(s): top-1 error' in result.stdout
  assert 'could not record the result in' in result.stderr
  assert read_records(workdir) == before and os.listdir(in_flight) == ['part']
  assert 'orbax' not in result.stderr.lower()  # quiet: Orbax's INFO lines stay off the console


def test_evaluate_reads_no_training_image(tmp_path):
  workdir, root = write_folder_workdir(str(tmp_path / 'images'), str(tmp_path / 'model'))
  for image in (tmp_path / 'images' / 'train').rglob('*.*'):
    image.unlink()  # the class folders stay: they name the classes
  assert evaluate.evaluate_workdir(workdir)['num_examples'] == 6
  assert sorted(os.listdir(os.path.join(root, 'train'))) == [f'class_{k}' for k in range(6)]


def test_predict_preprocesses_as_eval_does(folder_workdir):
  workdir, root = folder_workdir
  loaded = workdir_lib.load(workdir)
  # The eval split in order: class_0's image first.
  batch = next(data.eval_batches(loaded.config, local_batch_size=8, process_index=0,
                                 process_count=1))
  inputs = pixels.model_input({'image': batch['image'][:1]}, loaded.config.augment)
  logits = loaded.model.apply({'params': loaded.params}, inputs, train=False)
  expected = np.asarray(jax.nn.softmax(logits))[0]

  path = os.path.join(root, 'val', 'class_0', '0_0.jpg')
  [top] = predict.predict(loaded, [path])
  names = [f'class_{k}' for k in range(6)]
  assert [name for name, _ in top] == [names[i] for i in np.argsort(-expected)[:5]]
  np.testing.assert_allclose([p for _, p in top], np.sort(expected)[::-1][:5], rtol=1e-5)


def test_predict_command_prints_the_top_five(folder_workdir):
  workdir, root = folder_workdir
  images = [os.path.join(root, 'val', 'class_1', '1_0.jpg'),
            os.path.join(root, 'train', 'class_2', '2_0.jpg')]
  result = subprocess.run([sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={workdir}',
                           '--eval_crops=10', *images],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 2 * 6 and lines[0] == images[0] and lines[6] == images[1]
  for block in (lines[1:6], lines[7:12]):
    probabilities = [float(line.split()[0]) for line in block]
    assert all(line.split()[1].startswith('class_') for line in block)
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-3


def test_predict_names_an_unreadable_image(folder_workdir, tmp_path):
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not an image')
  loaded = workdir_lib.load(folder_workdir[0])
  with pytest.raises(ValueError, match='broken.jpg: cannot be read as an image: it is not a JPEG, '
                     'PNG, GIF or BMP file that decodes.$'):  # not TensorFlow's op internals
    predict.predict(loaded, [str(broken)])
  with pytest.raises(FileNotFoundError, match='missing.jpg: cannot be read: no such file'):
    predict.predict(loaded, [str(tmp_path / 'missing.jpg')])


def test_folder_class_names_need_only_the_class_folders(tmp_path):
  for name in ('b', 'a'):
    (tmp_path / 'train' / name).mkdir(parents=True)  # no images, no validation split
  config = ml_collections.ConfigDict({'dataset': f'folder:{tmp_path}', 'num_classes': 2})
  assert data.readable_class_names(config) == ['a', 'b']
  config.dataset = f'folder:{tmp_path / "gone"}'  # the model outlives its data: numbered classes
  assert data.readable_class_names(config) == ['class 0', 'class 1']


def test_imagenet_classes_get_readable_names():
  config = ml_collections.ConfigDict({'dataset': 'imagenet2012', 'data_dir': None,
                                      'num_classes': 1000})
  names = data.readable_class_names(config)  # from the names TFDS ships; no ImageNet data needed
  assert len(names) == 1000
  assert names[0] == 'tench, Tinca tinca (n01440764)'
  assert names[-1].endswith('(n15075141)')
  # A model whose head does not match the dataset's classes gets indices, not wrong names.
  config.num_classes = 10
  assert data.readable_class_names(config) == [f'class {i}' for i in range(10)]
