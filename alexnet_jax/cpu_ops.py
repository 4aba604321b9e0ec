"""Convolutions and max-pools that compute exactly what lax computes, faster on XLA's CPU backend.

Measured on a 2-core x86 CPU (docs/profiling.md), XLA's CPU kernels lose to PyTorch's oneDNN in four
places, and each has a rewrite that is the same arithmetic, only grouped differently:

* Weight gradients. XLA's dL/dW (a convolution of the input with the output gradient, the batch
  contracted) ran 1.6-11x slower than its forward convolution, and 3-8x slower than PyTorch's. Here it is
  kh*kw plain matrix products, one per kernel offset: dW[i, j] = patch(x, i, j)^T @ dY, where patch(x,
  i, j) is the input window seen by kernel tap (i, j) at every output position, [N*OH*OW, C_in].
* Grouped convolutions (`feature_group_count > 1`, the paper's conv2/conv4/conv5). XLA CPU is several
  times slower on them than on the same work as separate dense convolutions; here each group is its own
  dense convolution and the outputs are concatenated.
* The weight gradient of a strided convolution with few input channels (conv1: 11x11, stride 4, 3
  channels: 121 thin taps of 3 channels each). Space-to-depth turns it into a stride-1 problem: blocks of
  s x s pixels become s*s*C channels and the kernel, zero-padded to a multiple of s, becomes a
  ceil(k/s) x ceil(k/s) kernel over those blocks. For conv1, 227x227x3 (padded to 228) becomes 57x57x48
  and the 11x11x3 kernel 3x3x48, so dL/dW is 9 taps of 48 channels, cut back to 11x11x3 at the end.
  (The forward pass in that form was slower than XLA's strided convolution, so it stays direct.)
* The max-pool gradient. JAX differentiates `reduce_window(max)` through XLA's select-and-scatter,
  which on CPU took 5-12x PyTorch's time for the paper's 3x3/2 pools (docs/profiling.md). `max_pool`
  here keeps XLA's forward and computes the gradient from the pooled output instead: window tap (i, j)
  of output position o is the one whose input equals the output (the first such tap in row-major
  order on ties, as select-and-scatter picks), and the input gradient, split by the parity of the input
  position (which taps can reach it), is a few shifted sums over the output grid, interleaved once.

The forward convolution and the input gradient stay XLA's own convolutions. Results equal lax's up to
float summation order (tests/test_cpu_ops.py checks 1e-5 relative; the max-pool gradient exactly).

`conv_general_dilated` takes the same arguments as `lax.conv_general_dilated` and falls back to it for
anything it does not handle (dilation, batch groups, layouts other than NHWC/HWIO).

Which path a model takes is its `conv_impl` (config key `model.conv_impl`, `IMPLS`): 'cpu_ops', these
rewrites; 'lax', XLA's own convolutions and max-pool gradient, the fast path on GPU (cuDNN) and TPU;
'auto' (the default), 'cpu_ops' when JAX's default backend is the CPU and 'lax' elsewhere, decided
when the model is traced. Setting it explicitly lets the tests run the GPU path on a CPU and compare
the two (tests/test_cpu_ops.py).
"""

from collections.abc import Callable, Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Padding = Sequence[tuple[int, int]]


IMPLS = ('auto', 'lax', 'cpu_ops')


def resolve(impl: str) -> str:
  """'lax' or 'cpu_ops': `impl`, with 'auto' decided by JAX's default backend (module docstring)."""
  if impl not in IMPLS:
    raise ValueError(f'conv_impl={impl!r} is not one of {", ".join(map(repr, IMPLS))}.')
  if impl == 'auto':
    return 'cpu_ops' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def conv_factory(impl: str) -> Callable[[], Callable[..., jax.Array]]:
  """For `nn.Conv(conv_general_dilated_cls=...)`: a callable that gives the convolution of `impl`."""
  return lambda: conv_general_dilated if resolve(impl) == 'cpu_ops' else lax.conv_general_dilated


def _dense_conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
  return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_NHWC)


def _tap_window(x: jax.Array, i: int, j: int, out_shape: tuple[int, int], stride: int) -> jax.Array:
  """The NHWC input elements that kernel tap (i, j) of a VALID strided window sees at every output
  position: x[:, i + stride * oh, j + stride * ow, :], [N, OH, OW, C]."""
  out_h, out_w = out_shape
  return lax.slice(x, (0, i, j, 0),
                   (x.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, x.shape[3]),
                   (1, stride, stride, 1))


def _tap_weight_gradient(x: jax.Array, dy: jax.Array, kernel: tuple[int, int],
                         stride: int) -> jax.Array:
  """dL/dW of a VALID NHWC convolution as one matrix product per kernel tap: [kh, kw, C_in, C_out]."""
  _, out_h, out_w, out_c = dy.shape
  in_c = x.shape[-1]
  dy_rows = dy.reshape(-1, out_c)
  taps = []
  for i in range(kernel[0]):
    for j in range(kernel[1]):
      window = _tap_window(x, i, j, (out_h, out_w), stride)
      taps.append(lax.dot_general(window.reshape(-1, in_c), dy_rows, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel[0], kernel[1], in_c, out_c)


def _space_to_depth_weight_gradient(x: jax.Array, dy: jax.Array, kernel: tuple[int, int],
                                    stride: int) -> jax.Array:
  """dL/dW of a VALID stride-s convolution, computed on its space-to-depth form (module docstring)."""
  n, height, width, in_c = x.shape
  _, out_h, out_w, _ = dy.shape
  blocks_h, blocks_w = -(-kernel[0] // stride), -(-kernel[1] // stride)
  # The block grid's rows and columns; those added or cut here only meet the kernel's zero taps.
  rows, cols = stride * (out_h - 1 + blocks_h), stride * (out_w - 1 + blocks_w)
  x = jnp.pad(x[:, :rows, :cols], ((0, 0), (0, max(0, rows - height)), (0, max(0, cols - width)),
                                   (0, 0)))
  x = x.reshape(n, rows // stride, stride, cols // stride, stride, in_c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows // stride, cols // stride, stride * stride * in_c)
  dw = _tap_weight_gradient(x, dy, (blocks_h, blocks_w), 1)  # [bh, bw, (s, s, C_in), C_out]
  dw = dw.reshape(blocks_h, blocks_w, stride, stride, in_c, -1).transpose(0, 2, 1, 3, 4, 5)
  return dw.reshape(blocks_h * stride, blocks_w * stride, in_c, -1)[:kernel[0], :kernel[1]]


def _uses_space_to_depth(in_c: int, stride: int) -> bool:
  return stride > 1 and in_c * stride * stride <= 64  # few channels: conv1's 3 become 48


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, stride: int, padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return _dense_conv(x, w, stride, padding)


def _conv_fwd(x, w, stride, padding):
  return _dense_conv(x, w, stride, padding), (x, w)


def _conv_bwd(stride, padding, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _dense_conv(x, w, stride, padding), x)
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  x_padded = jnp.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
  if _uses_space_to_depth(x.shape[-1], stride):
    dw = _space_to_depth_weight_gradient(x_padded, dy, w.shape[:2], stride)
  else:
    dw = _tap_weight_gradient(x_padded, dy, w.shape[:2], stride)
  return input_vjp(dy)[0], dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _handles(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
             batch_group_count) -> bool:
  return (lhs.ndim == 4 and len(set(window_strides)) == 1 and batch_group_count == 1
          and all(d == 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated`, with the CPU rewrites of the module docstring for 2-D NHWC/HWIO convs."""
  if not _handles(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                  batch_group_count) or precision is not None or preferred_element_type is not None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  pads = padding
  if isinstance(pads, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, pads)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if min(min(pair) for pair in pads) < 0:  # negative padding (cropping): lax's own
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count)
  stride = window_strides[0]
  in_c = lhs.shape[-1] // feature_group_count
  out_c = rhs.shape[-1] // feature_group_count
  outputs = []
  for g in range(feature_group_count):
    x = lhs[..., g * in_c:(g + 1) * in_c]
    w = rhs[..., g * out_c:(g + 1) * out_c]
    outputs.append(_conv(x, w, stride, pads))
  return outputs[0] if feature_group_count == 1 else jnp.concatenate(outputs, axis=-1)


def _reduce_max(x: jax.Array, window: int, stride: int) -> jax.Array:
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           'VALID')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  return _reduce_max(x, window, stride)


def _max_pool_fwd(x, window, stride):
  y = _reduce_max(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, dy):
  """dL/dx of a VALID max-pool, built on the output grid (module docstring)."""
  x, y = residuals
  n, height, width, channels = x.shape
  _, out_h, out_w, _ = y.shape
  # Input row r = stride * m + p is reached by kernel rows i = p, p + stride, ... from output row
  # m - (i - p) // stride; so each residue class (p, q) of input positions is a sum of shifted
  # [N, M, M', C] maps, and the classes interleave into the input grid.
  blocks_h, blocks_w = -(-height // stride), -(-width // stride)
  zero = jnp.zeros((), dy.dtype)
  taken = jnp.zeros(y.shape, bool)
  classes = {}
  for i in range(window):
    for j in range(window):
      # select-and-scatter's choice: the first maximum in the window
      chosen = (_tap_window(x, i, j, (out_h, out_w), stride) == y) & ~taken
      taken = taken | chosen
      shift_h, shift_w = i // stride, j // stride
      grad = lax.pad(jnp.where(chosen, dy, zero), zero,
                     ((0, 0, 0), (shift_h, blocks_h - out_h - shift_h, 0),
                      (shift_w, blocks_w - out_w - shift_w, 0), (0, 0, 0)))
      key = (i % stride, j % stride)
      classes[key] = classes[key] + grad if key in classes else grad
  empty = jnp.zeros((n, blocks_h, blocks_w, channels), dy.dtype)  # residues no tap reaches (window < stride)
  dx = jnp.stack([jnp.stack([classes.get((p, q), empty) for q in range(stride)], axis=3)
                  for p in range(stride)], axis=2)  # [N, M, p, M', q, C]
  dx = dx.reshape(n, blocks_h * stride, blocks_w * stride, channels)[:, :height, :width]
  return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, impl: str = 'auto') -> jax.Array:
  """VALID `window` x `window` max-pool with stride `stride` over an NHWC map (`nn.max_pool`'s result).

  With `impl` 'cpu_ops' (on CPU, under 'auto') its gradient is the rewrite of the module docstring;
  with 'lax' it is XLA's own.
  """
  if resolve(impl) == 'lax':
    return _reduce_max(x, window, stride)
  return _max_pool(x, window, stride)
