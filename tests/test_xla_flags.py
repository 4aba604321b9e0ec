"""The XLA flag and TensorFlow allocator setting that importing alexnet_jax adds
(alexnet_jax/__init__.py), in fresh interpreters."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def _python(code: str, xla_flags: str = '') -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def test_import_adds_the_flag_before_jax_starts():
  result = _python('import os, alexnet_jax, jax; jax.numpy.zeros(1); print(os.environ["XLA_FLAGS"])',
                   xla_flags='--xla_force_host_platform_device_count=2')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['--xla_force_host_platform_device_count=2',
                                   f'{FLAG}=-individual_convolution']
  assert 'UserWarning' not in result.stderr


def test_a_flag_the_user_set_wins():
  result = _python('import os, alexnet_jax; print(os.environ["XLA_FLAGS"])', xla_flags=f'{FLAG}=')
  assert result.stdout.split() == [f'{FLAG}=']


@pytest.mark.parametrize('user_flag,warns', [('', True), (f'{FLAG}=', False)])
def test_importing_after_jax_started_warns_that_the_flag_came_too_late(user_flag, warns):
  result = _python('import jax; jax.numpy.zeros(1); import alexnet_jax', xla_flags=user_flag)
  assert result.returncode == 0, result.stderr
  assert ('imported after JAX started its CPU backend' in result.stderr) == warns


# TensorFlow's pooling CPU allocator is the only one with memory statistics.
_ALLOCATOR_STATS = ('import alexnet_jax, tensorflow as tf; tf.constant(1)\n'
                    'try:\n  tf.config.experimental.get_memory_info("CPU:0"); print("pool")\n'
                    'except ValueError:\n  print("malloc")')


def test_import_makes_tensorflow_pool_its_host_memory_unless_the_user_chose():
  # Two fresh interpreters at once: the package's setting, and a user's own that wins. Neither
  # inherits the setting that importing alexnet_jax into this process made.
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPU_ALLOCATOR_USE_BFC'}
  runs = [subprocess.Popen([sys.executable, '-c', _ALLOCATOR_STATS], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=dict(env, JAX_PLATFORMS='cpu', **extra))
          for extra in ({}, {'TF_CPU_ALLOCATOR_USE_BFC': 'false'})]
  outputs = [run.communicate(timeout=120) for run in runs]
  assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
  assert [out.split() for out, _ in outputs] == [['pool'], ['malloc']]
