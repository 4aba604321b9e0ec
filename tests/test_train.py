"""The train step, its two parallel wrappers, evaluation, resume and the loop (8 CPU devices)."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from tensorboard.backend.event_processing import event_accumulator

from alexnet_jax import data, optim, steps, train
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import workdir as workdir_lib
from configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """The smoke config, narrower and shorter: seconds per run on CPU."""
  config = smoke.get_config()
  config.model.width = 0.125
  config.batch_size = 32
  config.synthetic_train_examples = 512
  config.synthetic_eval_examples = 96
  config.update_from_flattened_dict(overrides)  # keys like 'model.width'
  return config


def run_steps(config, devices, num_steps, parallelism='shard_map'):
  """Params after `num_steps` train steps on `devices`, fed the data module's batches."""
  config.parallelism = parallelism
  info = data.get_dataset_info(config)
  model = steps.create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch=16, total_steps=max(num_steps, 1))
  parallel = parallel_lib.make_parallel(config, model, tx, devices)
  state = parallel.put_state(steps.create_train_state(config, model, tx))
  batches = data.train_batches(config, start_step=0, local_batch_size=config.batch_size,
                               process_index=0, process_count=1)
  for _ in range(num_steps):
    state, _ = parallel.train_step(state, parallel.put_batch(next(batches)))
  return parallel.fetch(state.params)


def assert_trees_close(a, b, rtol, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_eight_devices_match_one_device_and_pmap_matches_shard_map():
  # Dropout off: its masks are drawn per device, so they differ between device counts by design.
  config = tiny_config(**{'model.dropout_rate': 0.0})
  assert jax.device_count() == 8
  one = run_steps(config, jax.devices()[:1], num_steps=3)
  eight = run_steps(config, jax.devices(), num_steps=3)
  eight_pmap = run_steps(config, jax.devices(), num_steps=3, parallelism='pmap')
  # The mean over 8 shards of 4 examples sums in another order than over 32 at once: float32
  # rounding, amplified a little by 3 steps of momentum SGD.
  assert_trees_close(one, eight, rtol=1e-4, atol=1e-5)
  assert_trees_close(eight, eight_pmap, rtol=1e-5, atol=1e-6)
  # And the params did move: the comparison is not between two copies of the init.
  init = run_steps(config, jax.devices()[:1], num_steps=0)
  assert not np.allclose(init['fc8']['kernel'], one['fc8']['kernel'])


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_a_step_with_a_nan_gradient_is_not_applied_and_an_overflowed_update_is_caught(tmp_path,
                                                                                      parallelism):
  config = tiny_config(parallelism=parallelism)
  info = data.get_dataset_info(config)
  model = steps.create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch=16, total_steps=4)
  parallel = parallel_lib.make_parallel(config, model, tx, jax.devices()[:2])
  state = parallel.put_state(steps.create_train_state(config, model, tx))
  batch = next(data.train_batches(config, start_step=0, local_batch_size=config.batch_size,
                                  process_index=0, process_count=1))
  checkpointer = workdir_lib.Checkpointer(str(tmp_path), keep=2)

  state, _ = parallel.train_step(state, parallel.put_batch(batch))  # a good step
  good = parallel.fetch((state.params, state.opt_state))
  poisoned = dict(batch, image=batch['image'].copy())
  poisoned['image'][-1, 0, 0, 0] = np.nan  # one pixel of one example, on the second device
  state, step_metrics = parallel.train_step(state, parallel.put_batch(poisoned))
  assert not np.isfinite(parallel.fetch(step_metrics['loss']))
  assert parallel.fetch((state.step, state.nonfinite_steps, state.first_nonfinite_step)) == (2, 1, 1)
  for kept, before in zip(jax.tree.leaves(parallel.fetch((state.params, state.opt_state))),
                          jax.tree.leaves(good)):
    np.testing.assert_array_equal(kept, before)
  with pytest.raises(train.NonFiniteLossError, match=r'The loss or a gradient became NaN/Inf at step 2 '
                     r'\(that update was not applied\)\. No checkpoint was written\.'):
    train.check_finite(state, config, parallel, checkpointer)
  with config.unlocked():
    config.skip_nonfinite_steps = True
  assert train.check_finite(state, config, parallel, checkpointer) == 1

  # Finite gradients, params pushed to Inf (what a huge rate does): refused even when skipping.
  overflowed = state.replace(params=jax.tree.map(lambda x: x * np.float32(np.inf), state.params))
  with pytest.raises(train.NonFiniteLossError, match=r'The parameters or optimizer state became NaN/Inf '
                     r'by step 2 although the losses and gradients were finite: an update overflowed'):
    train.check_finite(overflowed, config, parallel, checkpointer)
  checkpointer.close()


def test_paper_sgd_is_the_papers_update_rule():
  # v <- 0.9 v - 0.0005 lr w - lr g ;  w <- w + v   (§5), with a rate that changes mid-way.
  tx = optim.paper_sgd(learning_rate=lambda count: jnp.where(count < 2, 0.1, 0.01),
                       momentum=0.9, weight_decay=5e-4)
  w = np.array([1.0, -2.0], np.float32)
  params, state = jnp.asarray(w), tx.init(jnp.asarray(w))
  v = np.zeros(2, np.float32)
  for step in range(4):
    g = np.array([0.3, 0.1 * step], np.float32)
    lr = 0.1 if step < 2 else 0.01
    v = 0.9 * v - 5e-4 * lr * w - lr * g
    w = w + v
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, w, rtol=1e-6)


@pytest.mark.parametrize('schedule', ['step', 'cosine', 'constant', 'plateau'])
def test_learning_rate_schedules_with_warmup(schedule):
  config = tiny_config(lr_schedule=schedule, warmup_epochs=1.0, learning_rate=0.1,
                       step_epochs=(2, 3))
  rates = optim.create_learning_rate_schedule(config, steps_per_epoch=10, total_steps=40)
  assert float(rates(0)) == 0.0 and float(rates(5)) == pytest.approx(0.05)
  assert float(rates(10)) == pytest.approx(0.1)
  if schedule == 'step':
    assert float(rates(25)) == pytest.approx(0.01) and float(rates(35)) == pytest.approx(0.001)
  if schedule == 'cosine':
    assert float(rates(25)) == pytest.approx(0.05) and float(rates(40)) == pytest.approx(0.0)
  if schedule in ('constant', 'plateau'):
    assert float(rates(39)) == pytest.approx(0.1)


def test_step_schedule_keeps_every_reduction():
  # An epoch within the warmup divides the rate when the warmup ends; a repeated epoch divides twice.
  config = tiny_config(lr_schedule='step', warmup_epochs=1.0, learning_rate=0.1, step_epochs=(1, 3))
  rates = optim.create_learning_rate_schedule(config, steps_per_epoch=10, total_steps=40)
  assert [float(rates(s)) for s in (15, 35)] == pytest.approx([0.01, 0.001])
  config = tiny_config(lr_schedule='step', learning_rate=0.1, step_epochs=(2, 2))
  rates = optim.create_learning_rate_schedule(config, steps_per_epoch=10, total_steps=40)
  assert [float(rates(s)) for s in (15, 25)] == pytest.approx([0.1, 0.001])


def test_linear_scaling_of_the_learning_rate():
  config = tiny_config(scale_lr_with_batch=True, learning_rate=0.01, base_batch_size=128,
                       batch_size=512)
  assert optim.base_learning_rate(config) == pytest.approx(0.04)


def test_eval_on_an_odd_sized_set_counts_every_example_once():
  config = tiny_config(synthetic_eval_examples=37)
  info = data.get_dataset_info(config)
  model = steps.create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, 16, 10)
  parallel = parallel_lib.make_parallel(config, model, tx)
  host_state = steps.create_train_state(config, model, tx)
  state = parallel.put_state(host_state)
  results = train.evaluate(parallel, state, config, local_batch_size=16)
  assert results['count'] == 37
  # The same numbers computed directly, one example at a time, on one device.
  examples = list(data.eval_batches(config, local_batch_size=37, process_index=0, process_count=1))
  assert len(examples) == 1 and examples[0]['mask'].all()
  logits = model.apply({'params': host_state.params}, examples[0]['image'])
  log_probs = jax.nn.log_softmax(logits)
  labels = examples[0]['label']
  expected_loss = float(-np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], 1)))
  expected_top1 = float(np.mean(np.argmax(logits, -1) != labels))
  assert results['loss'] == pytest.approx(expected_loss, rel=1e-5)
  assert results['top1_err'] == pytest.approx(expected_top1)


def _eval_sums(params, batch, model, config):
  """steps.eval_step over the 8 devices, as training runs it."""
  return jax.jit(jax.shard_map(
      lambda b: steps.eval_step(params, b, model=model, augment=config.augment),
      mesh=jax.sharding.Mesh(np.asarray(jax.devices()), ('data',)),
      in_specs=jax.sharding.PartitionSpec('data'), out_specs=jax.sharding.PartitionSpec()))(batch)


def _ten_crops(batch):
  """The five crops of each image in `batch` and their mirrors, as the device makes them."""
  return np.concatenate([batch['image'], batch['image'][:, :, :, ::-1]], axis=1)


def test_ten_crop_eval_averages_softmax_predictions():
  config = tiny_config(eval_crops=10, synthetic_eval_examples=8)
  info = data.get_dataset_info(config)
  model = steps.create_model(config, info.num_classes)
  params = steps.create_train_state(config, model, optax.sgd(0.1)).params
  batch = next(data.eval_batches(config, local_batch_size=8, process_index=0, process_count=1))
  crops = np.array(batch['image'])
  crops[:, 1:] += np.random.default_rng(0).normal(size=crops[:, 1:].shape).astype(np.float32)
  batch = dict(batch, image=crops)
  sums = _eval_sums(params, batch, model, config)
  ten = _ten_crops(batch)
  probs = jax.nn.softmax(model.apply({'params': params}, ten.reshape((-1,) + ten.shape[2:])))
  mean_probs = np.asarray(probs).reshape(8, 10, -1).mean(1)
  expected_loss = -np.log(mean_probs[np.arange(8), batch['label']]).sum()
  assert float(sums['count']) == 8
  assert float(sums['loss']) == pytest.approx(expected_loss, rel=1e-5)


def test_ten_crop_eval_loss_stays_finite_when_a_probability_underflows_in_every_crop():
  # fc8 scaled up: logits thousands apart, so some labels' softmax is 0 in float32 in all ten crops.
  config = tiny_config(eval_crops=10, synthetic_eval_examples=8)
  model = steps.create_model(config, data.get_dataset_info(config).num_classes)
  params = steps.create_train_state(config, model, optax.sgd(0.1)).params
  params['fc8']['kernel'] = params['fc8']['kernel'] * 1e4
  batch = next(data.eval_batches(config, local_batch_size=8, process_index=0, process_count=1))
  ten = _ten_crops(batch)
  logits = np.asarray(model.apply({'params': params}, ten.reshape((-1,) + ten.shape[2:])),
                      np.float64).reshape(8, 10, -1)
  true_label = (np.arange(8), slice(None), batch['label'])
  float32_probs = np.asarray(jax.nn.softmax(logits.astype(np.float32)))
  assert (float32_probs[true_label] == 0).all(axis=1).any()  # the case this test is about
  # log(mean over crops of softmax), in float64, where those probabilities are not 0.
  log_probs = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  mean_log_probs = scipy.special.logsumexp(log_probs, axis=1) - np.log(10)
  expected_loss = -mean_log_probs[np.arange(8), batch['label']].sum()
  loss = float(_eval_sums(params, batch, model, config)['loss'])
  assert np.isfinite(loss)  # was inf: log(mean(softmax)) of a 0 probability
  assert loss == pytest.approx(expected_loss, rel=1e-4)


def test_training_learns_on_eight_devices_and_writes_its_records(tmp_path):
  # The smoke config's scale (width 0.25, batch 64): at width 0.125 the task takes far longer.
  config = tiny_config(num_epochs=2, eval_every_steps=32, log_every_steps=16, batch_size=64,
                       synthetic_train_examples=2048, checkpoint_every_steps=32,
                       **{'model.dropout_rate': 0.0, 'model.width': 0.25})
  state = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [r for r in records if r['split'] == 'train']
  eval_rows = [r for r in records if r['split'] == 'eval']
  for row in records:
    assert {'step', 'split', 'loss', 'top1_err', 'top5_err', 'learning_rate',
            'examples_per_sec'} <= set(row)
  assert train_rows[-1]['loss'] < 0.5 * train_rows[0]['loss']
  # 10 classes: chance is 0.9 top-1 error.
  assert eval_rows[-1]['top1_err'] < 0.3 and eval_rows[-1]['num_examples'] == 96
  assert eval_rows[-1]['step'] == 64 == int(jax.device_get(state.step))
  run_info = json.loads((tmp_path / 'run_info.json').read_text())
  assert run_info['finished'] and run_info['device_count'] == 8
  assert json.loads((tmp_path / 'config.json').read_text())['model']['width'] == 0.25
  assert list((tmp_path / 'tensorboard' / 'train').iterdir())
  assert workdir_lib.Checkpointer(str(tmp_path), 3).latest_step() == 64


def test_plateau_divides_the_rate_when_eval_error_stops_improving(tmp_path, monkeypatch):
  # A learning rate so small nothing improves: every eval after the first is a plateau.
  config = tiny_config(lr_schedule='plateau', learning_rate=1e-9, num_train_steps=8,
                       eval_every_steps=2, log_every_steps=2, plateau_patience_epochs=0.1,
                       plateau_max_reductions=2)
  best_writes = []
  save_best = workdir_lib.Checkpointer.save_best
  monkeypatch.setattr(workdir_lib.Checkpointer, 'save_best',
                      lambda self, step, *args: best_writes.append(step) or save_best(self, step,
                                                                                     *args))
  train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  eval_rows = [r for r in records if r['split'] == 'eval']
  # Rates as the eval saw them, before that eval's own plateau decision.
  assert [r['learning_rate'] for r in eval_rows] == pytest.approx([1e-9, 1e-9, 1e-10, 1e-11])
  # The best checkpoint, the whole train state, is written only when the error improves: once,
  # at the first eval (it was written at every eval, then the worse one deleted).
  assert len({r['top1_err'] for r in eval_rows}) == 1
  assert best_writes == [2] and os.listdir(tmp_path / 'checkpoints_best') == ['2']


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _tensorboard_steps(workdir, run: str, tag: str) -> list[int]:
  """The steps of `tag` as TensorBoard shows them, read with its own event reader."""
  accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard', run))
  accumulator.Reload()
  return [event.step for event in accumulator.Scalars(tag)]


def test_a_resumed_run_replaces_the_records_of_the_steps_it_redoes(tmp_path):
  config = tiny_config(num_train_steps=8, log_every_steps=2, eval_every_steps=4,
                       checkpoint_every_steps=4, lr_schedule='constant')
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  straight = _records(workdir)
  # A run killed after it logged step 8 but before checkpoint 8 was complete: the rerun resumes
  # from step 4 and logs steps 6 and 8 again. They were in metrics.jsonl and TensorBoard twice.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))
  train.train_and_evaluate(config, workdir)
  resumed = _records(workdir)
  assert [(r['step'], r['split'], r['loss']) for r in resumed] == [
      (r['step'], r['split'], r['loss']) for r in straight]
  assert _tensorboard_steps(workdir, 'train', 'loss') == [2, 4, 6, 8]
  assert _tensorboard_steps(workdir, 'eval', 'top1_err') == [4, 8]
  # Throughput is timed from the end of the first step, which compiles: the first record's is not
  # orders of magnitude below the others' (it was: 8 img/s against 600).
  rates = [r['examples_per_sec'] for r in straight if r['split'] == 'train']
  assert rates[0] > 0.1 * np.median(rates[1:])


def test_a_rerun_with_a_changed_key_records_what_changed_and_from_which_step(tmp_path, caplog,
                                                                            monkeypatch):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_train_steps=2, log_every_steps=2), workdir)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(tiny_config(num_train_steps=4, log_every_steps=2,
                                         learning_rate=0.02), workdir)
  with open(os.path.join(workdir, workdir_lib.CONFIG_CHANGES_FILE), encoding='utf-8') as f:
    [change] = [json.loads(line) for line in f]
  assert change['step'] == 2
  assert change['changes'] == {'learning_rate': [0.01, 0.02], 'num_train_steps': [2, 4]}
  assert 'from step 2: learning_rate 0.01 -> 0.02, num_train_steps 2 -> 4' in caplog.text
  assert workdir_lib.load_config(workdir).learning_rate == 0.02

  # Rerunning a finished run trains nothing, starts no data stream and writes nothing.
  before = sorted(str(p) for p in tmp_path.rglob('*'))

  def no_data(*args, **kwargs):
    raise AssertionError('a finished run started its data stream')

  monkeypatch.setattr(data, 'train_batches', no_data)
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(tiny_config(num_train_steps=4, log_every_steps=2,
                                                 learning_rate=0.02), workdir)
  assert int(jax.device_get(state.step)) == 4
  assert 'finished already: its latest checkpoint is of step 4' in caplog.text
  assert sorted(str(p) for p in tmp_path.rglob('*')) == before


def _main(workdir, *overrides, check=True):
  command = [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py',
             f'--workdir={workdir}', '--config.model.width=0.125', '--config.batch_size=32',
             '--config.synthetic_train_examples=512', '--config.synthetic_eval_examples=64',
             '--config.lr_schedule=constant', '--config.log_every_steps=2',
             '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4', *overrides]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f'{command} failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return result


def _restore_params(workdir):
  from orbax import checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints')
  manager = ocp.CheckpointManager(path)
  restored = manager.restore(manager.latest_step())
  return manager.latest_step(), restored['params']


def test_resume_in_a_new_process_matches_an_uninterrupted_run(tmp_path):
  # The paper's plateau schedule, at a rate too small to improve anything, so the rate is divided
  # at evals before and after the resume: its bookkeeping must come back from the checkpoint.
  plateau = ('--config.lr_schedule=plateau', '--config.learning_rate=1e-9',
             '--config.eval_every_steps=2', '--config.plateau_patience_epochs=0.1')
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  _main(straight, '--config.num_train_steps=8', *plateau)
  _main(resumed, '--config.num_train_steps=4', *plateau)
  second = _main(resumed, '--config.num_train_steps=8', *plateau)
  assert 'resuming from' in second.stderr
  step_a, params_a = _restore_params(straight)
  step_b, params_b = _restore_params(resumed)
  assert step_a == step_b == 8
  assert_trees_close(params_a, params_b, rtol=0, atol=0)  # bit for bit
  eval_rows = lambda d: [json.loads(l) for l in open(os.path.join(d, 'metrics.jsonl'))
                         if '"eval"' in l]
  assert eval_rows(straight)[-1]['loss'] == eval_rows(resumed)[-1]['loss']
  rates = [row['learning_rate'] for row in eval_rows(resumed)]
  assert rates == [row['learning_rate'] for row in eval_rows(straight)]
  assert rates == pytest.approx([1e-9, 1e-9, 1e-10, 1e-11])  # divided after the resume at step 4


@pytest.mark.parametrize('override, message', [
    ('--config.batch_size=30', 'config.batch_size=30 does not split evenly over 8 devices'),
    ('--config.optimizer=rmsprop', "config.optimizer='rmsprop' is invalid: expected one of 'sgd'"),
    ('--config.lr_schedule=linear', "config.lr_schedule='linear' is invalid"),
])
def test_bad_configs_fail_fast_with_a_clear_message(tmp_path, override, message):
  command = [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/smoke.py',
             f'--workdir={tmp_path}', override]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert message in result.stderr
  assert not (tmp_path / 'checkpoints').exists()
