"""AlexNet: the paper's layer table, parameter counts, LRN, groups, dropout and the knobs.

Full-size models are only traced (jax.eval_shape); anything computed runs at width 0.25 on the
smallest input the layout accepts.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax.model import AlexNet, local_response_norm, min_input_size

SMALL_SIZE = 67  # min_input_size('paper'): a 1x1 map after the last pool
NUM_CLASSES = 10


def _abstract_variables(model: AlexNet, size: int):
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), image)


def _param_count(model: AlexNet, size: int) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(_abstract_variables(model, size)))


def _layer_output_shapes(model: AlexNet, size: int) -> dict[str, tuple[int, ...]]:
  """Output shape (without batch) of every conv and fc layer, traced only."""
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

  def forward(variables, x):
    return model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])

  _, state = jax.eval_shape(forward, _abstract_variables(model, size), image)
  layers = [f'conv{i}' for i in range(1, 6)] + ['fc6', 'fc7', 'fc8']
  return {name: state['intermediates'][name]['__call__'][0].shape[1:] for name in layers}


def _small_model(**fields) -> AlexNet:
  fields = {'num_classes': NUM_CLASSES, 'width': 0.25, 'init_scheme': 'he', **fields}
  return AlexNet(**fields)


def _images(size: int = SMALL_SIZE, batch: int = 2, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)), jnp.float32)


def _init(model: AlexNet, size: int = SMALL_SIZE):
  return jax.jit(model.init)(jax.random.key(0), _images(size, batch=1))


@pytest.fixture(scope='module')
def small_variables():
  """Variables of `_small_model()`; knobs that leave the parameter shapes alone reuse them."""
  return _init(_small_model())


def _numpy_variables(model: AlexNet, size: int = SMALL_SIZE):
  """He-scaled random parameters drawn by NumPy, for tests of the forward pass rather than of the
  initializers: compiling the initializers' random number generation costs seconds per model."""
  rng = np.random.default_rng(0)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1
    scale = np.sqrt(2.0 / fan_in) if leaf.ndim > 1 else 0.1
    return jnp.asarray(rng.normal(scale=scale, size=leaf.shape), leaf.dtype)

  return jax.tree.map(draw, _abstract_variables(model, size))


@pytest.fixture(scope='module')
def single_tower_variables():
  return _numpy_variables(_small_model(groups=1, lrn=False))


# --- Layout -------------------------------------------------------------------------------------


def test_paper_layer_shapes_at_227():
  shapes = _layer_output_shapes(AlexNet(), 227)
  # conv2..conv5 keep their input's size (5x5 pad 2, 3x3 pad 1), so each shows the previous pool.
  assert shapes == {
      'conv1': (55, 55, 96),  # then pool1 -> 27x27x96
      'conv2': (27, 27, 256),  # then pool2 -> 13x13x256
      'conv3': (13, 13, 384),
      'conv4': (13, 13, 384),
      'conv5': (13, 13, 256),  # then pool3 -> 6x6x256
      'fc6': (4096,),
      'fc7': (4096,),
      'fc8': (1000,),
  }
  params = _abstract_variables(AlexNet(), 227)['params']
  assert params['fc6']['kernel'].shape == (6 * 6 * 256, 4096)  # pool3's 6x6x256 = 9216 inputs


def test_grouped_layers_see_half_the_channels():
  params = _abstract_variables(AlexNet(groups=2), 227)['params']
  kernel_shapes = {name: params[name]['kernel'].shape for name in params if name.startswith('conv')}
  assert kernel_shapes == {
      'conv1': (11, 11, 3, 96),  # HWIO
      'conv2': (5, 5, 48, 256),  # 96 / 2 input channels per group
      'conv3': (3, 3, 256, 384),  # across both halves
      'conv4': (3, 3, 192, 384),
      'conv5': (3, 3, 192, 256),
  }


@pytest.mark.parametrize('variant, groups, size, expected', [
    ('paper', 2, 227, 60_965_224),
    ('paper', 1, 227, 62_378_344),
    ('torchvision', 1, 224, 61_100_840),
])
def test_param_counts(variant, groups, size, expected):
  assert _param_count(AlexNet(variant=variant, groups=groups), size) == expected


def test_torchvision_layout_at_224():
  model = AlexNet(variant='torchvision')
  assert _layer_output_shapes(model, 224) == {
      'conv1': (55, 55, 64),
      'conv2': (27, 27, 192),
      'conv3': (13, 13, 384),
      'conv4': (13, 13, 256),
      'conv5': (13, 13, 256),
      'fc6': (4096,),
      'fc7': (4096,),
      'fc8': (1000,),
  }
  params = _abstract_variables(model, 224)['params']
  assert set(params) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8'}
  assert params['conv1']['kernel'].shape == (11, 11, 3, 64)
  assert params['conv2']['kernel'].shape == (5, 5, 64, 192)  # never grouped, whatever `groups` says
  assert params['fc6']['kernel'].shape == (9216, 4096)


@pytest.mark.parametrize('size', [63, 200, 300])
def test_torchvision_adaptive_pool_fixes_fc6_input(size):
  params = _abstract_variables(AlexNet(variant='torchvision'), size)['params']
  assert params['fc6']['kernel'].shape == (6 * 6 * 256, 4096)


def test_paper_fc6_input_follows_input_size():
  # 259 -> conv1 63 -> pool 31 -> pool 15 -> pool 7.
  params = _abstract_variables(AlexNet(), 259)['params']
  assert params['fc6']['kernel'].shape == (7 * 7 * 256, 4096)


def _adaptive_avg_pool_by_bins(x: np.ndarray, out: int) -> np.ndarray:
  """PyTorch's AdaptiveAvgPool2d on NHWC: bin i spans floor(i * H / out) .. ceil((i + 1) * H / out)."""
  height, width = x.shape[1:3]
  pooled = np.zeros((x.shape[0], out, out, x.shape[3]), np.float32)
  for i in range(out):
    h0, h1 = int(np.floor(i * height / out)), int(np.ceil((i + 1) * height / out))
    for j in range(out):
      w0, w1 = int(np.floor(j * width / out)), int(np.ceil((j + 1) * width / out))
      pooled[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return pooled


@pytest.mark.parametrize('height, width', [(13, 16), (7, 6), (6, 6), (4, 9)])
def test_adaptive_avg_pool_matches_pytorch_bins(height, width):
  x = np.random.default_rng(0).normal(size=(2, height, width, 5)).astype(np.float32)
  np.testing.assert_allclose(model_lib.adaptive_avg_pool(jnp.asarray(x), 6),
                             _adaptive_avg_pool_by_bins(x, 6), rtol=1e-5, atol=1e-6)


def test_torchvision_fc6_weights_convert_by_documented_permutation():
  """A torchvision fc6 weight [out, C*6*6] (CHW flatten), permuted as docs/model.md says, sees the
  same features here as there."""
  model = _small_model(variant='torchvision')
  size = 300  # conv5 map 17x17, pooled to 8x8, so the adaptive pool really averages
  images = _images(size, batch=1)
  variables = _numpy_variables(model, size)
  hidden, channels = variables['params']['fc7']['kernel'].shape[0], 64  # width 0.25
  torch_fc6 = np.random.default_rng(1).normal(size=(hidden, channels * 36)).astype(np.float32)
  variables['params']['fc6']['kernel'] = jnp.asarray(
      torch_fc6.reshape(hidden, channels, 6, 6).transpose(2, 3, 1, 0).reshape(36 * channels, hidden))

  _, state = model.apply(variables, images, capture_intermediates=True, mutable=['intermediates'])
  conv5 = np.maximum(np.asarray(state['intermediates']['conv5']['__call__'][0]), 0.0)
  pooled = np.stack([[conv5[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                      for j in range(8)] for i in range(8)])[None]  # MaxPool2d(3, 2): 17 -> 8
  features = _adaptive_avg_pool_by_bins(pooled, 6)
  torch_flat = features.transpose(0, 3, 1, 2).reshape(1, -1)  # torch.flatten of [N, C, 6, 6]
  expected = torch_flat @ torch_fc6.T + np.asarray(variables['params']['fc6']['bias'])
  np.testing.assert_allclose(state['intermediates']['fc6']['__call__'][0], expected,
                             rtol=1e-4, atol=1e-3)


def test_width_keeps_conv_channels_divisible_by_groups():
  params = _abstract_variables(AlexNet(width=0.3, groups=2), 227)['params']
  outs = [params[f'conv{i}']['kernel'].shape[-1] for i in range(1, 6)]
  assert outs == [28, 76, 116, 116, 76]  # 96, 256, 384, 384, 256 x 0.3, to a multiple of 2
  assert params['conv2']['kernel'].shape[2] == outs[0] // 2
  assert params['fc6']['kernel'].shape[1] == round(4096 * 0.3)


# --- Local response normalization (§3.3) --------------------------------------------------------


def _lrn_by_formula(a: np.ndarray, k: float, n: int, alpha: float, beta: float) -> np.ndarray:
  """The paper's formula, one channel at a time, with the sum clipped at both channel edges."""
  channels = a.shape[-1]
  b = np.empty_like(a)
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    b[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return b


@pytest.mark.parametrize('k, n, alpha, beta', [(2.0, 5, 1e-4, 0.75), (1.0, 3, 0.01, 0.5)])
def test_lrn_matches_formula(k, n, alpha, beta):
  a = np.random.default_rng(0).normal(scale=30.0, size=(2, 3, 4, 9)).astype(np.float32)
  b = local_response_norm(jnp.asarray(a), k=k, n=n, alpha=alpha, beta=beta)
  np.testing.assert_allclose(b, _lrn_by_formula(a, k, n, alpha, beta), rtol=1e-5)


def test_lrn_does_not_divide_alpha_by_n():
  # Five channels 10..50: the centre channel's window holds all of them, sum of squares 5500.
  a = np.array([10.0, 20.0, 30.0, 40.0, 50.0], np.float32)
  centre = float(local_response_norm(jnp.asarray(a))[2])
  paper = 30.0 / (2.0 + 1e-4 * 5500.0) ** 0.75  # 14.8668
  pytorch = 30.0 / (2.0 + 1e-4 / 5 * 5500.0) ** 0.75  # LocalResponseNorm(5, 1e-4, 0.75, 2): 17.1360
  assert centre == pytest.approx(paper, rel=1e-6)
  assert centre == pytest.approx(14.8668, abs=1e-4)
  assert pytorch == pytest.approx(17.1360, abs=1e-4)
  # PyTorch reproduces the paper with alpha = n * 1e-4.
  assert 30.0 / (2.0 + 5e-4 / 5 * 5500.0) ** 0.75 == pytest.approx(centre, rel=1e-6)


def test_lrn_matches_tensorflow():
  import tensorflow as tf  # heavy; only this test needs it

  a = np.random.default_rng(2).normal(scale=30.0, size=(2, 3, 4, 16)).astype(np.float32)
  expected = tf.nn.local_response_normalization(a, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
  np.testing.assert_allclose(local_response_norm(jnp.asarray(a)), expected.numpy(), rtol=1e-5)


def test_lrn_keeps_bfloat16():
  a = np.random.default_rng(1).normal(scale=30.0, size=(2, 7)).astype(np.float32)
  b = local_response_norm(jnp.asarray(a, jnp.bfloat16))
  assert b.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(b, np.float32), _lrn_by_formula(a, 2.0, 5, 1e-4, 0.75),
                             rtol=2e-2)


def test_lrn_rejects_even_window():
  with pytest.raises(ValueError, match='odd window'):
    local_response_norm(jnp.ones((2, 8)), n=4)


# --- Groups (§3.2) ------------------------------------------------------------------------------


def _grad_of_first_half_wrt_input(model: AlexNet, variables, layer: str) -> np.ndarray:
  """d sum(first half of `layer`'s output channels) / d `layer`'s input, through the real model."""
  images = _images(batch=1)
  input_shape = {'conv3': (1, 3, 3, 64), 'conv4': (1, 3, 3, 96)}[layer]  # width 0.25 at 67x67

  def first_half(delta):
    def perturb_input(call, args, kwargs, context):
      if context.module.name == layer and context.method_name == '__call__':
        args = (args[0] + delta,) + args[1:]
      return call(*args, **kwargs)

    with nn.intercept_methods(perturb_input):
      _, state = model.apply(variables, images, capture_intermediates=True,
                             mutable=['intermediates'])
    out = state['intermediates'][layer]['__call__'][0]
    return out[..., :out.shape[-1] // 2].sum()

  return np.asarray(jax.jit(jax.grad(first_half))(jnp.zeros(input_shape)))


def test_grouped_conv4_first_half_ignores_second_half_inputs(small_variables):
  grad = _grad_of_first_half_wrt_input(_small_model(groups=2), small_variables, 'conv4')
  half = grad.shape[-1] // 2
  assert np.all(grad[..., half:] == 0)
  assert np.any(grad[..., :half] != 0)


def test_conv3_connects_across_halves(small_variables):
  grad = _grad_of_first_half_wrt_input(_small_model(groups=2), small_variables, 'conv3')
  assert np.any(grad[..., grad.shape[-1] // 2:] != 0)


def test_single_tower_conv4_connects_across_halves(single_tower_variables):
  model = _small_model(groups=1, lrn=False)
  grad = _grad_of_first_half_wrt_input(model, single_tower_variables, 'conv4')
  assert np.any(grad[..., grad.shape[-1] // 2:] != 0)


# --- Dropout and the knobs ----------------------------------------------------------------------


def test_dropout_only_in_training_and_deterministic_per_key(small_variables):
  images = _images()
  apply = jax.jit(_small_model().apply, static_argnames='train')

  eval_a = apply(small_variables, images)
  eval_b = apply(small_variables, images, rngs={'dropout': jax.random.key(5)})
  np.testing.assert_array_equal(eval_a, eval_b)

  train_1 = apply(small_variables, images, train=True, rngs={'dropout': jax.random.key(1)})
  train_1_again = apply(small_variables, images, train=True, rngs={'dropout': jax.random.key(1)})
  train_2 = apply(small_variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(train_1, train_1_again)
  assert not np.allclose(train_1, train_2)
  assert not np.allclose(train_1, eval_a)


def test_training_without_dropout_key_fails(small_variables):
  with pytest.raises(Exception, match='dropout'):
    _small_model().apply(small_variables, _images(), train=True)


def _reference_logits(params, images, *, groups=2, lrn=True, activation='relu',
                      overlapping_pool=True, conv1_stride=4) -> np.ndarray:
  """The paper layout's forward pass (§3.5, eval mode) written directly in lax, without the model's
  code: convolutions as lax computes them, then the knobs as the paper describes them."""
  act = {'relu': jax.nn.relu, 'tanh': jnp.tanh}[activation]
  window, stride = (3, 2) if overlapping_pool else (2, 2)

  def conv(x, name, conv_stride, padding, feature_groups=1):
    y = jax.lax.conv_general_dilated(x, params[name]['kernel'], (conv_stride,) * 2,
                                     [(padding, padding)] * 2, feature_group_count=feature_groups,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
    return act(y + params[name]['bias'])

  def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), 'VALID')

  norm = local_response_norm if lrn else (lambda x: x)
  x = pool(norm(conv(images, 'conv1', conv1_stride, 0)))
  x = pool(norm(conv(x, 'conv2', 1, 2, groups)))
  x = conv(x, 'conv3', 1, 1)
  x = conv(x, 'conv4', 1, 1, groups)
  x = pool(conv(x, 'conv5', 1, 1, groups)).reshape(images.shape[0], -1)
  for name in ('fc6', 'fc7'):
    x = act(x @ params[name]['kernel'] + params[name]['bias'])
  return np.asarray(x @ params['fc8']['kernel'] + params['fc8']['bias'])


@pytest.mark.parametrize('fields, size', [
    ({}, SMALL_SIZE),
    ({'activation': 'tanh'}, SMALL_SIZE),
    ({'overlapping_pool': False}, 39),  # also a 1x1 map after pool3, so the same parameters
    ({'lrn': False}, SMALL_SIZE),
])
def test_each_knob_computes_what_the_paper_describes(small_variables, fields, size):
  # The model (on CPU through alexnet_jax/cpu_ops.py) against the lax reference above.
  logits = jax.jit(_small_model(**fields).apply)(small_variables, _images(size))
  expected = _reference_logits(small_variables['params'], _images(size), **fields)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_small_image_conv1_computes_the_paper_layout_at_stride_1():
  # conv1 5x5 at stride 1 on a 28x28 crop (configs/fashion_mnist.py): 24 -> pool 11 -> pool 5 ->
  # pool 2, so fc6 reads a 2x2 map of conv5's 64 channels (width 0.25).
  model = _small_model(conv1_kernel=5, conv1_stride=1)
  variables = _numpy_variables(model, 28)
  assert variables['params']['conv1']['kernel'].shape == (5, 5, 3, 24)
  assert variables['params']['fc6']['kernel'].shape == (2 * 2 * 64, 1024)
  logits = jax.jit(model.apply)(variables, _images(28))
  expected = _reference_logits(variables['params'], _images(28), conv1_stride=1)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_single_tower_without_lrn_computes_what_the_paper_describes(single_tower_variables):
  logits = jax.jit(_small_model(groups=1, lrn=False).apply)(single_tower_variables, _images())
  expected = _reference_logits(single_tower_variables['params'], _images(), groups=1, lrn=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bfloat16_close_to_float32_with_float32_params(small_variables):
  images = _images(seed=3)
  bf16_model = _small_model(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(bf16_model.init, jax.random.key(0), images)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))  # parameters stay float32
  fp32 = np.asarray(jax.jit(_small_model().apply)(small_variables, images))
  bf16 = np.asarray(jax.jit(bf16_model.apply)(small_variables, images))
  # bfloat16 keeps 8 significant bits (relative step 2^-8 ~ 0.4%); through 8 layers the logits
  # drift by a few percent of their scale at most.
  scale = np.abs(fp32).max()
  assert np.abs(bf16 - fp32).max() <= 0.05 * scale
  assert not np.array_equal(bf16, fp32)  # it really computed in bfloat16


def test_paper_init():
  model = _small_model(init_scheme='paper')
  variables = _init(model)
  for name, layer in variables['params'].items():
    assert np.std(layer['kernel']) == pytest.approx(0.01, rel=0.05), name
    assert np.mean(layer['kernel']) == pytest.approx(0.0, abs=1e-3), name
    expected_bias = 1.0 if name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0
    np.testing.assert_array_equal(layer['bias'], expected_bias, err_msg=name)
  # The forward pass with these weights is the paper's.
  logits = jax.jit(model.apply)(variables, _images())
  expected = _reference_logits(variables['params'], _images())
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_he_init(small_variables):
  for name, layer in small_variables['params'].items():
    fan_in = int(np.prod(layer['kernel'].shape[:-1]))  # per group for grouped convs
    assert np.std(layer['kernel']) == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.1), name
    np.testing.assert_array_equal(layer['bias'], 0.0, err_msg=name)


# --- Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant, overlapping_pool, smallest', [
    ('paper', True, 67), ('paper', False, 39), ('torchvision', True, 63), ('torchvision', False, 35),
])
def test_min_input_size_is_the_boundary(variant, overlapping_pool, smallest):
  assert min_input_size(variant, overlapping_pool) == smallest
  model = AlexNet(variant=variant, overlapping_pool=overlapping_pool)
  _abstract_variables(model, smallest)  # traces fine
  with pytest.raises(ValueError, match=f'at least {smallest}x{smallest}'):
    _abstract_variables(model, smallest - 1)


@pytest.mark.parametrize('kernel, stride, smallest', [
    (5, 1, 19),  # conv1 15 -> pool 7 -> pool 3 -> pool 1
    (3, 1, 17),  # conv1 15, as above
    (11, 1, 25),
    (5, 2, 33),  # conv1 (33 - 5) // 2 + 1 = 15
])
def test_min_input_size_follows_conv1(kernel, stride, smallest):
  assert min_input_size(conv1_kernel=kernel, conv1_stride=stride) == smallest
  model = AlexNet(conv1_kernel=kernel, conv1_stride=stride)
  conv1 = _abstract_variables(model, smallest)['params']['conv1']
  assert conv1['kernel'].shape[:2] == (kernel, kernel)
  message = f'{kernel}x{kernel} stride {stride}.*at least {smallest}x{smallest}'
  with pytest.raises(ValueError, match=message):
    _abstract_variables(model, smallest - 1)


def test_non_square_input_checks_both_sides():
  model = AlexNet()
  with pytest.raises(ValueError, match='227x60 is too small'):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 227, 60, 3), jnp.float32))


def test_rejects_non_nhwc_input():
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(AlexNet().init, jax.random.key(0), jax.ShapeDtypeStruct((227, 227, 3), jnp.float32))


@pytest.mark.parametrize('field, value, allowed', [
    ('activation', 'gelu', "'relu', 'tanh'"),
    ('variant', 'vgg', "'paper', 'torchvision'"),
    ('init_scheme', 'xavier', "'paper', 'he'"),
    ('dtype', 'float16', "'float32', 'bfloat16'"),
    ('dtype', 'fp32', "'float32', 'bfloat16'"),
])
def test_unknown_choice_names_allowed_values(field, value, allowed):
  with pytest.raises(ValueError, match=f'{field}=.{value}. is not one of {allowed}'):
    AlexNet(**{field: value})


@pytest.mark.parametrize('fields, problem', [
    ({'groups': 0}, 'groups=0'), ({'width': 0.0}, 'width=0.0'), ({'dropout_rate': 1.0}, 'dropout_rate'),
    ({'conv1_kernel': -1}, 'conv1_kernel=-1'), ({'conv1_stride': 1.5}, 'conv1_stride=1.5'),
])
def test_bad_numbers(fields, problem):
  with pytest.raises(ValueError, match=problem):
    AlexNet(**fields)


def test_dtype_accepts_strings_and_dtypes():
  for dtype in ('float32', 'bfloat16', jnp.float32, jnp.bfloat16, np.float32):
    AlexNet(dtype=dtype)
