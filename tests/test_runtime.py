"""The process settings the commands make (alexnet_jax/runtime.py, alexnet_jax/cli.py), in fresh
interpreters."""

import os
import subprocess
import sys

import pytest

from alexnet_jax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTION = runtime.CPU_CONVOLUTION_OPTION


def _python(code: str, xla_flags: str = '', **env: str) -> subprocess.CompletedProcess:
  env = dict({k: v for k, v in os.environ.items() if k != 'TF_CPU_ALLOCATOR_USE_BFC'},
             XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu', **env)
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def test_a_command_adds_the_flag_and_the_allocator_setting_before_jax_starts():
  # A command's main runs after cli.run's settings; JAX's CPU backend, started there, has the
  # device count the flags ask for, so it read XLA_FLAGS after the flag was added.
  code = ('import os, jax\n'
          'from alexnet_jax import cli\n'
          'def main(argv):\n'
          '  print(os.environ["XLA_FLAGS"]); print(os.environ["TF_CPU_ALLOCATOR_USE_BFC"])\n'
          '  print(jax.device_count())\n'
          'cli.run(main)')
  result = _python(code, xla_flags='--xla_force_host_platform_device_count=2')
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['--xla_force_host_platform_device_count=2',
                                   runtime.CPU_CONVOLUTION_FLAG, 'true', '2']


def test_settings_the_user_made_win():
  result = _python('from alexnet_jax import runtime; import os; runtime.configure(); '
                   'print(os.environ["XLA_FLAGS"], os.environ["TF_CPU_ALLOCATOR_USE_BFC"])',
                   xla_flags=f'{OPTION}=', TF_CPU_ALLOCATOR_USE_BFC='false')
  assert result.stdout.split() == [f'{OPTION}=', 'false']


@pytest.mark.parametrize('configure', [False, True])
def test_only_configure_makes_settings(configure):
  code = ('import os; before = dict(os.environ)\n'
          'from alexnet_jax import runtime\n'
          + ('runtime.configure()\n' if configure else '') +
          'print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)))')
  result = _python(code)
  assert result.returncode == 0, result.stderr
  expected = "['TF_CPU_ALLOCATOR_USE_BFC', 'XLA_FLAGS']" if configure else '[]'
  assert result.stdout.strip() == expected


def test_with_configure_tensorflow_pools_its_host_memory():
  # TensorFlow's pooling CPU allocator is the only one with memory statistics. (Whether a build
  # pools without the setting depends on the build and the CPU; with it, every build does.)
  code = ('from alexnet_jax import runtime; runtime.configure()\n'
          'import tensorflow as tf; tf.constant(1)\n'
          'try:\n  tf.config.experimental.get_memory_info("CPU:0"); print("pool")\n'
          'except ValueError:\n  print("malloc")')
  result = _python(code)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['pool']
