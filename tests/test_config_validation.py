"""Config checks: every bad value is one line naming the key and what it allows, before JAX compiles."""

import os
import re
import subprocess
import sys

import pytest

from alexnet_jax import config_validation
from alexnet_jax import defaults
from configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_with(**overrides):
  """The smoke config with `overrides`; dotted keys are written `model__width`."""
  config = smoke.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split('__')
    target = config
    for parent in parents:
      target = target[parent]
    with target.ignore_type():
      target[leaf] = value
  return config


def test_the_shipped_configs_are_valid(tmp_path):
  config_validation.validate(defaults.get_config())
  config_validation.validate(smoke.get_config())
  config_validation.validate(config_with(dataset=f'folder:{tmp_path}'))
  config_validation.validate_devices(defaults.get_config(), device_count=8, process_count=2)


@pytest.mark.parametrize('overrides, message', [
    # Wrong types.
    ({'batch_size': '64'}, "config.batch_size='64' is invalid: expected an integer > 0"),
    ({'learning_rate': '0.1'}, "config.learning_rate='0.1' is invalid: expected a number > 0"),
    ({'model__width': 'wide'}, "config.model.width='wide' is invalid: expected a number > 0"),
    ({'model__lrn': 1}, 'config.model.lrn=1 is invalid: expected True or False'),
    ({'step_epochs': ('abc',)},
     "config.step_epochs=('abc',) is invalid: expected a tuple of epochs > 0, e.g. (30, 60, 80)"),
    # Values out of range.
    ({'model__dropout_rate': 1.0},
     'config.model.dropout_rate=1.0 is invalid: expected a number in [0, 1)'),
    ({'model__dropout_rate': -0.1},
     'config.model.dropout_rate=-0.1 is invalid: expected a number in [0, 1)'),
    ({'device_resize_scale': 0.5},
     'config.device_resize_scale=0.5 is invalid: expected 0, or a number >= 1'),
    ({'model__width': 0.0}, 'config.model.width=0.0 is invalid: expected a number > 0'),
    ({'model__width': -1.0}, 'config.model.width=-1.0 is invalid: expected a number > 0'),
    ({'eval_crops': 5}, 'config.eval_crops=5 is invalid: expected 1 or 10'),
    ({'momentum': 1.0}, 'config.momentum=1.0 is invalid: expected a number in [0, 1)'),
    # Unknown names.
    ({'optimizer': 'rmsprop'},
     "config.optimizer='rmsprop' is invalid: expected one of 'sgd', 'lars', 'adamw'"),
    ({'lr_schedule': 'linear'},
     "config.lr_schedule='linear' is invalid: expected one of 'plateau', 'step', 'cosine', 'constant'"),
    ({'model__activation': 'gelu'},
     "config.model.activation='gelu' is invalid: expected one of 'relu', 'tanh'"),
    ({'model__variant': 'vgg'},
     "config.model.variant='vgg' is invalid: expected one of 'paper', 'torchvision'"),
    ({'dataset': 'imagenett2012'},
     "config.dataset='imagenett2012' is invalid: expected a TFDS name (e.g. 'imagenet2012'; no builder "
     "'imagenett2012' is registered or prepared in"),
    ({'dataset': 'folder:/no/such/dir'},
     "config.dataset='folder:/no/such/dir': '/no/such/dir' is not a directory"),
    # Sizes the network cannot take.
    ({'image_size': 66, 'resize_size': 66},
     "config.image_size=66 is too small for model.variant='paper' with overlapping_pool=True and a "
     '11x11 stride 4 conv1: the three max-pools need at least 67 (model.conv1_kernel=5, '
     'conv1_stride=1 take 19)'),
    ({'image_size': 18, 'resize_size': 18, 'model__conv1_kernel': 5, 'model__conv1_stride': 1},
     "config.image_size=18 is too small for model.variant='paper' with overlapping_pool=True and a "
     '5x5 stride 1 conv1: the three max-pools need at least 19'),
    ({'model__conv1_stride': -1},
     "config.model.conv1_stride=-1 is invalid: expected an integer >= 1, or 0 for the layout's 4"),
    ({'model__conv1_kernel': 5.0},
     "config.model.conv1_kernel=5.0 is invalid: expected an integer >= 1, or 0 for the layout's 11"),
    ({'image_size': 60, 'resize_size': 60, 'model__variant': 'torchvision'},
     "config.image_size=60 is too small for model.variant='torchvision'"),
    ({'resize_size': 64}, 'config.resize_size=64 is smaller than config.image_size=67'),
])
def test_each_invalid_value_is_one_line_naming_the_key_and_what_it_allows(overrides, message):
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config_with(**overrides))
  assert str(error.value).startswith(message)
  assert '\n' not in str(error.value)


def test_a_missing_key_points_to_the_default_config():
  config = smoke.get_config()
  del config['model']['dtype']
  with pytest.raises(config_validation.ConfigError, match=r'config\.model\.dtype is missing; start '
                                                          r'from alexnet_jax\.defaults\.get_config'):
    config_validation.validate(config)


@pytest.mark.parametrize('key, batch, devices, processes, message', [
    ('batch_size', 30, 8, 1, 'config.batch_size=30 does not split evenly over 8 devices: use a multiple '
                             'of 8 (e.g. 24 or 32)'),
    ('batch_size', 4, 8, 1, 'config.batch_size=4 does not split evenly over 8 devices: use a multiple of '
                            '8 (e.g. 8)'),
    ('batch_size', 32, 2, 3, 'config.batch_size=32 does not split evenly over 3 processes'),
    ('eval_batch_size', 20, 8, 1, 'config.eval_batch_size=20 does not split evenly over 8 devices'),
])
def test_batches_must_split_evenly_over_devices_and_processes(key, batch, devices, processes, message):
  config = config_with(**{key: batch})
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate_devices(config, device_count=devices, process_count=processes)
  assert str(error.value).startswith(message)


@pytest.mark.parametrize('overrides, devices, processes, message', [
    ({'model__groups': 1}, 8, 1, "needs model.variant='paper' and model.groups=2, got"),
    ({'optimizer': 'lars'}, 8, 1, "config.optimizer='lars' scales each layer"),
    ({}, 3, 1, 'model_parallel=2 pairs up devices; 3 devices is odd.'),
    ({}, 6, 2, 'each process has 3 devices. Use an even number per process.'),
    ({'batch_size': 12}, 16, 1, 'config.batch_size=12 does not split evenly over 8 device pairs'),
])
def test_model_parallel_setups_are_config_errors(overrides, devices, processes, message):
  config = config_with(model_parallel=2, **overrides)
  with pytest.raises(config_validation.ConfigError, match=re.escape(message)):
    config_validation.validate_devices(config, device_count=devices, process_count=processes)


def test_model_parallel_batches_split_over_device_pairs():
  # 12 images over 8 devices in 4 pairs: 3 per pair, which model_parallel=2 needs, not 12 / 8.
  config_validation.validate_devices(config_with(model_parallel=2, batch_size=12), device_count=8)


def test_a_synthetic_config_is_validated_without_tensorflow():
  # A fresh process: this one may have imported TensorFlow for other tests.
  check = ('import sys; from configs import smoke; from alexnet_jax import config_validation; '
           'config_validation.validate(smoke.get_config()); '
           'print(sorted(m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', check], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'


@pytest.mark.parametrize('flag, message', [
    ('--config.modle.width=1', 'error: --config.modle.width: the config has no key \'modle\'. Did you '
                               'mean "model" instead of "modle"? Every key is set in configs/default.py'),
    ('--config.model.width=abc', "error: flag --config.model.width=abc: could not convert string to "
                                 "float: 'abc'"),
    ('--config.model.dropout_rate=1.0', 'error: config.model.dropout_rate=1.0 is invalid: expected a '
                                        'number in [0, 1)'),
    ('--config=configs/fashion_mnist.py:typo', 'error: flag --config=configs/fashion_mnist.py:typo: '
     'Error whilst parsing config file: ValueError: configs/fashion_mnist.py:typo: no such adaptation'),
])
def test_main_reports_a_bad_flag_in_one_line_and_exits_2(tmp_path, flag, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py', f'--workdir={workdir}',
       flag], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [errors[0]] and errors[0].startswith(message), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()  # nothing ran
