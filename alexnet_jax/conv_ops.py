"""Convolutions that compute exactly what `lax.conv_general_dilated` computes, faster on XLA's CPU backend.

Measured on a 2-core x86 CPU (docs/profiling.md), XLA's CPU convolutions lose to PyTorch's oneDNN in
three places, and each has a rewrite that is the same sum of products, only grouped differently:

* Weight gradients. XLA lowers dL/dW (a convolution of the input with the output gradient, batch as the
  contracted dimension) to a slow generic loop: 3-10x slower than the forward convolution. Here it is
  kh*kw plain matrix products, one per kernel offset: dW[i, j] = patch(x, i, j)^T @ dY, where patch(x,
  i, j) is the input window seen by kernel tap (i, j) at every output position, [N*OH*OW, C_in].
* Grouped convolutions (`feature_group_count > 1`, the paper's conv2/conv4/conv5). XLA CPU is several
  times slower on them than on the same work as separate dense convolutions; here each group is its own
  dense convolution and the outputs are concatenated.
* Strided convolutions with few input channels (conv1: 11x11, stride 4, 3 channels). Space-to-depth turns
  them into stride-1 convolutions: blocks of s x s pixels become s*s*C channels and the kernel, zero-padded
  to a multiple of s, becomes a ceil(k/s) x ceil(k/s) kernel over those blocks. For conv1, 227x227x3 (padded
  to 228) becomes 57x57x48 and the 11x11x3 kernel becomes 3x3x48 (zero taps at index 11).

The forward convolution and the input gradient stay XLA's own convolutions. Results equal
`lax.conv_general_dilated` up to float summation order (tests/test_conv_ops.py checks 1e-5 relative).

`conv_general_dilated` takes the same arguments as `lax.conv_general_dilated` and falls back to it for
anything it does not handle (dilation, batch groups, layouts other than NHWC/HWIO). `for_backend()` picks it
on CPU and plain `lax.conv_general_dilated` elsewhere: on GPU cuDNN's native kernels are the fast path.
"""

from collections.abc import Callable, Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Padding = Sequence[tuple[int, int]]


def for_backend() -> Callable[..., jax.Array]:
  """The convolution to use on the default backend: ours on CPU, XLA's own elsewhere."""
  return conv_general_dilated if jax.default_backend() == 'cpu' else lax.conv_general_dilated


def _dense_conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
  return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_NHWC)


def _weight_gradient(x: jax.Array, dy: jax.Array, kernel: tuple[int, int],
                     stride: int, padding: Padding) -> jax.Array:
  """dL/dW of a dense NHWC convolution as one matrix product per kernel tap: [kh, kw, C_in, C_out]."""
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  x = jnp.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
  _, out_h, out_w, out_c = dy.shape
  in_c = x.shape[-1]
  dy_rows = dy.reshape(-1, out_c)
  taps = []
  for i in range(kernel[0]):
    for j in range(kernel[1]):
      window = lax.slice(x, (0, i, j, 0),
                         (x.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, in_c),
                         (1, stride, stride, 1))
      taps.append(lax.dot_general(window.reshape(-1, in_c), dy_rows, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel[0], kernel[1], in_c, out_c).astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, stride: int, padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return _dense_conv(x, w, stride, padding)


def _conv_fwd(x, w, stride, padding):
  return _dense_conv(x, w, stride, padding), (x, w)


def _conv_bwd(stride, padding, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _dense_conv(x, w, stride, padding), x)
  dw = _weight_gradient(x, dy, w.shape[:2], stride, padding)
  return input_vjp(dy)[0], dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _space_to_depth_conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """A stride-s convolution as a stride-1 convolution over s x s pixel blocks (see module docstring)."""
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  kh, kw, in_c, out_c = w.shape
  x = jnp.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  blocks_kh, blocks_kw = -(-kh // stride), -(-kw // stride)
  # Rows the block grid covers; the rows added or cut here meet only the kernel's zero taps.
  rows, cols = stride * (out_h - 1 + blocks_kh), stride * (out_w - 1 + blocks_kw)
  x = jnp.pad(x[:, :rows, :cols], ((0, 0), (0, max(0, rows - x.shape[1])),
                                   (0, max(0, cols - x.shape[2])), (0, 0)))
  n = x.shape[0]
  x = x.reshape(n, rows // stride, stride, cols // stride, stride, in_c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows // stride, cols // stride, stride * stride * in_c)
  w = jnp.pad(w, ((0, stride * blocks_kh - kh), (0, stride * blocks_kw - kw), (0, 0), (0, 0)))
  w = w.reshape(blocks_kh, stride, blocks_kw, stride, in_c, out_c)
  w = w.transpose(0, 2, 1, 3, 4, 5).reshape(blocks_kh, blocks_kw, stride * stride * in_c, out_c)
  return _conv(x, w, 1, ((0, 0), (0, 0)))


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
  stride = window_strides[0]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  in_c = lhs.shape[-1] // feature_group_count
  out_c = rhs.shape[-1] // feature_group_count
  outputs = []
  for g in range(feature_group_count):
    x = lhs[..., g * in_c:(g + 1) * in_c]
    w = rhs[..., g * out_c:(g + 1) * out_c]
    if stride > 1 and in_c * stride * stride <= 64:  # few channels: conv1's 3 becomes 48
      outputs.append(_space_to_depth_conv(x, w, stride, padding))
    else:
      outputs.append(_conv(x, w, stride, padding))
  return outputs[0] if feature_group_count == 1 else jnp.concatenate(outputs, axis=-1)
