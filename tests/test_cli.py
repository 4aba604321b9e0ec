"""The commands as a new user meets them: each failure is one `error:` line naming the problem and
the fix, with the documented exit code and no traceback; a failed start leaves no workdir behind;
other libraries' chatter stays off the console unless --verbose. Real commands in real processes."""

import os
import subprocess
import sys

import pytest

import input_images
from alexnet_jax import convert
from configs import smoke

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_INPUT, FAILED = 2, 1  # alexnet_jax.errors.BAD_INPUT, FAILED
SMOKE = ('--config=configs/smoke.py', '--config.num_train_steps=2', '--config.log_every_steps=1',
         '--config.eval_every_steps=2', '--config.synthetic_eval_examples=64')


def command(*args: str) -> subprocess.CompletedProcess:
  """`python -m ARGS` from the repository root, on 2 CPU devices."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def error_line(result: subprocess.CompletedProcess, exit_code: int) -> str:
  """The one `error:` line of a command that failed with `exit_code`, and no traceback."""
  output = result.stdout + result.stderr
  assert result.returncode == exit_code, output[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in output, output[-3000:]
  return lines[0]


def drop_dac_override() -> list[str]:
  """A command prefix under which even root obeys file permissions."""
  if os.geteuid() != 0:
    return []
  caps = '-dac_override,-dac_read_search'
  return ['setpriv', f'--bounding-set={caps}', f'--inh-caps={caps}']


def test_the_papers_recipe_before_imagenet_is_prepared(tmp_path):
  workdir = tmp_path / 'run'
  result = command('alexnet_jax.main', '--config=configs/default.py', f'--workdir={workdir}',
                   f'--config.data_dir={tmp_path / "tfds"}')
  line = error_line(result, BAD_INPUT)  # was a 30-line traceback, exit 1
  assert "error: ImageNet ('imagenet2012') is not prepared" in line
  assert (f'`python -m alexnet_jax.prepare --dataset=imagenet2012 --manual_dir=DIR '
          f'--data_dir={tmp_path / "tfds"}`') in line
  assert not workdir.exists()  # the failed start left no empty workdir


def test_workdirs_that_cannot_be_used(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  line = error_line(command('alexnet_jax.main', *SMOKE, f'--workdir={a_file}'), BAD_INPUT)
  assert f'--workdir={a_file} is a file, or lies under one, not a directory' in line

  read_only = tmp_path / 'read_only'
  read_only.mkdir(mode=0o555)
  result = subprocess.run(
      [*drop_dac_override(), sys.executable, '-m', 'alexnet_jax.main', *SMOKE,
       f'--workdir={read_only}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  line = error_line(result, BAD_INPUT)
  assert f'--workdir={read_only} is not writable (Permission denied)' in line

  # Docs offered gs:// workdirs, which were written with local file calls.
  line = error_line(command('alexnet_jax.main', *SMOKE, '--workdir=gs://bucket/run'), BAD_INPUT)
  assert 'a workdir is a local path' in line and 'gcsfuse' in line


def test_folder_datasets_that_cannot_train(tmp_path):
  root = input_images.write_folder_dataset(str(tmp_path / 'images'), classes=2,
                                           train_per_class=3, val_per_class=1)
  folder = ('--config.dataset=folder:' + root, '--config.image_size=67', '--config.resize_size=76')
  workdir = tmp_path / 'run'

  line = error_line(command('alexnet_jax.main', *SMOKE, *folder, f'--workdir={workdir}',
                            '--config.batch_size=8'), BAD_INPUT)
  assert 'process 0 has 6 examples, fewer than its share of one batch (8)' in line
  assert 'set config.batch_size to at most 6' in line
  assert not workdir.exists()

  with open(os.path.join(root, 'train', 'class_0', 'broken.jpg'), 'wb') as f:
    f.write(b'not a JPEG')
  line = error_line(command('alexnet_jax.main', *SMOKE, *folder, f'--workdir={workdir}',
                            '--config.batch_size=2', '--config.strict_data=True'), BAD_INPUT)
  assert 'cannot be decoded: ' + os.path.join(root, 'train', 'class_0', 'broken.jpg') in line

  os.rename(os.path.join(root, 'val'), os.path.join(root, 'holdout'))
  line = error_line(command('alexnet_jax.main', *SMOKE, *folder, f'--workdir={workdir}',
                            '--config.batch_size=2'), BAD_INPUT)
  assert "no folder for split 'validation'" in line
  assert not workdir.exists()


def test_predict_on_a_file_that_is_not_an_image(tmp_path):
  root = input_images.write_folder_dataset(str(tmp_path / 'images'), classes=2,
                                           train_per_class=1, val_per_class=1)
  config = smoke.get_config()
  config.model.width, config.num_classes, config.dataset = 0.125, 2, f'folder:{root}'
  convert.write_workdir(str(tmp_path / 'model'), config)
  text = tmp_path / 'notes.jpg'
  text.write_text('not an image')
  result = command('alexnet_jax.predict', f'--workdir={tmp_path / "model"}', str(text))
  line = error_line(result, BAD_INPUT)
  assert line == (f'error: {text}: cannot be read as an image: it is not a JPEG, PNG, GIF or BMP '
                  'file that decodes.')  # was TensorFlow's '{{function_node __wrapped__...'


def test_an_unexpected_error_is_one_line_naming_its_traceback_file(tmp_path):
  point = tmp_path / 'sweep' / 'baseline'
  point.mkdir(parents=True)
  (point / 'metrics.jsonl').write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
  (point / 'sweep_point.json').write_text('{"overrides": ')  # cut short
  line = error_line(command('alexnet_jax.report', str(tmp_path / 'sweep')), FAILED)
  assert line.startswith('error: JSONDecodeError: Expecting value')
  traceback_file = line.split('the traceback is in ')[1].rstrip(')')
  with open(traceback_file) as f:
    assert 'Traceback (most recent call last)' in f.read()
  os.remove(traceback_file)
  verbose = command('alexnet_jax.report', str(tmp_path / 'sweep'), '--verbose')
  assert verbose.returncode == FAILED and 'Traceback (most recent call last)' in verbose.stderr


def test_the_launchers_fail_in_one_line(tmp_path):
  line = error_line(command('launch.sweep', '--config=configs/smoke.py',
                            f'--sweep={tmp_path / "missing.py"}', f'--workdir={tmp_path}'),
                    BAD_INPUT)
  assert line == f'error: --sweep={tmp_path / "missing.py"}: no such file'
  line = error_line(command('launch.sweep', '--config=configs/missing.py:arg',
                            '--sweep=configs/sweeps/study.py', f'--workdir={tmp_path}'), BAD_INPUT)
  assert line == 'error: --config=configs/missing.py:arg: no such file configs/missing.py'
  line = error_line(command('launch.local', '--', '--config=configs/smoke.py',
                            '--heartbeat_timeout_seconds=soon'), BAD_INPUT)
  assert line == 'error: --heartbeat_timeout_seconds=soon: expected a whole number of seconds'


def test_quiet_by_default_and_verbose_on_request(tmp_path):
  workdir = tmp_path / 'run'
  quiet = command('alexnet_jax.main', *SMOKE, f'--workdir={workdir}')
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert 'step 2/2' in quiet.stderr and 'eval at step 2' in quiet.stderr
  assert "Unable to initialize backend 'tpu'" not in quiet.stderr
  assert 'checkpoint_manager.py' not in quiet.stderr  # Orbax's INFO lines
  # A rerun of the finished run says so, and with --verbose the libraries speak again.
  verbose = command('alexnet_jax.main', *SMOKE, f'--workdir={workdir}', '--verbose')
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert f'{workdir} finished already: its latest checkpoint is of step 2' in verbose.stderr
  assert "Unable to initialize backend 'tpu'" in verbose.stderr
  assert 'checkpoint_manager.py' in verbose.stderr
