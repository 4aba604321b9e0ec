"""Test-wide settings. XLA reads its flags once, at the first JAX import, so they are set here,
before any test module imports JAX: 8 CPU devices stand in for 8 accelerators."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # never let TensorFlow take a GPU in tests
# Many tests (and the training processes they start) compile the same small programs: share the
# compiled executables through JAX's persistent cache, fresh for each test session.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='alexnet_jax_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Folder datasets remember their decode checks under $XDG_CACHE_HOME: a fresh one per test session,
# not the user's ~/.cache.
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='alexnet_jax_cache_home_')
