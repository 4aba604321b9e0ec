"""Test-wide settings. XLA reads its flags once, at the first JAX import, so they are set here,
before any test module imports JAX: 8 CPU devices stand in for 8 accelerators."""

import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # never let TensorFlow take a GPU in tests
# Folders made for this test session only, removed when it ends.
_SESSION_DIRS = []
# Many tests (and the training processes they start) compile the same small programs: share the
# compiled executables through JAX's persistent cache, fresh for each test session.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _SESSION_DIRS.append(tempfile.mkdtemp(prefix='alexnet_jax_xla_cache_'))
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _SESSION_DIRS[-1]
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Folder datasets remember their decode checks under $XDG_CACHE_HOME: a fresh one per test session,
# not the user's ~/.cache.
_SESSION_DIRS.append(tempfile.mkdtemp(prefix='alexnet_jax_cache_home_'))
os.environ['XDG_CACHE_HOME'] = _SESSION_DIRS[-1]


def pytest_sessionfinish(session, exitstatus) -> None:  # pylint: disable=unused-argument
  for directory in _SESSION_DIRS:
    shutil.rmtree(directory, ignore_errors=True)
