"""alexnet_jax: AlexNet (Krizhevsky, Sutskever, Hinton, 2012) in JAX/Flax.

Importing the package adds one XLA flag to `XLA_FLAGS`, for the CPU backend only:
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` hands convolutions back from YNNPACK to
XLA's own CPU convolution kernels. YNNPACK ran the paper's conv1 (11x11, stride 4, 3 input channels) at a
quarter of XLA's own speed (300 vs 75 ms at batch 32) and conv3 30% slower; without it the whole train
step ran 11% faster on a 2-core x86 CPU (docs/profiling.md). Matrix products stay with YNNPACK, which is
faster for them. XLA reads the flag when the backend starts, so it takes effect when this package is
imported before JAX's first computation (every entry point here does); GPU runs never read it. A flag
the user already set for the same option wins.
"""

import os

_YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'

if _YNN_FUSION_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(
      filter(None, [os.environ.get('XLA_FLAGS', ''), f'{_YNN_FUSION_FLAG}=-individual_convolution']))
