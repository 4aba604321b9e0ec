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


def test_on_a_cpu_only_host_freed_memory_is_kept_for_the_next_step():
  # A jitted function whose temporaries (~200 MB) XLA allocates afresh at every call: without
  # keep_freed_memory each call faults them in page by page (~90,000 faults here); with it the
  # heap's blocks are reused (5,000-20,000, the rest being the result's and the runtime's).
  code = ('import resource, sys\n'
          'from alexnet_jax import runtime\n'
          'if sys.argv[1] == "keep":\n'
          '  assert runtime.computes_on_cpu_only()\n'
          '  runtime.configure()\n'
          'import jax, jax.numpy as jnp\n'
          'f = jax.jit(lambda x: jnp.sort(jnp.sin(x) * x)[::2].sum())\n'
          'x = jnp.ones((1 << 24,))\n'
          'f(x).block_until_ready()\n'
          'before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
          'for _ in range(5):\n'
          '  f(x).block_until_ready()\n'
          'print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)')
  faults = {}
  for mode in ('default', 'keep'):
    result = subprocess.run([sys.executable, '-c', code, mode], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert result.returncode == 0, result.stderr
    faults[mode] = int(result.stdout.split()[-1])
  assert faults['default'] > 40_000, faults  # 64 MB arrays: 16,384 pages each
  assert faults['keep'] < faults['default'] / 3, faults


@pytest.mark.parametrize('platforms, expected', [('cpu', True), ('cuda', False), ('cuda,cpu', False)])
def test_jax_platforms_decides_whether_the_run_is_on_the_cpu(platforms, expected, monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert runtime.computes_on_cpu_only() == expected


def test_without_jax_platforms_an_installed_accelerator_plugin_counts(monkeypatch, tmp_path):
  # The CUDA and ROCm plugins install modules of the `jax_plugins` namespace package.
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  os.makedirs(tmp_path / 'jax_plugins' / 'xla_cuda12')
  (tmp_path / 'jax_plugins' / 'xla_cuda12' / '__init__.py').write_text('')
  monkeypatch.syspath_prepend(str(tmp_path))
  assert not runtime.computes_on_cpu_only()
