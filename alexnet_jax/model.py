"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) as a Flax linen module.

Two layouts share one module and one parameter naming (`conv1`..`conv5`, `fc6`..`fc8`):

* `variant='paper'`: the network of §3.5 / Figure 2, 227x227x3 input (the paper says 224, but its
  own 55x55 conv1 map needs 227). conv2, conv4 and conv5 are grouped convolutions (`groups=2`), the
  paper's split across two GPUs; conv3 and the fully connected layers see both halves.
* `variant='torchvision'`: the "one weird trick" layout of `torchvision.models.alexnet` (64, 192,
  384, 256, 256 filters, 224 input, no LRN, no groups, an adaptive 6x6 average pool, dropout before
  fc6 and fc7), laid out so torchvision's published weights can be converted: HWIO conv kernels,
  (in, out) dense kernels. The 6x6xC feature map is flattened in NHWC order, (h, w, c) with c
  fastest; torchvision flattens (c, h, w), so a converter permutes the rows of fc6's kernel.

Images are NHWC. `model.apply(variables, x, train=False)` returns float32 logits; `train=True`
applies dropout and needs `rngs={'dropout': key}`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import cpu_ops

VARIANTS = ('paper', 'torchvision')
# §7: "removing any of the middle layers results in a loss of about 2% for the top-1 performance".
# The convolutions `remove_conv` may take out: not conv1, which sees the pixels, nor conv5, whose
# pooled map is fc6's input.
REMOVABLE_CONVS = (2, 3, 4)
ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh}
INIT_SCHEMES = ('paper', 'he')
DTYPES = ('float32', 'bfloat16')
CONV_IMPLS = cpu_ops.IMPLS

# §5: "We initialized the neuron biases in the second, fourth, and fifth convolutional layers, as
# well as in the fully-connected hidden layers, with the constant 1."
_PAPER_BIAS_ONE_LAYERS = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
_FC_HIDDEN = 4096
_TORCHVISION_POOLED_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6))


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One convolutional stage: conv -> activation [-> LRN] [-> max-pool]."""
  features: int
  kernel: int
  stride: int
  padding: int
  grouped: bool  # sees only its own half of the input channels when groups > 1
  lrn: bool  # followed by local response normalization (when the model's `lrn` is on)
  pool: bool  # followed by a max-pool


# §3.5 and Figure 2. conv3 "connects to all kernel maps in the second layer"; conv2, conv4 and
# conv5 only to the maps on their own GPU.
PAPER_CONVS = (
    ConvLayer(96, kernel=11, stride=4, padding=0, grouped=False, lrn=True, pool=True),
    ConvLayer(256, kernel=5, stride=1, padding=2, grouped=True, lrn=True, pool=True),
    ConvLayer(384, kernel=3, stride=1, padding=1, grouped=False, lrn=False, pool=False),
    ConvLayer(384, kernel=3, stride=1, padding=1, grouped=True, lrn=False, pool=False),
    ConvLayer(256, kernel=3, stride=1, padding=1, grouped=True, lrn=False, pool=True),
)
# torchvision.models.alexnet's `features`.
TORCHVISION_CONVS = (
    ConvLayer(64, kernel=11, stride=4, padding=2, grouped=False, lrn=False, pool=True),
    ConvLayer(192, kernel=5, stride=1, padding=2, grouped=False, lrn=False, pool=True),
    ConvLayer(384, kernel=3, stride=1, padding=1, grouped=False, lrn=False, pool=False),
    ConvLayer(256, kernel=3, stride=1, padding=1, grouped=False, lrn=False, pool=False),
    ConvLayer(256, kernel=3, stride=1, padding=1, grouped=False, lrn=False, pool=True),
)
CONVS = {'paper': PAPER_CONVS, 'torchvision': TORCHVISION_CONVS}


def _check_choice(field: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'AlexNet {field}={value!r} is not one of {", ".join(map(repr, allowed))}.')


def pool_shape(overlapping_pool: bool) -> tuple[int, int]:
  """(window, stride) of the max-pools: §3.4's overlapping 3x3/2, or the traditional 2x2/2."""
  return (3, 2) if overlapping_pool else (2, 2)


def conv_layers(variant: str = 'paper', conv1_kernel: int = 0,
                conv1_stride: int = 0) -> tuple[ConvLayer, ...]:
  """The layout's five convolutions, conv1's kernel and stride replaced where given (non-zero).

  conv1's 11x11 filters at stride 4 were sized for 224-pixel photos, where they give a 55x55 map
  (§3.5). On small images (Fashion-MNIST's 28x28, CIFAR's 32x32) the same stage at kernel 5,
  stride 1 keeps the paper's pooling pyramid: a 28x28 crop gives a 2x2 map after the third pool
  instead of vanishing, and the image needs no upsampling to fit.
  """
  _check_choice('variant', variant, VARIANTS)
  first = CONVS[variant][0]
  first = dataclasses.replace(first, kernel=conv1_kernel or first.kernel,
                              stride=conv1_stride or first.stride)
  return (first,) + CONVS[variant][1:]


def _feature_map_size(input_size: int, layers: tuple[ConvLayer, ...],
                      overlapping_pool: bool) -> int:
  """Spatial size of the last pool's output along one axis; 0 if the map vanishes on the way."""
  window, stride = pool_shape(overlapping_pool)
  size = input_size
  for layer in layers:
    size = (size + 2 * layer.padding - layer.kernel) // layer.stride + 1
    if layer.pool:
      size = (size - window) // stride + 1
    if size < 1:
      return 0
  return size


def min_input_size(variant: str = 'paper', overlapping_pool: bool = True, conv1_kernel: int = 0,
                   conv1_stride: int = 0) -> int:
  """The smallest image height (and width) whose feature map survives conv1 and the three pools.

  67 for the paper layout (conv1 must give a 15x15 map), 63 for torchvision's (conv1 pads by 2);
  39 and 35 with non-overlapping 2x2 pools; 19 with a 5x5, stride 1 conv1.
  """
  layers = conv_layers(variant, conv1_kernel, conv1_stride)
  size = 1
  while _feature_map_size(size, layers, overlapping_pool) < 1:
    size += 1
  return size


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The compute dtype named by `dtype` (a string like 'bfloat16' or a dtype)."""
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    resolved = None
  if resolved is None or resolved.name not in DTYPES:
    raise ValueError(f'AlexNet dtype={dtype!r} is not one of {", ".join(map(repr, DTYPES))}.')
  return resolved


def local_response_norm(x: jax.Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75) -> jax.Array:
  """Local response normalization across channels, exactly as written in §3.3.

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n//2)}^{min(N-1, i+n//2)} a_j^2) ** beta

  over the last (channel) axis. The sum is NOT divided by n. PyTorch's `LocalResponseNorm(n, alpha,
  beta, k)` divides alpha by n, so it matches the paper with alpha = n * 1e-4 = 5e-4. TensorFlow's
  `tf.nn.local_response_normalization(depth_radius=n // 2, bias=k, alpha=alpha, beta=beta)` does
  not divide and matches as is.

  The windowed sum of squares is one `reduce_window` over the channel axis, which XLA fuses with
  the squaring and the scaling into a single elementwise pass. It runs in float32 whatever the
  input dtype, and the result is cast back.
  """
  if n < 1 or n % 2 == 0:
    raise ValueError(f'local_response_norm needs an odd window n >= 1 centred on each channel; got n={n}.')
  x32 = x.astype(jnp.float32)
  radius = n // 2
  window = (1,) * (x.ndim - 1) + (n,)
  padding = ((0, 0),) * (x.ndim - 1) + ((radius, radius),)  # zero padding = the clipped sum
  sum_sq = jax.lax.reduce_window(jnp.square(x32), 0.0, jax.lax.add, window, (1,) * x.ndim, padding)
  denominator = k + alpha * sum_sq
  if beta == 0.75:  # the paper's: t^-0.75 = rsqrt(t) * rsqrt(sqrt(t)), 20% faster than pow on CPU
    scale = jax.lax.rsqrt(denominator) * jax.lax.rsqrt(jnp.sqrt(denominator))
  else:
    scale = jnp.power(denominator, -beta)
  return (x32 * scale).astype(x.dtype)


def _adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] averaging weights of PyTorch's adaptive average pooling along one axis.

  Output bin i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1; bins may overlap.
  """
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
  """PyTorch's `AdaptiveAvgPool2d((out_size, out_size))` on an NHWC map, as two small matmuls."""
  rows = jnp.asarray(_adaptive_avg_pool_matrix(x.shape[1], out_size), x.dtype)
  cols = jnp.asarray(_adaptive_avg_pool_matrix(x.shape[2], out_size), x.dtype)
  return jnp.einsum('ih,bhwc,jw->bijc', rows, x, cols)


class AlexNet(nn.Module):
  """AlexNet; every field is a config key of `config.model` (configs/default.py).

  Attributes:
    num_classes: size of fc8, the logits (the softmax lives in the loss).
    variant: 'paper' (§3.5) or 'torchvision' (the single-tower layout of torchvision's alexnet;
      it has no LRN and no groups, so `groups` and `lrn` do not apply to it).
    groups: 2 is the paper's two-GPU split of conv2, conv4, conv5 (`feature_group_count`: one grouped
      convolution on GPU; on CPU cpu_ops runs each group as a dense convolution, the same sums but
      faster there); 1 is the single-tower network. 'paper' layout only.
    lrn: local response normalization after conv1 and conv2 (§3.3). 'paper' layout only.
    activation: 'relu' (§3.1) or 'tanh' (the saturating baseline of Figure 1).
    overlapping_pool: True: 3x3 max-pools with stride 2 (§3.4); False: 2x2 with stride 2.
    dropout_rate: dropout on fc6 and fc7 (§4.2): after their activations in the paper layout,
      before the layers in torchvision's.
    width: multiplies every conv and hidden fc width (rounded; conv widths to a multiple of
      `groups`). fc8 keeps `num_classes`.
    init_scheme: 'paper' (§5): weights N(0, 0.01^2), biases 1 in conv2, conv4, conv5, fc6, fc7
      and 0 elsewhere. 'he': He-normal (fan-in) weights, zero biases. The paper's scheme went with
      mean-subtracted 0..255 pixels and a learning rate divided by hand whenever validation error
      stalled. Every conv has 0.01 * sqrt(fan_in) < 1, so the image-dependent signal shrinks layer
      by layer while the bias-1 ReLUs pass a constant: the network starts nearly blind to its
      input, and on the pipeline's unit-variance images the gradient reaching conv1 is ~300x
      smaller than under He init (measured in docs/model.md), so early training hinges on that
      hand-tuned rate. He init keeps the pre-activation scale roughly constant through the ReLU
      stack on unit-variance inputs and trains from scratch with plain schedules and no bias
      tricks; configs/default.py uses it. (He assumes those unit-variance inputs: on the 0..255
      scale its logits overflow.) 'paper' is kept for faithful reproductions.
    dtype: compute dtype, 'float32' or 'bfloat16' (a string or a dtype). Parameters stay float32;
      logits are returned in float32.
    conv_impl: how convolutions and max-pools are computed, the same function either way:
      'lax' (XLA's own kernels: cuDNN on GPU), 'cpu_ops' (alexnet_jax/cpu_ops.py, faster on XLA's CPU
      backend), or 'auto': 'cpu_ops' on CPU, 'lax' elsewhere.
    conv1_kernel, conv1_stride: conv1's filter size and stride in place of the layout's 11 and 4
      (0 keeps them): 5 and 1 fit 28-32 pixel images (`conv_layers`); the padding stays the
      layout's.
    remove_conv: 0 keeps all five convolutions; 2, 3 or 4 removes that one (§7's depth ablation)
      with its activation and LRN. Its max-pool stays (conv2's), so every map keeps its size and fc6
      its input; the next convolution takes the previous one's channels. Parameter names stay
      conv1..conv5 without the removed one. 'paper' layout only.
  """
  num_classes: int = 1000
  variant: str = 'paper'
  groups: int = 2
  lrn: bool = True
  activation: str = 'relu'
  overlapping_pool: bool = True
  dropout_rate: float = 0.5
  width: float = 1.0
  init_scheme: str = 'paper'
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  conv1_kernel: int = 0
  conv1_stride: int = 0
  remove_conv: int = 0

  def __post_init__(self):
    super().__post_init__()
    _check_choice('variant', self.variant, VARIANTS)
    _check_choice('activation', self.activation, tuple(ACTIVATIONS))
    _check_choice('init_scheme', self.init_scheme, INIT_SCHEMES)
    _check_choice('conv_impl', self.conv_impl, CONV_IMPLS)
    compute_dtype(self.dtype)
    if not isinstance(self.groups, int) or self.groups < 1:
      raise ValueError(f'AlexNet groups={self.groups!r} must be a positive integer (1 or 2).')
    if not self.width > 0:
      raise ValueError(f'AlexNet width={self.width!r} must be positive.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'AlexNet dropout_rate={self.dropout_rate!r} must be in [0, 1).')
    if self.num_classes < 1:
      raise ValueError(f'AlexNet num_classes={self.num_classes!r} must be positive.')
    for field in ('conv1_kernel', 'conv1_stride'):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f'AlexNet {field}={value!r} must be an integer >= 1, or 0 for the '
                         'layout\'s own.')
    if self.remove_conv not in (0,) + REMOVABLE_CONVS:
      raise ValueError(f'AlexNet remove_conv={self.remove_conv!r} is not 0 (none) or one of the '
                       f'middle convolutions {REMOVABLE_CONVS}.')
    if self.remove_conv and self.variant != 'paper':
      raise ValueError(f'AlexNet remove_conv={self.remove_conv} takes a layer out of the paper '
                       f'layout; variant={self.variant!r} is fixed to its published weights.')

  def _inits(self, name: str) -> dict[str, Any]:
    if self.init_scheme == 'he':
      return dict(kernel_init=nn.initializers.he_normal(), bias_init=nn.initializers.zeros)
    bias = 1.0 if name in _PAPER_BIAS_ONE_LAYERS else 0.0
    return dict(kernel_init=nn.initializers.normal(stddev=0.01),
                bias_init=nn.initializers.constant(bias))

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f'AlexNet expects NHWC images [batch, height, width, channels]; got shape {x.shape}.')
    height, width = x.shape[1:3]
    layers = self.layers()
    if min(_feature_map_size(height, layers, self.overlapping_pool),
           _feature_map_size(width, layers, self.overlapping_pool)) < 1:
      smallest = min_input_size(self.variant, self.overlapping_pool, self.conv1_kernel,
                                self.conv1_stride)
      raise ValueError(
          f'Input {height}x{width} is too small for AlexNet(variant={self.variant!r}, '
          f'overlapping_pool={self.overlapping_pool}, conv1 {layers[0].kernel}x{layers[0].kernel} '
          f'stride {layers[0].stride}): its feature map vanishes before the last pool. Use '
          f'images of at least {smallest}x{smallest}.')

  def layers(self) -> tuple[ConvLayer, ...]:
    """The five convolutional stages this model runs (before `remove_conv`)."""
    return conv_layers(self.variant, self.conv1_kernel, self.conv1_stride)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    self._check_input(x)
    dtype = compute_dtype(self.dtype)
    activation = ACTIVATIONS[self.activation]
    window, stride = pool_shape(self.overlapping_pool)
    groups = self.groups if self.variant == 'paper' else 1  # torchvision's layout has no groups
    x = x.astype(dtype)

    # §3.5: LRN follows the ReLUs of conv1 and conv2; max-pools follow both LRNs and conv5.
    for index, layer in enumerate(self.layers(), start=1):
      if index == self.remove_conv:  # §7's depth ablation: the pool stays, so do the map sizes
        if layer.pool:
          x = cpu_ops.max_pool(x, window, stride, self.conv_impl)
        continue
      name = f'conv{index}'
      features = groups * max(1, round(layer.features * self.width / groups))
      # conv_impl: XLA's own convolution, or the same convolution rewritten where XLA's CPU
      # kernels are slow (docs/profiling.md), equal up to float rounding.
      x = nn.Conv(features, (layer.kernel, layer.kernel), strides=layer.stride,
                  padding=[(layer.padding, layer.padding)] * 2,
                  feature_group_count=groups if layer.grouped else 1,
                  conv_general_dilated_cls=cpu_ops.conv_factory(self.conv_impl),
                  dtype=dtype, param_dtype=jnp.float32, name=name, **self._inits(name))(x)
      x = activation(x)
      if layer.lrn and self.lrn:
        x = local_response_norm(x)
      if layer.pool:  # nn.max_pool's result; with cpu_ops, a faster gradient on CPU
        x = cpu_ops.max_pool(x, window, stride, self.conv_impl)

    if self.variant == 'torchvision':
      x = adaptive_avg_pool(x, _TORCHVISION_POOLED_SIZE)
    x = x.reshape(x.shape[0], -1)  # NHWC flatten: (h, w, c), c fastest

    hidden = max(1, round(_FC_HIDDEN * self.width))
    dropout_first = self.variant == 'torchvision'
    for name in ('fc6', 'fc7'):
      if dropout_first:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(hidden, dtype=dtype, param_dtype=jnp.float32, name=name, **self._inits(name))(x)
      x = activation(x)
      if not dropout_first:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32, name='fc8',
                 **self._inits('fc8'))(x)
    return x.astype(jnp.float32)
