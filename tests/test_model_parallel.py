"""The paper's two-tower split (config.model_parallel = 2) on a 4 x 2 mesh of 8 CPU devices.

It must compute the single-device `AlexNet`: the same logits and gradients from the same weights, the
same training trajectory as 8 x 1 data parallelism, and checkpoints either layout can restore.
"""

import collections
import json
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
import pytest

from alexnet_jax import data, evaluate, optim, steps, towers, train
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import workdir as workdir_lib
from configs import smoke

BATCH = 16


def small_config(**overrides):
  """The smoke config (width 0.25, 67x67 images, 10 classes) without dropout, unless overridden."""
  config = smoke.get_config()
  config.batch_size = BATCH
  config.model.dropout_rate = 0.0
  config.update_from_flattened_dict(overrides)  # keys like 'model.width'
  return config


def pixel_scale_images(seed=0):
  """Mean-subtracted 0..255 pixels are tens in size, large enough for LRN (§3.3) to bite."""
  rng = np.random.default_rng(seed)
  return (60.0 * rng.normal(size=(BATCH, 67, 67, 3))).astype(np.float32)


def tower_logits(model, params, images, mesh):
  pair = towers.TowerPair(model)
  forward = jax.shard_map(lambda p, x: pair.apply({'params': p}, x), mesh=mesh,
                          in_specs=(towers.state_specs(p := params), P('data')),
                          out_specs=P('data'), check_vma=False)
  return np.asarray(jax.jit(forward)(p, images))


def assert_trees_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def model_parallel(config, model, tx, devices=None):
  """`parallel.make_parallel` of `config` with `model_parallel=2`: the towers' layout."""
  config = config.copy_and_resolve_references()
  config.model_parallel = 2
  return parallel_lib.make_parallel(config, model, tx, devices)


@pytest.fixture(scope='module')
def small():
  """The small model, its optimizer and initial state, and both parallel layouts of it."""
  config = small_config(batch_size=32, synthetic_eval_examples=40)
  model = steps.create_model(config, 10)
  tx = optim.create_optimizer(config, steps_per_epoch=16, total_steps=8)
  return types.SimpleNamespace(
      config=config, model=model, tx=tx, host_state=steps.create_train_state(config, model, tx),
      towers=model_parallel(config, model, tx),
      data_parallel=parallel_lib.make_parallel(config, model, tx))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_logits_equal_the_single_device_model(small, dtype, monkeypatch):
  model = small.model.clone(dtype=dtype)
  params = small.host_state.params
  images = pixel_scale_images()
  expected = np.asarray(model.apply({'params': params}, images))
  scale = np.abs(expected).max()
  # float32: the towers sum the same products as the single device, in another blocking order.
  # bfloat16: each layer's output is rounded to 8 bits of mantissa, so one-ulp differences grow.
  tolerance = {'float32': 1e-5, 'bfloat16': 3e-2}[dtype] * scale
  got = tower_logits(model, params, images, small.towers.mesh)
  np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
  if dtype == 'float32':
    # The LRN exchange across the tower boundary is needed: borrowing 1 map instead of 2 is visible.
    monkeypatch.setattr(towers, '_LRN_RADIUS', 1)
    wrong = tower_logits(model, params, images, small.towers.mesh)
    assert np.abs(wrong - expected).max() > 30 * tolerance


def test_a_small_image_conv1_splits_into_towers_too(small):
  # configs/fashion_mnist.py's conv1 (5x5, stride 1) on 28x28 crops.
  model = small.model.clone(conv1_kernel=5, conv1_stride=1)
  params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 28, 28, 3)))['params']
  images = (60.0 * np.random.default_rng(3).normal(size=(BATCH, 28, 28, 3))).astype(np.float32)
  expected = np.asarray(model.apply({'params': params}, images))
  got = tower_logits(model, params, images, small.towers.mesh)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_dropout_in_training_is_a_function_of_the_key(small):
  model = small.model.clone(dropout_rate=0.5)
  pair = towers.TowerPair(model)
  forward = jax.jit(jax.shard_map(
      lambda p, x, key: pair.apply({'params': p}, x, train=True, rngs={'dropout': key}),
      mesh=small.towers.mesh, in_specs=(towers.state_specs(small.host_state.params),
                                        P('data'), P()),
      out_specs=P('data'), check_vma=False))
  images = pixel_scale_images()
  first = forward(small.host_state.params, images, jax.random.key(0))
  np.testing.assert_array_equal(first, forward(small.host_state.params, images, jax.random.key(0)))
  assert not np.allclose(first, forward(small.host_state.params, images, jax.random.key(1)))
  assert not np.allclose(first, tower_logits(small.model, small.host_state.params, images,
                                             small.towers.mesh))


def _gradient_recorder() -> optax.GradientTransformation:
  """Leaves params alone and keeps the step's (data-averaged) gradients as its state, shaped like the
  params and so split like them; wrapped like optim's optimizers, which train_step expects."""
  record = optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))
  return optax.inject_hyperparams(lambda learning_rate, plateau_scale: record)(
      learning_rate=0.0, plateau_scale=1.0)


def test_train_step_gradients_equal_jax_grad_of_the_single_device_loss(small):
  model, tx = small.model, _gradient_recorder()
  params = small.host_state.params
  images = pixel_scale_images(seed=1) / 30
  labels = np.arange(BATCH, dtype=np.int32) % 10

  def loss_fn(params):
    log_probs = jax.nn.log_softmax(model.apply({'params': params}, images))
    return steps.cross_entropy(log_probs, labels).mean()

  loss, expected = jax.value_and_grad(loss_fn)(params)
  parallel = model_parallel(small.config, model, tx)
  host_state = small.host_state.replace(opt_state=jax.tree.map(np.asarray, tx.init(params)))
  state, metrics = parallel.train_step(parallel.put_state(host_state),
                                       parallel.put_batch({'image': images, 'label': labels}))
  grads = parallel.fetch(state.opt_state.inner_state)
  # Each tower's weight gradient arrives through the transposes of the all_gathers (psum_scatter);
  # a doubled or missing half would be off by 100%. float32 summation order: 1e-5 of each leaf's scale.
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(),
                               err_msg=jax.tree_util.keystr(path))
  assert float(parallel.fetch(metrics['loss'])) == pytest.approx(float(loss), rel=1e-5)
  assert int(parallel.fetch(state.step)) == 1


def _train(parallel, state, config, num_steps):
  state = parallel.put_state(state)
  batches = data.train_batches(config, start_step=0, local_batch_size=config.batch_size,
                               process_index=0, process_count=1)
  for _ in range(num_steps):
    state, metrics = parallel.train_step(state, parallel.put_batch(next(batches)))
  return state, parallel.fetch(metrics)


def test_four_by_two_trains_like_eight_way_data_parallel_and_checkpoints_carry_over(small, tmp_path):
  config, towers, data_parallel = small.config, small.towers, small.data_parallel
  assert towers.mesh.devices.shape == (4, 2) and data_parallel.mesh.devices.shape == (8,)
  data_state, data_metrics = _train(data_parallel, small.host_state, config, num_steps=3)
  tower_state, tower_metrics = _train(towers, small.host_state, config, num_steps=3)

  # As in tests/test_train.py's 1 vs 8 devices: float32 sums in another order, through 3 steps of
  # momentum SGD.
  assert_trees_close(data_parallel.fetch(data_state.params), towers.fetch(tower_state.params),
                     rtol=1e-4, atol=1e-5)
  assert_trees_close(data_parallel.fetch(data_state.opt_state), towers.fetch(tower_state.opt_state),
                     rtol=1e-4, atol=1e-6)
  assert set(data_metrics) == set(tower_metrics)
  for name, value in data_metrics.items():
    assert float(tower_metrics[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
  assert not np.allclose(small.host_state.params['fc8']['kernel'],
                         towers.fetch(tower_state.params)['fc8']['kernel'])
  # Each device holds its tower: half of conv2's 64 filters, and their momentum.
  for leaf in (tower_state.params['conv2']['kernel'], tower_state.opt_state.inner_state[2].trace['conv2']['kernel']):
    assert {shard.data.shape for shard in leaf.addressable_shards} == {leaf.shape[:3] + (32,)}

  data_eval = train.evaluate(data_parallel, data_state, config, local_batch_size=16)
  tower_eval = train.evaluate(towers, tower_state, config, local_batch_size=16)
  assert tower_eval['count'] == data_eval['count'] == 40
  assert tower_eval == pytest.approx(data_eval, rel=1e-4)

  # A model-parallel checkpoint restores as data parallel's replicated state, and back.
  for name, source, source_state, target in (
      ('towers', towers, tower_state, data_parallel),
      ('data_parallel', data_parallel, data_state, towers)):
    checkpointer = workdir_lib.Checkpointer(str(tmp_path / name), keep=1, async_save=False)
    checkpointer.save(3, source.state_for_checkpoint(source_state))
    checkpointer.wait()
    restored = target.put_state(checkpointer.restore(target.abstract_state(small.host_state)))
    checkpointer.close()
    assert_trees_close(source.fetch(source_state), target.fetch(restored), rtol=0, atol=0)
    next_state, _ = target.train_step(restored, target.put_batch(next(data.train_batches(
        config, start_step=3, local_batch_size=32, process_index=0, process_count=1))))
    assert int(target.fetch(next_state.step)) == 4


def test_adamw_moments_are_split_like_the_weights_and_train_like_data_parallel():
  # AdamW keeps two moments per weight; with the towers they are split like the weights they
  # belong to, and the trajectory is data parallelism's.
  config = small_config(batch_size=32, optimizer='adamw', learning_rate=1e-3, weight_decay=0.05)
  model = steps.create_model(config, 10)
  tx = optim.create_optimizer(config, steps_per_epoch=16, total_steps=8)
  host_state = steps.create_train_state(config, model, tx)
  towers = model_parallel(config, model, tx)
  data_parallel = parallel_lib.make_parallel(config, model, tx)
  data_state, _ = _train(data_parallel, host_state, config, num_steps=2)
  tower_state, _ = _train(towers, host_state, config, num_steps=2)
  # The moments are smooth in the gradients: float32 summation order only. Adam's first steps move
  # each weight by about lr * g / |g|, so where a gradient is near 0 the other order can move it
  # by up to lr (seen: 1 weight in 1M, by 2e-5): params within a tenth of lr.
  assert_trees_close(data_parallel.fetch(data_state.opt_state), towers.fetch(tower_state.opt_state),
                     rtol=1e-4, atol=1e-6)
  assert_trees_close(data_parallel.fetch(data_state.params), towers.fetch(tower_state.params),
                     rtol=0, atol=1e-4)
  moments = [leaf for leaf in jax.tree.leaves(tower_state.opt_state)
             if leaf.shape == tower_state.params['conv2']['kernel'].shape]
  assert len(moments) == 2  # mu and nu of conv2's kernel
  for leaf in moments:
    assert {shard.data.shape for shard in leaf.addressable_shards} == {leaf.shape[:3] + (32,)}
    assert float(jnp.abs(leaf).max()) > 0


def test_towers_communicate_only_where_the_paper_has_them(small):
  state = small.towers.put_state(small.host_state)
  batch = small.towers.put_batch({'image': np.zeros((32, 67, 67, 3), np.float32),
                                  'label': np.zeros(32, np.int32)})
  hlo = small.towers.train_step.lower(state, batch).as_text()
  ops = re.findall(r'stablehlo\.(all_gather|all_reduce|reduce_scatter|collective_permute|all_to_all)'
                   r'".*?(?:replica_groups|source_target_pairs) = dense<(\[\[.*?\]\])>', hlo)
  pairs, columns = '[[0, 1], [2, 3], [4, 5], [6, 7]]', '[[0, 2, 4, 6], [1, 3, 5, 7]]'
  counts = collections.Counter(
      (op, 'model' if groups == pairs else 'data' if groups == columns else groups)
      for op, groups in ops if op != 'collective_permute')
  assert counts == {
      # Forward: conv3's input, fc6's, fc7's, fc8's, and the logits.
      ('all_gather', 'model'): 5,
      # Backward: the transposes of the 4 gathers that feed a layer (the logits' needs none).
      ('reduce_scatter', 'model'): 4,
      # One flag: whether both towers' gradients are finite.
      ('all_reduce', 'model'): 1,
      # Data parallelism: 16 weight gradients (8 layers x kernel, bias) and 3 metrics averaged.
      ('all_reduce', 'data'): 19,
  }
  # The LRN exchange after conv1 and conv2, forward and backward, each within a pair.
  within_pairs = {(a, a ^ 1) for a in range(8)}
  permutes = [groups for op, groups in ops if op == 'collective_permute']
  assert len(permutes) == 4
  for groups in permutes:
    assert {(int(a), int(b)) for a, b in re.findall(r'\[(\d+), (\d+)\]', groups)} == within_pairs


@pytest.mark.parametrize('overrides, devices, message', [
    ({'model.groups': 1}, 8, 'needs model.variant=\'paper\' and model.groups=2'),
    ({'model.variant': 'torchvision', 'image_size': 224}, 8, 'got variant=\'torchvision\''),
    ({'num_classes': 11}, 8, 'num_classes must be even'),
    ({'optimizer': 'lars'}, 8, 'config.optimizer=\'lars\''),
    ({}, 3, '3 devices is odd'),
])
def test_unsupported_setups_fail_with_a_clear_message(overrides, devices, message):
  config = small_config(**overrides)
  model = steps.create_model(config, config.num_classes)
  with pytest.raises(ValueError, match=re.escape(message)):
    model_parallel(config, model, optax.sgd(0.1), jax.devices()[:devices])


def test_training_loop_runs_model_parallel_and_resumes_data_parallel(tmp_path):
  config = small_config(num_train_steps=8, eval_every_steps=4, log_every_steps=4,
                        checkpoint_every_steps=4, model_parallel=2, batch_size=32)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(jax.device_get(state.step)) == 8
  # evaluate reads the model-parallel workdir data-parallel (the towers only change the layout), on
  # any device count, and reproduces the training run's last eval up to the towers' summation order.
  with open(tmp_path / 'metrics.jsonl') as f:
    trained = [r for r in map(json.loads, f) if r['split'] == 'eval'][-1]
  record = evaluate.evaluate_workdir(str(tmp_path), 'latest')
  assert record['step'] == trained['step'] == 8
  for key in ('top1_err', 'top5_err', 'loss'):
    np.testing.assert_allclose(record[key], trained[key], rtol=1e-4, err_msg=key)
  one_device = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={tmp_path}'], capture_output=True,
      text=True, env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
      check=False)
  assert one_device.returncode == 0, one_device.stderr[-3000:]
  with open(tmp_path / 'metrics.jsonl') as f:
    assert json.loads(f.readlines()[-1])['loss'] == pytest.approx(trained['loss'], rel=1e-4)
  # Checkpoints are interchangeable: the same workdir continues with model_parallel=1.
  config = small_config(num_train_steps=12, eval_every_steps=4, log_every_steps=4,
                        checkpoint_every_steps=4, model_parallel=1, batch_size=32)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(jax.device_get(state.step)) == 12
