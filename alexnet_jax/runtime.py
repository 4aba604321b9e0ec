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
* Where JAX will compute on the CPU (`computes_on_cpu_only`), `keep_freed_memory`: glibc's malloc
  keeps what XLA frees for its next step instead of handing it back to the kernel.

The data layer makes two more settings when it first builds a TensorFlow pipeline, as only that
needs them: `hide_gpus_from_tensorflow` and `restore_malloc_thresholds`.
"""

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import pkgutil

from absl import logging

CPU_CONVOLUTION_OPTION = '--xla_cpu_experimental_ynn_fusion_type'
CPU_CONVOLUTION_FLAG = f'{CPU_CONVOLUTION_OPTION}=-individual_convolution'


def configure() -> None:
  """The commands' process settings (module docstring); call before JAX and TensorFlow start."""
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if CPU_CONVOLUTION_OPTION not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {CPU_CONVOLUTION_FLAG}'.strip()
  os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  if computes_on_cpu_only():
    keep_freed_memory()


def computes_on_cpu_only() -> bool:
  """Whether JAX will compute on the CPU, known before it starts: `JAX_PLATFORMS` names only
  'cpu', or it is unset and no accelerator backend is installed (a PJRT plugin, as JAX finds them:
  the `jax_plugins` entry points and namespace package, which CUDA and ROCm install; or libtpu)."""
  platforms = {p.strip() for p in os.environ.get('JAX_PLATFORMS', '').split(',') if p.strip()}
  if platforms:
    return platforms == {'cpu'}
  if importlib.util.find_spec('libtpu') is not None:
    return False
  if importlib.metadata.entry_points(group='jax_plugins'):
    return False
  namespace = importlib.util.find_spec('jax_plugins')
  return namespace is None or not any(pkgutil.iter_modules(namespace.submodule_search_locations))


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
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20
_C_INT_MAX = 2**31 - 1  # mallopt's value is a C int


@functools.cache
def keep_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse: one arena, no block mapped on its own, no
  trimming. Returns whether it could (False without glibc). Call before JAX starts its threads.

  XLA:CPU allocates each execution's temporaries afresh: one block for the whole train step (171 MB
  for configs/fashion_mnist.py), plus a few of 25-64 MB, in its own threads. glibc maps any block
  above 32 MB with `mmap` and unmaps it when freed, and a thread's own arena (at most 64 MB a heap)
  maps even smaller ones so; every page is then faulted in again on the next step. That was 44,000
  page faults a step, and 42% of the training process's CPU time was the kernel's (system time
  861 s of 2,040 s in a 25-epoch Fashion-MNIST run). With one arena (the main one, grown with
  `brk`), no `mmap` for single blocks, and no trimming of the heap's top, the blocks are reused:
  ~1,100 faults a step, system time 76.5 -> 15.7 ms a step, CPU time 176 -> 149 ms (-16%), at the
  same speed within the noise (1.04x the images a second; `python -m bench.host_memory`,
  docs/benchmarks.md, "Host memory on CPU"). The price is that the heap keeps its high-water mark
  (1.1 -> 1.6 GB resident there). It is for CPU runs: on an accelerator the temporaries live in
  device memory, and the host's input pipeline runs many threads that one arena would serialize.
  """
  libc = ctypes.CDLL(None)
  if not hasattr(libc, 'mallopt'):
    return False
  return all(libc.mallopt(parameter, value) == 1 for parameter, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _C_INT_MAX)))


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
  buffers are reused from the heap again (where `keep_freed_memory` ran, the heap is not trimmed at
  all, as it set). Called by the training pipeline, which uses a generator dataset; other C
  libraries have no `mallopt` and are left alone.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  list(tf.data.Dataset.from_generator(lambda: iter([0]), output_signature=tf.TensorSpec([], tf.int32)))
  libc = ctypes.CDLL(None)
  if hasattr(libc, 'mallopt'):
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    kept = keep_freed_memory.cache_info().currsize and keep_freed_memory()  # ran and took
    libc.mallopt(_M_TRIM_THRESHOLD, _C_INT_MAX if kept else 2 * _GLIBC_MAX_MMAP_THRESHOLD)
