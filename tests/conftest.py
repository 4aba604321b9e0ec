"""Test-wide settings. XLA reads its flags once, at the first JAX import, so they are set here,
before any test module imports JAX: 8 CPU devices stand in for 8 accelerators."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # never let TensorFlow take a GPU in tests
