"""The training loop: `train_and_evaluate(config, workdir)` trains, evaluates, checkpoints and resumes.

Each step runs `steps.train_step`, a pure function of (state, batch), on every device through a
`parallel.Parallel` (shard_map, pmap, or the paper's two-device split). A run is a pure function of
its config: the batch of step s comes from `data.train_batches(start_step=s)`, the dropout key of
step s is `fold_in(seed key, s)`, and the learning-rate state is part of the checkpointed optimizer
state, so a run resumed from the checkpoint of step s continues exactly as an uninterrupted one.
Around the steps the loop logs progress and metrics (alexnet_jax/metrics.py), evaluates, lowers the
rate on a plateau (the paper's schedule), stops on a NaN/Inf loss or, after a checkpoint, on SIGTERM,
SIGUSR1 or Ctrl-C (`StopWatcher`), and writes the workdir (alexnet_jax/workdir.py). A resumed run
replaces the records of the steps it redoes; a finished one returns at once.
"""

from collections.abc import Iterator
import collections
import itertools
import math
import os
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import data
from alexnet_jax import errors
from alexnet_jax import metrics
from alexnet_jax import optim
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import pictures
from alexnet_jax import steps
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import pixels
from alexnet_jax.data import statistics


class NonFiniteLossError(errors.Error, RuntimeError):
  """The loss or a gradient became NaN or Inf; no checkpoint holds the bad step."""


class Preempted(Exception):
  """A stop signal arrived and a checkpoint of the current step was written; `exit_code` is the
  command's: errors.PREEMPTED for SIGTERM/SIGUSR1, errors.INTERRUPTED for Ctrl-C (SIGINT)."""

  def __init__(self, step: int, signal_name: str, exit_code: int):
    if exit_code == errors.INTERRUPTED:
      message = (f'{signal_name} received: saved a checkpoint at step {step}; rerun the same command '
                 'to resume from it')
    else:
      message = f'{signal_name} received: saved a checkpoint at step {step}, exiting to be resumed'
    super().__init__(message)
    self.step = step
    self.exit_code = exit_code


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Keeps `size` items in flight, so the next batch is copied to the devices while a step runs."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) == size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class StopWatcher:
  """Turns the signals that ask a run to stop into a flag the loop checks after each step.

  SIGTERM and SIGUSR1 (SLURM's warning before its time limit) are a preemption: checkpoint, exit 75,
  and the job is requeued. SIGINT, a Ctrl-C, does the same but exits 130; a second Ctrl-C stops the
  process at once (the kernel's default action, even inside a long computation or a checkpoint
  write), losing the steps since the last checkpoint.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
  PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

  def __init__(self):
    self.signum = 0  # the stop signal received (or agreed on with the other processes), 0: none
    self.from_peer = False
    self._previous = {}
    for signum in self.SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C ends the process at once
      logging.warning('Ctrl-C received: will checkpoint and exit after this step (Ctrl-C again '
                      'stops at once, losing the steps since the last checkpoint)')
    else:
      logging.warning('%s received: will checkpoint and exit at the next step boundary',
                      signal.Signals(signum).name)
    if self.signum not in self.PREEMPTION_SIGNALS:  # a preemption outranks a Ctrl-C
      self.signum = signum

  @property
  def signal_name(self) -> str:
    name = 'Ctrl-C (SIGINT)' if self.signum == signal.SIGINT else signal.Signals(self.signum).name
    return f"a peer process's {name}" if self.from_peer else name

  @property
  def exit_code(self) -> int:
    return errors.INTERRUPTED if self.signum == signal.SIGINT else errors.PREEMPTED

  def should_stop(self, step: int, check_all_processes: bool) -> bool:
    """Whether to stop after `step`. Across processes the signals are combined (at
    `check_all_processes` steps only, as it costs a collective), so every process stops at the same
    step, and with the same exit code: a preemption's if any process got one."""
    if jax.process_count() == 1:
      return self.signum != 0
    if not check_all_processes:
      return False
    received = [int(s) for s in multihost_utils.process_allgather(np.int32(self.signum)) if s]
    if received and self.signum == 0:
      self.from_peer = True
    if received:
      preemptions = [s for s in received if s in self.PREEMPTION_SIGNALS]
      self.signum = preemptions[0] if preemptions else received[0]
    return bool(received)

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def evaluate(parallel: parallel_lib.Parallel, state: steps.TrainState,
             config: ml_collections.ConfigDict, local_batch_size: int,
             on_training_set: bool = False) -> dict[str, float]:
  """Loss and top-1/top-5 error over the whole eval split (`on_training_set`: over the training
  examples of `config.eval_train_examples`, preprocessed alike); each example counted exactly once."""
  totals = None
  for batch in data.eval_batches(config, local_batch_size=local_batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 on_training_set=on_training_set):
    sums = parallel.eval_step(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.fetch(totals)
  count = float(totals.pop('count'))
  return {name: float(value) / count for name, value in totals.items()} | {'count': count}


def _update_plateau(state: steps.TrainState, top1_err: float, config: ml_collections.ConfigDict,
                    patience_evals: int, parallel: parallel_lib.Parallel) -> steps.TrainState:
  """The paper's schedule: divide the rate by 10 when validation error stops improving."""
  best, bad, reductions, scale = (v.item() for v in parallel.fetch((
      state.plateau_best_err, state.plateau_bad_evals, state.plateau_reductions,
      state.opt_state.hyperparams['plateau_scale'])))
  if top1_err < best:
    best, bad = top1_err, 0
  else:
    bad += 1
  if bad >= patience_evals and reductions < config.plateau_max_reductions:
    scale, bad, reductions = scale * config.plateau_factor, 0, reductions + 1
    logging.info('eval error stopped improving: learning rate x%g (reduction %d of %d)',
                 config.plateau_factor, reductions, config.plateau_max_reductions)
  new_values = parallel.put_state({
      'best': np.float32(best), 'bad': np.int32(bad), 'reductions': np.int32(reductions),
      'opt_state': optim.with_plateau_scale(state.opt_state, np.float32(scale)).hyperparams})
  opt_state = state.opt_state._replace(hyperparams=new_values['opt_state'])
  return state.replace(plateau_best_err=new_values['best'], plateau_bad_evals=new_values['bad'],
                       plateau_reductions=new_values['reductions'], opt_state=opt_state)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


def check_finite(state: steps.TrainState, config: ml_collections.ConfigDict,
                 parallel: parallel_lib.Parallel, checkpointer: workdir_lib.Checkpointer) -> int:
  """Raises NonFiniteLossError (unless skipping is on); returns the count of skipped steps.

  Called at every log step, eval and checkpoint. Besides the steps that `train_step` refused, it
  checks the params and optimizer state themselves, which an update can overflow from finite
  gradients (a learning rate far too high); that run cannot be saved or skipped past, so it stops.
  """
  first_bad, count = parallel.fetch((state.first_nonfinite_step, state.nonfinite_steps))
  latest = checkpointer.latest_step()
  kept = (f'The latest checkpoint, step {latest}, is from before it and is intact.' if latest is not None
          else 'No checkpoint was written.')
  if not parallel.fetch(_all_finite((state.params, state.opt_state))):
    raise NonFiniteLossError(
        f'The parameters or optimizer state became NaN/Inf by step {int(parallel.fetch(state.step))} '
        f'although the losses and gradients were finite: an update overflowed. {kept} Lower '
        f'config.learning_rate.')
  if first_bad >= 0 and not config.skip_nonfinite_steps:
    raise NonFiniteLossError(
        f'The loss or a gradient became NaN/Inf at step {int(first_bad) + 1} (that update was not '
        f'applied). {kept} Lower config.learning_rate, check the data, or set '
        f'config.skip_nonfinite_steps=True to skip such steps.')
  return int(count)


def _dataset_statistics(config: ml_collections.ConfigDict) -> statistics.Statistics:
  """The training split's pixel statistics: measured (or read) by process 0 first, which records
  them beside the data, then read from there by the others, rather than every process decoding the
  split at once."""
  if jax.process_index() == 0:
    measured = data.dataset_statistics(config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('pixel statistics recorded')
  if jax.process_index() != 0:
    measured = data.dataset_statistics(config)
  return measured


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  Raises Preempted after checkpointing if SIGTERM, SIGUSR1 or SIGINT arrives (also during startup:
  from here on they only set a flag), NonFiniteLossError, workdir.CheckpointMismatchError or
  workdir.CheckpointWriteError. A run whose latest checkpoint is of its last step returns that
  state without reading any data.
  """
  watcher = StopWatcher()
  try:
    return _train_and_evaluate(config, workdir, watcher)
  finally:
    watcher.restore()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        watcher: StopWatcher) -> steps.TrainState:
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  info = data.get_dataset_info(config)
  if info.num_classes != config.num_classes:
    logging.info('dataset %s has %d classes; using that instead of config.num_classes=%d',
                 config.dataset, info.num_classes, config.num_classes)
    with config.unlocked():
      config.num_classes = info.num_classes
  workdir_lib.check_config_matches(config, workdir)
  if config.augment.statistics == 'dataset' and not statistics.recorded(config.augment):
    # Constants from here on: recorded in the config (and so in config.json, for evaluate and
    # predict), from where the pipeline's lighting draws and the jitted steps' normalization read.
    measured = _dataset_statistics(config)
    with config.unlocked():
      statistics.record(config.augment, measured)
    logging.info('pixel statistics of %s %s: mean %s, std %s, PCA eigenvalues %s', config.dataset,
                 config.train_split, *(np.round(v, 3).tolist() for v in (
                     measured.mean, measured.std, measured.eigenvalues)))

  steps_per_epoch = max(info.num_train_examples // config.batch_size, 1)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  patience_evals = max(1, int(math.ceil(config.plateau_patience_epochs * steps_per_epoch / eval_every)))
  eval_batch_size = config.eval_batch_size if config.eval_batch_size > 0 else config.batch_size
  local_batch_size = config.batch_size // jax.process_count()
  local_eval_batch_size = eval_batch_size // jax.process_count()
  run_info = {'process_count': jax.process_count(), 'device_count': jax.device_count(),
              'local_device_count': jax.local_device_count(), 'total_steps': total_steps,
              'steps_per_epoch': steps_per_epoch, 'finished': False}

  model = steps.create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps)
  parallel = parallel_lib.make_parallel(config, model, tx)
  host_state = steps.create_train_state(config, model, tx)
  checkpointer = workdir_lib.Checkpointer(workdir, config.keep_checkpoints,
                                          timeout_seconds=config.checkpoint_timeout_seconds)
  writer = None
  try:
    latest = checkpointer.latest_step()
    if latest is not None:
      if latest < total_steps:
        logging.info('resuming from %s, step %d', checkpointer.directory, latest)
      state = parallel.put_state(checkpointer.restore(parallel.abstract_state(host_state)))
      if parallel.fetch(state.first_nonfinite_step) >= 0 and not config.skip_nonfinite_steps:
        # Only a run with skip_nonfinite_steps saves after a non-finite step, which it did not apply;
        # with skipping now off, this run stops at its own first one (the count goes on).
        logging.info('the checkpoint skipped %d non-finite steps; skipping is off from here',
                     int(parallel.fetch(state.nonfinite_steps)))
        state = parallel.put_state(state.replace(first_nonfinite_step=np.int32(-1)))
    else:
      if config.init_from:  # start from another run's or converted params; fc8 fresh if it differs
        host_state = host_state.replace(
            params=workdir_lib.load_pretrained_params(config.init_from, host_state.params))
      state = parallel.put_state(host_state)
    del host_state
    start_step = int(parallel.fetch(state.step))
    if start_step >= total_steps:
      logging.info('%s finished already: its latest checkpoint is of step %d, and the run has %d '
                   'steps. Nothing to train; raise config.num_train_steps (or num_epochs) to train '
                   'on.', workdir, start_step, total_steps)
      if is_chief and not workdir_lib.read_run_info(workdir).get('finished'):
        # Stopped after its last checkpoint and before recording that it had finished.
        workdir_lib.write_run_info(workdir, run_info | {'finished': True})
      return state

    # The data stream starts before anything is written, so a dataset that cannot give a batch
    # leaves the workdir as it was.
    host_batches = data.train_batches(
        config, start_step=start_step, local_batch_size=local_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())
    first_batch = next(host_batches)

    if is_chief:
      changes = workdir_lib.record_config(workdir, config, start_step)
      if changes:
        logging.warning('the config differs from the one this workdir was run with; from step %d: '
                        '%s (recorded in %s)', start_step, workdir_lib.describe_changes(changes),
                        workdir_lib.CONFIG_CHANGES_FILE)
      workdir_lib.write_run_info(workdir, run_info)
    # A resumed run drops the records of the steps after its checkpoint, which it is about to redo.
    writer = metrics.MetricsWriter(workdir, enabled=is_chief, start_step=start_step)
    logging.info('training %s on %s: %d steps of %d images (%d steps/epoch), %d devices in %d processes',
                 config.dataset, jax.default_backend(), total_steps, config.batch_size, steps_per_epoch,
                 jax.device_count(), jax.process_count())

    # The crops and flips the network sees (the lighting shift is added on the device).
    first_images = pixels.flipped(pixels.training_crops({k: v[:16] for k, v in first_batch.items()},
                                                        config.image_size))
    writer.write_image(start_step, 'augmented_inputs', pictures.image_grid(np.asarray(first_images)))
    batches = prefetch(map(parallel.put_batch, itertools.chain([first_batch], host_batches)))
    pending_metrics = []
    started = time.time()
    interval_start, interval_first_step = started, start_step
    reported_skips = int(parallel.fetch(state.nonfinite_steps))
    for step in range(start_step, total_steps):
      state, step_metrics = parallel.train_step(state, next(batches))
      pending_metrics.append(step_metrics)
      done = step + 1
      is_last = done == total_steps
      is_log_step = done % config.log_every_steps == 0 or is_last
      if step == start_step:
        # The first step compiles: throughput and the ETA are timed from its end.
        jax.block_until_ready(step_metrics)
        interval_start, interval_first_step = time.time(), done

      if is_log_step:
        jax.block_until_ready(step_metrics)  # the interval's steps are done: time them
        if done > interval_first_step:
          rate = (done - interval_first_step) * config.batch_size / max(time.time() - interval_start,
                                                                        1e-9)
        else:  # only the compiling step so far: all there is to time
          rate = config.batch_size / max(time.time() - started, 1e-9)
        skipped = check_finite(state, config, parallel, checkpointer)  # compiles at its first call
        if skipped > reported_skips:
          logging.warning('step %d: %d steps with a NaN/Inf loss or gradient skipped so far '
                          '(their updates were not applied)', done, skipped)
          reported_skips = skipped
        fetched = parallel.fetch(pending_metrics)
        summary = {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}
        summary['learning_rate'] = float(fetched[-1]['learning_rate'])
        writer.write(done, 'train', examples_per_sec=rate, nonfinite_steps=skipped, **summary)
        if is_chief:
          metrics.log_progress(done, total_steps, summary['loss'], rate,
                               (total_steps - done) * config.batch_size / max(rate, 1e-9))
        pending_metrics = []
        interval_start, interval_first_step = time.time(), done

      if done % eval_every == 0 or is_last:
        eval_start = time.time()
        results = evaluate(parallel, state, config, local_eval_batch_size)
        learning_rate = float(parallel.fetch(optim.current_learning_rate(state.opt_state)))
        writer.write(done, 'eval', loss=results['loss'], top1_err=results['top1_err'],
                     top5_err=results['top5_err'], learning_rate=learning_rate,
                     examples_per_sec=results['count'] / max(time.time() - eval_start, 1e-9),
                     num_examples=int(results['count']))
        if is_chief:
          logging.info('eval at step %d: loss %.4f  top-1 error %.4f  top-5 error %.4f', done,
                       results['loss'], results['top1_err'], results['top5_err'])
        if config.eval_train_examples:  # the training error without augmentation or dropout
          on_train = evaluate(parallel, state, config, local_eval_batch_size, on_training_set=True)
          writer.write(done, 'eval_train', loss=on_train['loss'], top1_err=on_train['top1_err'],
                       top5_err=on_train['top5_err'], num_examples=int(on_train['count']))
        if config.lr_schedule == 'plateau':
          state = _update_plateau(state, results['top1_err'], config, patience_evals, parallel)
        check_finite(state, config, parallel, checkpointer)
        if checkpointer.is_new_best(results['top1_err']):
          checkpointer.save_best(done, parallel.state_for_checkpoint(state), results['top1_err'])
        writer.write_image(done, 'conv1_kernels', pictures.conv1_kernel_grid(
            {'conv1': parallel.fetch(state.params['conv1'])}, pictures.kernel_groups(config)),
            split='eval')
        interval_start += time.time() - eval_start  # eval time is not training throughput

      stop = watcher.should_stop(done, check_all_processes=is_log_step)
      if done % config.checkpoint_every_steps == 0 or is_last or stop:
        check_finite(state, config, parallel, checkpointer)
        checkpointer.save(done, parallel.state_for_checkpoint(state))
      if stop and not is_last:
        checkpointer.wait()
        raise Preempted(done, watcher.signal_name, watcher.exit_code)
    checkpointer.wait()
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()

  if is_chief:
    workdir_lib.write_run_info(workdir, run_info | {'finished': True})
  return state
