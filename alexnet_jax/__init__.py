"""alexnet_jax: AlexNet (Krizhevsky, Sutskever, Hinton, 2012) in JAX/Flax.

Importing the package adds one XLA flag to `XLA_FLAGS`, for the CPU backend only:
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` hands convolutions back from YNNPACK to
XLA's own CPU convolution kernels. YNNPACK ran the paper's conv1 (11x11, stride 4, 3 input channels) at a
quarter of XLA's own speed (300 vs 75 ms at batch 32) and conv3 30% slower; without it the whole train
step ran 11% faster on a 2-core x86 CPU (docs/profiling.md). Matrix products stay with YNNPACK, which is
faster for them. XLA reads the flag when the backend starts, so it takes effect when this package is
imported before JAX's first computation (every entry point here does); GPU runs never read it. A flag
the user already set for the same option wins. Imported later than that (a notebook that ran JAX
first), the package warns that the flag came too late instead of leaving the slower kernels on silently.

It also sets `TF_CPU_ALLOCATOR_USE_BFC=true` (unless set): TensorFlow then keeps the host memory
of the input pipeline's tensors in its own pool instead of asking malloc for each. A training batch
of regions is ~43 MB, and glibc maps every block above 32 MB afresh, page-faulting it in on each use:
that alone cost the pipeline 15-25% of its CPU time (docs/benchmarks.md, "Input pipeline").
TensorFlow reads the variable when it runs its first operation, which no entry point here does
before importing this package. The pool grows as needed and keeps what it took.
"""

import os
import sys
import warnings

_YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'

os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')


def _cpu_backend_already_started() -> bool:
  """Whether JAX has started its CPU backend, so that XLA_FLAGS set now are not read."""
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, 'backends_are_initialized', lambda: False)  # private; may move
  return started() and sys.modules['jax'].default_backend() == 'cpu'


if _YNN_FUSION_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(
      filter(None, [os.environ.get('XLA_FLAGS', ''), f'{_YNN_FUSION_FLAG}=-individual_convolution']))
  if _cpu_backend_already_started():
    warnings.warn(
        'alexnet_jax was imported after JAX started its CPU backend, so XLA will not read the flag '
        f'{_YNN_FUSION_FLAG}=-individual_convolution that it adds to XLA_FLAGS: convolutions stay '
        "with YNNPACK (a slower train step on CPU, docs/profiling.md). Import alexnet_jax before "
        "JAX's first computation, or set the flag in XLA_FLAGS before starting Python.",
        stacklevel=2)
