"""cpu_ops computes what lax computes: convolution outputs and both gradients, max-pools and theirs.

Tolerance: the convolution rewrites only regroup the same float32 sums, so results agree to float
rounding; every comparison allows 1e-5 of the largest magnitude (max |ours - lax| <= 1e-5 * max |lax|),
1e-4 through the whole network. The max-pool gradient must route each output gradient to the same input
as XLA's select-and-scatter; with integer gradients that is compared exactly.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import cpu_ops, optim, steps
from alexnet_jax import parallel as parallel_lib
from alexnet_jax.model import AlexNet
from configs import smoke

NHWC = ('NHWC', 'HWIO', 'NHWC')


def max_relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def conv_and_grads(conv, x, w, stride, padding, groups, dtype=jnp.float32):
  """Output and (dL/dx, dL/dw) of a loss that weighs every output element differently."""
  def loss(x, w):
    y = conv(x.astype(dtype), w.astype(dtype), (stride, stride), padding,
             dimension_numbers=NHWC, feature_group_count=groups)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  return y, grads


@pytest.mark.parametrize('size, in_c, kernel, stride, padding, out_c, groups', [
    (35, 3, 11, 4, [(0, 0)] * 2, 16, 1),  # the paper's conv1: space-to-depth
    (36, 3, 11, 4, [(2, 2)] * 2, 8, 1),  # torchvision's conv1: padded, output edge cut by the blocks
    (30, 4, 5, 3, [(1, 2), (0, 1)], 6, 1),  # uneven padding and block grid, kernel not a multiple of 3
    (11, 8, 5, 1, [(2, 2)] * 2, 12, 2),  # conv2: grouped 5x5
    (7, 16, 3, 1, [(1, 1)] * 2, 8, 1),  # conv3: dense 3x3
    (7, 16, 3, 1, [(1, 1)] * 2, 8, 2),  # conv4/conv5: grouped 3x3
    (9, 32, 3, 2, 'SAME', 8, 2),  # strided with many channels: no space-to-depth
])
def test_matches_lax_convolution(size, in_c, kernel, stride, padding, out_c, groups):
  rng = np.random.default_rng(size + kernel)
  x = jnp.asarray(rng.standard_normal((2, size, size, in_c), np.float32))
  w = jnp.asarray(rng.standard_normal((kernel, kernel, in_c // groups, out_c), np.float32))
  y_ref, (dx_ref, dw_ref) = conv_and_grads(lax.conv_general_dilated, x, w, stride, padding, groups)
  y, (dx, dw) = conv_and_grads(cpu_ops.conv_general_dilated, x, w, stride, padding, groups)
  assert y.shape == y_ref.shape
  assert max_relative_error(y, y_ref) < 1e-5
  assert max_relative_error(dx, dx_ref) < 1e-5
  assert max_relative_error(dw, dw_ref) < 1e-5


def test_bfloat16_matches_within_bfloat16_rounding():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 11, 11, 8), np.float32))
  w = jnp.asarray(rng.standard_normal((5, 5, 4, 12), np.float32))
  y_ref, (_, dw_ref) = conv_and_grads(lax.conv_general_dilated, x, w, 1, [(2, 2)] * 2, 2, jnp.bfloat16)
  y, (_, dw) = conv_and_grads(cpu_ops.conv_general_dilated, x, w, 1, [(2, 2)] * 2, 2, jnp.bfloat16)
  assert y.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  assert max_relative_error(y, y_ref) < 1e-2
  assert max_relative_error(dw, dw_ref) < 2e-2


def test_unhandled_arguments_fall_back_to_lax():
  """Dilation is not rewritten: the call is lax's own, bit for bit."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 9, 9, 2), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 2, 4), np.float32))
  args = ((1, 1), 'VALID', None, (2, 2), NHWC)
  np.testing.assert_array_equal(cpu_ops.conv_general_dilated(x, w, *args),
                                lax.conv_general_dilated(x, w, *args))


def flax_max_pool(x, window, stride):
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')


@pytest.mark.parametrize('shape, window, stride', [
    ((2, 13, 13, 5), 3, 2),  # the paper's overlapping pools on an odd map (55, 27, 13 in the model)
    ((2, 14, 11, 3), 3, 2),  # even height: the last input row is in no window
    ((2, 12, 9, 4), 2, 2),  # the traditional 2x2/2 pools (overlapping_pool=False)
    ((1, 10, 10, 2), 3, 3),  # stride = window
    ((1, 11, 11, 2), 2, 3),  # window < stride: input positions no window reaches
])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_and_its_gradient_equal_flax_on_ties_too(shape, window, stride, dtype):
  """ReLU'd inputs rounded to a coarse grid: many windows hold several equal maxima (all-zero ones
  included), where the gradient must go to the first maximum, as select-and-scatter sends it. Small
  integer output gradients keep every sum exact (overlapping windows add up to 4 of them in some
  order), so the routing is compared exactly."""
  x = jnp.asarray(np.round(np.maximum(np.random.default_rng(0).standard_normal(shape), 0) * 2) / 2,
                  dtype)
  assert len(np.unique(np.asarray(x, np.float32))) < 8  # ties everywhere
  weights = jnp.asarray(np.random.default_rng(1).integers(
      -8, 9, flax_max_pool(x, window, stride).shape), jnp.float32)

  def value_and_grad(pool):
    loss = lambda x: jnp.sum(pool(x, window, stride).astype(jnp.float32) * weights)
    return jax.jit(jax.value_and_grad(loss))(x), jax.jit(lambda x: pool(x, window, stride))(x)

  (loss, dx), y = value_and_grad(cpu_ops.max_pool)
  (loss_ref, dx_ref), y_ref = value_and_grad(flax_max_pool)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  assert dx.dtype == dx_ref.dtype == dtype
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))
  assert loss == loss_ref


def test_auto_picks_the_rewrites_on_cpu_only(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert cpu_ops.resolve('auto') == 'cpu_ops'
  assert cpu_ops.conv_factory('auto')() is cpu_ops.conv_general_dilated
  assert cpu_ops.conv_factory('lax')() is lax.conv_general_dilated
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cpu_ops.resolve('auto') == 'lax'
  assert cpu_ops.conv_factory('auto')() is lax.conv_general_dilated
  with pytest.raises(ValueError, match="conv_impl='cudnn' is not one of"):
    cpu_ops.resolve('cudnn')


@pytest.mark.parametrize('groups', [2, 1])
def test_paper_model_logits_and_gradients_equal_through_both_paths(groups):
  """The whole paper network (small width and image) with `conv_impl` 'cpu_ops' (what CPUs run) and
  'lax' (what GPUs run): the same logits and parameter gradients, to float rounding."""
  model = AlexNet(num_classes=10, width=0.125, init_scheme='he', groups=groups)
  images = jnp.asarray(np.random.default_rng(2).standard_normal((2, 67, 67, 3), np.float32))
  labels = jnp.array([3, 7])
  params = model.init(jax.random.PRNGKey(0), images)['params']

  def logits_and_grads(conv_impl):
    def loss(params):
      logits = model.clone(conv_impl=conv_impl).apply({'params': params}, images)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits
    return jax.jit(jax.grad(loss, has_aux=True))(params)

  grads, logits = logits_and_grads('cpu_ops')
  grads_ref, logits_ref = logits_and_grads('lax')
  assert max_relative_error(logits, logits_ref) < 1e-4
  assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
  # Both paths really ran: the regrouped sums round differently somewhere.
  assert not np.array_equal(grads['conv1']['kernel'], grads_ref['conv1']['kernel'])
  for name in grads_ref:
    assert max_relative_error(grads[name]['kernel'], grads_ref[name]['kernel']) < 1e-4, name
    assert max_relative_error(grads[name]['bias'], grads_ref[name]['bias']) < 1e-4, name


def test_a_full_train_step_is_the_same_through_both_paths():
  """The project's train step (SGD with momentum, dropout, uint8 regions resized on the device,
  shard_map over 8 devices) from one state and batch, with each convolution path."""
  config = smoke.get_config()
  config.model.width = 0.125
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 80, 80, 3), np.uint8),
           'window': np.stack([rng.integers(0, 10, 16), rng.integers(0, 10, 16),
                               rng.integers(67, 71, 16)], 1).astype(np.int32),
           'flip': rng.integers(0, 2, 16).astype(bool),
           'rgb_shift': rng.normal(size=(16, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  results = {}
  for conv_impl in ('cpu_ops', 'lax'):
    config.model.conv_impl = conv_impl
    model = steps.create_model(config, 10)
    tx = optim.create_optimizer(config, steps_per_epoch=10, total_steps=10)
    parallel = parallel_lib.make_parallel(config, model, tx)
    state = parallel.put_state(steps.create_train_state(config, model, tx))
    state, metrics = parallel.train_step(state, parallel.put_batch(batch))
    results[conv_impl] = parallel.fetch((state.params, state.opt_state, metrics))
  params, opt_state, metrics = results['cpu_ops']
  params_ref, opt_state_ref, metrics_ref = results['lax']
  assert abs(metrics['loss'] - metrics_ref['loss']) < 1e-5 * abs(metrics_ref['loss'])
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path((params, opt_state)),
                          jax.tree.leaves((params_ref, opt_state_ref))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert not np.array_equal(params['conv1']['kernel'], params_ref['conv1']['kernel'])
