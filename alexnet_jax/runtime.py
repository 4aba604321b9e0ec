"""Process-wide settings, made by the commands and never by importing a module.

Importing any module of alexnet_jax changes no environment variable and no global setting
(tests/test_architecture.py), so the library can be imported into a notebook or another program as
it is. The settings the commands want are made here, by functions they call before JAX or
TensorFlow start (`alexnet_jax.cli.run` calls `configure`); a program of your own gets the same by
calling `configure()` before its first JAX computation and first TensorFlow op.

`configure` sets:
* `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` in `XLA_FLAGS`, for the CPU
  backend only: convolutions go back from YNNPACK to XLA's own CPU kernels. YNNPACK ran the paper's
  conv1 (11x11, stride 4, 3 input channels) at a quarter of XLA's speed (300 vs 75 ms at batch 32)
  and conv3 30% slower; without it the whole train step ran 11% faster on a 2-core x86 CPU
  (docs/profiling.md). Matrix products stay with YNNPACK, which is faster for them. XLA reads the
  variable when JAX starts its CPU backend (the first computation or device query, not `import
  jax`); GPU runs never use the option. A value the user set for the same option wins.
* `TF_CPU_ALLOCATOR_USE_BFC=true` (unless set): TensorFlow keeps the host memory of the input
  pipeline's tensors in a pool of its own instead of asking malloc for each. A training batch of
  regions is ~43 MB, and glibc maps every block above 32 MB afresh, page-faulting it in on each use:
  that alone cost the pipeline 15-25% of its CPU time (docs/benchmarks.md, "Input pipeline"; some
  TensorFlow builds pool by default). TensorFlow reads it at its first operation.

The data layer makes two more settings when it first builds a TensorFlow pipeline, as only that
needs them: `hide_gpus_from_tensorflow` and `restore_malloc_thresholds`.
"""

import ctypes
import functools
import os

from absl import logging

CPU_CONVOLUTION_OPTION = '--xla_cpu_experimental_ynn_fusion_type'
CPU_CONVOLUTION_FLAG = f'{CPU_CONVOLUTION_OPTION}=-individual_convolution'


def configure() -> None:
  """The commands' process settings (module docstring); call before JAX and TensorFlow start."""
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if CPU_CONVOLUTION_OPTION not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {CPU_CONVOLUTION_FLAG}'.strip()
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')


@functools.cache
def hide_gpus_from_tensorflow() -> None:
  """Makes every accelerator JAX's: TensorFlow only feeds the host, and would otherwise take GPU
  memory. Called by the data layer before it builds its first TensorFlow dataset; once TensorFlow
  has set up its devices this can no longer change them, and says so."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the data layer needs it)
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as e:  # TensorFlow already initialized its devices
    logging.warning('TensorFlow already set up its devices, so its GPUs stay visible to it (%s). '
                    'Call alexnet_jax.runtime.hide_gpus_from_tensorflow() before TensorFlow runs '
                    'anything.', e)


# glibc's mallopt parameters, and the largest values its own adaptive thresholds reach on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20


@functools.cache
def restore_malloc_thresholds() -> None:
  """Gives glibc's malloc back the thresholds that TensorFlow's generator datasets lower.

  The first `tf.data.Dataset.from_generator` a process runs sets malloc's mmap and trim thresholds
  to 128 KB for the whole process (TensorFlow's workaround for a memory growth it saw with Python
  3.11, logged as "Memory patch applied"). Every malloc'd buffer above 128 KB is then mapped afresh
  and page-faulted in on each use: with malloc serving TensorFlow's tensors, that was every decoded
  window, resized crop and batch of the pipeline, and it cost more CPU per training image than the
  resize (docs/benchmarks.md, "Input pipeline"). With `configure`, TensorFlow keeps its tensors in
  its own pool; JAX's host buffers, numpy's and Python's still come from malloc. This runs a
  generator dataset once, so that TensorFlow's setting is made now, then sets the thresholds to
  the largest values glibc's adaptive ones would reach (32 MB and twice that), so image-sized
  buffers are reused from the heap again. Called by the training pipeline, which uses a generator
  dataset; other C libraries have no `mallopt` and are left alone.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  list(tf.data.Dataset.from_generator(lambda: iter([0]), output_signature=tf.TensorSpec([], tf.int32)))
  libc = ctypes.CDLL(None)
  if hasattr(libc, 'mallopt'):
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MAX_MMAP_THRESHOLD)
