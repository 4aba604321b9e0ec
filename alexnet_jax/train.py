"""Training and evaluation: the train state, the per-device steps, and the loop.

The train and eval steps are written once, as code that runs on one device and talks to the others only
through collectives over the `"data"` axis (gradients and metrics averaged with `pmean`, eval counts summed
with `psum`), much as the paper's two GPUs exchanged only what they had to. Two wrappers run that same
function on every device:

- `shard_map` (default): `jax.jit(jax.shard_map(...))` over a 1-D mesh of all devices of all processes.
  Train state replicated, batch split along its first axis.
- `pmap`: the classic `jax.pmap` of the same function over this process's devices, state replicated with a
  leading device axis.

Both give the same numbers (tests/test_train.py). A run is a pure function of its config: the batch of step
s comes from `data.train_batches(start_step=s)`, the dropout key of step s is `fold_in(seed key, s)` (and the
device index), and the learning-rate state is part of the checkpointed optimizer state.
"""

from collections.abc import Callable, Iterator
import collections
import functools
import itertools
import json
import math
import os
import signal
import time
from typing import Any

from absl import logging
from flax import struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from alexnet_jax import checkpointing
from alexnet_jax import convert
from alexnet_jax import data
from alexnet_jax import metrics
from alexnet_jax import model_parallel
from alexnet_jax import optim
from alexnet_jax import pixels
from alexnet_jax import visualize
from alexnet_jax.model import AlexNet

DATA_AXIS = 'data'
PARALLELISMS = ('shard_map', 'pmap')


class NonFiniteLossError(RuntimeError):
  """The loss or a gradient became NaN or Inf; no checkpoint holds the bad step."""


class Preempted(Exception):
  """SIGTERM or SIGUSR1 arrived; a checkpoint of the current step was written."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'{signal_name} received: saved a checkpoint at step {step}, exiting to be resumed')
    self.step = step


@struct.dataclass
class TrainState:
  step: jax.Array  # int32: number of steps taken, skipped non-finite ones included
  params: Any
  opt_state: Any
  # Non-finite steps are never applied (see train_step); these record them for the host to act on.
  nonfinite_steps: jax.Array  # int32
  first_nonfinite_step: jax.Array  # int32, the 0-based index of the first such update, or -1
  # The plateau schedule's bookkeeping (updated on the host after each eval).
  plateau_best_err: jax.Array  # float32, best eval top-1 error so far
  plateau_bad_evals: jax.Array  # int32, evals since it last improved
  plateau_reductions: jax.Array  # int32, how often the rate was divided


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> AlexNet:
  return AlexNet(num_classes=num_classes, **config.model.to_dict())


def create_train_state(config: ml_collections.ConfigDict, model: AlexNet,
                       tx: optax.GradientTransformation) -> TrainState:
  """A fresh state on the host (NumPy leaves), initialized from `config.seed`."""
  params_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  params = jax.jit(functools.partial(model.init, train=False))(params_key, dummy)['params']
  state = TrainState(
      step=np.int32(0), params=params, opt_state=tx.init(params),
      nonfinite_steps=np.int32(0), first_nonfinite_step=np.int32(-1),
      plateau_best_err=np.float32(np.inf), plateau_bad_evals=np.int32(0),
      plateau_reductions=np.int32(0))
  return jax.tree.map(np.asarray, state)


def dropout_root_key(config: ml_collections.ConfigDict) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)


def cross_entropy(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood of the true label."""
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def top_k_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example top-1 and top-5 errors (1.0 = wrong) from any scores ordered like the logits."""
  k = min(5, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  top1_err = (top[:, 0] != labels).astype(jnp.float32)
  top5_err = 1.0 - jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return top1_err, top5_err


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: AlexNet,
               tx: optax.GradientTransformation, dropout_key: jax.Array,
               augment: ml_collections.ConfigDict, image_size: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's share of the batch; gradients averaged over the `data` axis.

  The batch's uint8 pixels are normalized here, on the device (`pixels.model_input`, as `augment`
  sets it), after its crops are resized to `image_size` from the regions it carries, if it does
  (`pixels.resize_windows`).

  A step whose loss or gradients are not finite is not applied: params and optimizer state stay as
  they were, and the step is recorded in `nonfinite_steps` / `first_nonfinite_step` for the host to act
  on. Gradients are judged by their global norm (`optax.tree.norm`: the root of one sum of squares,
  which any NaN or Inf reaches, as does a norm beyond ~1e19 by overflowing: as good as infinite). The
  update itself is not checked here: checking it element by element cost 8% of a CPU step
  (docs/profiling.md); an update that overflows the params from finite gradients is caught on the
  host (`_check_finite`) before anything is saved.
  """
  device_key = jax.random.fold_in(jax.random.fold_in(dropout_key, state.step),
                                  jax.lax.axis_index(DATA_AXIS))

  images = pixels.model_input(pixels.resize_windows(batch, image_size), augment)

  def loss_fn(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': device_key})
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return cross_entropy(log_probs, batch['label']).mean(), log_probs

  (loss, log_probs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  top1_err, top5_err = top_k_errors(log_probs, batch['label'])
  step_metrics = {'loss': loss, 'top1_err': top1_err.mean(), 'top5_err': top5_err.mean()}
  if jax.lax.axis_size(DATA_AXIS) > 1:  # on one device the mean is the identity, and not free
    grads, step_metrics = jax.lax.pmean((grads, step_metrics), DATA_AXIS)
  finite = jnp.isfinite(step_metrics['loss']) & jnp.isfinite(optax.tree.norm(grads))

  def apply_update():
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), new_opt_state

  # A conditional, not a `where` over every parameter: the skipped branch costs nothing, and the
  # update stays one fused pass over the parameters.
  params, opt_state = jax.lax.cond(finite, apply_update, lambda: (state.params, state.opt_state))
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite,
                                     state.step, state.first_nonfinite_step))
  step_metrics['learning_rate'] = optim.current_learning_rate(opt_state)
  return new_state, step_metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: AlexNet,
              augment: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Sums of loss and errors over the unmasked examples of the whole (all-device) batch.

  With 10 crops (five per image in the batch, [B, 10, H, W, 3] once `pixels.model_input` has added
  their mirrors) the softmax predictions of the crops are averaged, as in §4.1 of the
  paper ("averaging the predictions made by the network's softmax layer on the ten patches").
  """
  images = pixels.model_input(batch, augment)
  if images.ndim == 5:
    batch_size, crops = images.shape[:2]
    logits = model.apply({'params': params}, images.reshape((-1,) + images.shape[2:]), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(batch_size, crops, -1).mean(axis=1)
    log_probs = jnp.log(probs)
  else:
    logits = model.apply({'params': params}, images, train=False)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  top1_err, top5_err = top_k_errors(log_probs, batch['label'])
  mask = batch['mask'].astype(jnp.float32)
  sums = {'loss': jnp.sum(cross_entropy(log_probs, batch['label']) * mask),
          'top1_err': jnp.sum(top1_err * mask), 'top5_err': jnp.sum(top5_err * mask),
          'count': jnp.sum(mask)}
  return jax.lax.psum(sums, DATA_AXIS)


def put_on(x: Any, sharding: NamedSharding) -> jax.Array:
  """`x` laid out as `sharding`: a host value (identical on every process) is copied to the devices;
  a device array already laid out that way stays put."""
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class ShardMapParallel:
  """jit + shard_map over a 1-D mesh of every device of every process (or of `devices`)."""

  def __init__(self, train_fn: Callable, eval_fn: Callable, devices: list[Any] | None = None):
    self.mesh = Mesh(np.asarray(devices or jax.devices()), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.split = NamedSharding(self.mesh, P(DATA_AXIS))
    # check_vma=False keeps pmap's semantics, which the per-device code is written for: the
    # gradient of a replicated parameter is this device's own gradient, averaged explicitly by
    # `pmean`. (With varying-manual-axes checking on, autodiff would already psum it.)
    self.train_step = jax.jit(
        jax.shard_map(train_fn, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)),
                      out_specs=(P(), P()), check_vma=False),
        donate_argnums=(0,))
    self.eval_step = jax.jit(
        jax.shard_map(eval_fn, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(),
                      check_vma=False))

  def put_state(self, tree: Any) -> Any:
    """Replicates host values (identical on every process) to every device; device arrays stay put."""
    return jax.tree.map(lambda x: put_on(x, self.replicated), tree)

  def abstract_state(self, host_state: Any) -> Any:
    """Shapes and shardings for restoring a checkpoint straight onto the devices."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=self.replicated),
        host_state)

  def state_for_checkpoint(self, state: Any) -> Any:
    return state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.split, x), local_batch)

  def fetch(self, tree: Any) -> Any:
    """Replicated device values to host NumPy (any process may read its own copy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


class PmapParallel:
  """The classic `jax.pmap` over every device of every process (or `devices`); each process holds
  the state and feeds the batch of its own devices, with a leading device axis."""

  def __init__(self, train_fn: Callable, eval_fn: Callable, devices: list[Any] | None = None):
    # pmap needs the same device list on every process: its collectives span that list, so a
    # list of this process's devices alone would average gradients within each process only.
    all_devices = devices or jax.devices()
    self.devices = [d for d in all_devices if d.process_index == jax.process_index()]
    self.local_mesh = Mesh(np.asarray(self.devices), (DATA_AXIS,))
    self.stacked = NamedSharding(self.local_mesh, P(DATA_AXIS))
    self.train_step = jax.pmap(train_fn, axis_name=DATA_AXIS, donate_argnums=(0,),
                               devices=all_devices)
    self.eval_step = jax.pmap(eval_fn, axis_name=DATA_AXIS, devices=all_devices)

  def put_state(self, tree: Any) -> Any:
    """Copies host values to every local device (leading device axis); stacked arrays stay put."""
    count = len(self.devices)

    def put(x):
      if isinstance(x, jax.Array) and x.ndim >= 1 and x.shape[0] == count and len(x.devices()) == count:
        return x
      x = np.asarray(x)
      return jax.device_put(np.broadcast_to(x, (count,) + x.shape), self.stacked)
    return jax.tree.map(put, tree)

  def abstract_state(self, host_state: Any) -> Any:
    # Restored to host NumPy, then replicated by put_state.
    return jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), host_state)

  def state_for_checkpoint(self, state: Any) -> Any:
    return self.fetch(state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    count = len(self.devices)
    return jax.tree.map(
        lambda x: jax.device_put(x.reshape((count, -1) + x.shape[1:]), self.stacked), local_batch)

  def fetch(self, tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0] if x.ndim else np.asarray(x),
                        tree)


def make_parallel(config: ml_collections.ConfigDict, model: AlexNet,
                  tx: optax.GradientTransformation, devices: list[Any] | None = None
                  ) -> 'ShardMapParallel | PmapParallel | model_parallel.ModelParallel':
  """The per-device steps wrapped by `config.parallelism` (or, with `model_parallel=2`, the paper's
  two-device split under shard_map), over all devices unless `devices`."""
  if config.model_parallel == 2:
    return model_parallel.ModelParallel(config, model, tx, devices)
  train_fn = functools.partial(train_step, model=model, tx=tx, dropout_key=dropout_root_key(config),
                               augment=config.augment, image_size=config.image_size)
  eval_fn = lambda state, batch: eval_step(state.params, batch, model=model, augment=config.augment)
  if config.parallelism == 'shard_map':
    return ShardMapParallel(train_fn, eval_fn, devices)
  if config.parallelism == 'pmap':
    return PmapParallel(train_fn, eval_fn, devices)
  raise ValueError(f'config.parallelism={config.parallelism!r} is unknown; use one of {PARALLELISMS}')


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Keeps `size` items in flight, so the next batch is copied to the devices while a step runs."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) == size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class PreemptionWatcher:
  """Turns SIGTERM and SIGUSR1 (SLURM's warning before its time limit) into a flag the loop checks."""

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    for signum in self.SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s received: will checkpoint and exit at the next step boundary',
                    self.signal_name)

  def should_stop(self, step: int, check_all_processes: bool) -> bool:
    """Whether to stop after `step`. Across processes the flag is combined (at `check_all_processes`
    steps only, as it costs a collective), so every process stops at the same step."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    if not check_all_processes:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
    if np.any(flags) and self.signal_name is None:
      self.signal_name = 'a peer process\'s signal'
    return bool(np.any(flags))

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def evaluate(parallel: ShardMapParallel | PmapParallel, state: TrainState,
             config: ml_collections.ConfigDict, local_batch_size: int) -> dict[str, float]:
  """Loss and top-1/top-5 error over the whole eval split; each example counted exactly once."""
  totals = None
  for batch in data.eval_batches(config, local_batch_size=local_batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    sums = parallel.eval_step(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.fetch(totals)
  count = float(totals.pop('count'))
  return {name: float(value) / count for name, value in totals.items()} | {'count': count}


def _update_plateau(state: TrainState, top1_err: float, config: ml_collections.ConfigDict,
                    patience_evals: int, parallel) -> TrainState:
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


def _check_finite(state: TrainState, config: ml_collections.ConfigDict, parallel,
                  checkpointer: checkpointing.Checkpointer) -> int:
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


# The config keys that shape the train state. A workdir's checkpoints restore only into a config that
# agrees on all of them (the fc6 input depends on image_size and the pools).
STATE_SHAPE_KEYS = ('num_classes', 'image_size', 'optimizer', 'model.variant', 'model.groups',
                    'model.width', 'model.overlapping_pool')


def _check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises CheckpointMismatchError if `workdir/config.json` is of a run whose train state has other
  shapes, naming the first key that differs."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    previous = json.load(f)
  for key in STATE_SHAPE_KEYS:
    was, now = previous, config
    for part in key.split('.'):
      was, now = was.get(part) if isinstance(was, dict) else None, now[part]
    if was is not None and was != now:
      raise checkpointing.CheckpointMismatchError(
          f'--workdir={workdir} holds a run of another model: config.{key} is {was!r} there and {now!r} '
          f'now, which changes the shapes of the train state. Use a new --workdir for this config, or '
          f'resume that run with --config.{key}={was}.')


def _write_json(path: str, value: dict[str, Any]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  Raises Preempted after checkpointing if SIGTERM or SIGUSR1 arrives (also during startup: from here
  on they only set a flag), NonFiniteLossError, CheckpointMismatchError or CheckpointWriteError.
  """
  watcher = PreemptionWatcher()
  try:
    return _train_and_evaluate(config, workdir, watcher)
  finally:
    watcher.restore()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        watcher: PreemptionWatcher) -> TrainState:
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  info = data.get_dataset_info(config)
  if info.num_classes != config.num_classes:
    logging.info('dataset %s has %d classes; using that instead of config.num_classes=%d',
                 config.dataset, info.num_classes, config.num_classes)
    with config.unlocked():
      config.num_classes = info.num_classes
  _check_workdir_config(config, workdir)

  steps_per_epoch = max(info.num_train_examples // config.batch_size, 1)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  patience_evals = max(1, int(math.ceil(config.plateau_patience_epochs * steps_per_epoch / eval_every)))
  eval_batch_size = config.eval_batch_size if config.eval_batch_size > 0 else config.batch_size
  local_batch_size = config.batch_size // jax.process_count()
  local_eval_batch_size = eval_batch_size // jax.process_count()

  model = create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch, total_steps)
  parallel = make_parallel(config, model, tx)
  host_state = create_train_state(config, model, tx)
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints,
                                            timeout_seconds=config.checkpoint_timeout_seconds)
  if checkpointer.latest_step() is not None:
    logging.info('resuming from %s, step %d', checkpointer.directory, checkpointer.latest_step())
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
          params=convert.load_pretrained_params(config.init_from, host_state.params))
    state = parallel.put_state(host_state)
  del host_state
  start_step = int(parallel.fetch(state.step))

  if is_chief:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    run_info = {'process_count': jax.process_count(), 'device_count': jax.device_count(),
                'local_device_count': jax.local_device_count(), 'total_steps': total_steps,
                'steps_per_epoch': steps_per_epoch, 'finished': False}
    _write_json(os.path.join(workdir, 'run_info.json'), run_info)
  writer = metrics.MetricsWriter(workdir, enabled=is_chief)
  logging.info('training %s on %s: %d steps of %d images (%d steps/epoch), %d devices in %d processes',
               config.dataset, jax.default_backend(), total_steps, config.batch_size, steps_per_epoch,
               jax.device_count(), jax.process_count())

  host_batches = data.train_batches(
      config, start_step=start_step, local_batch_size=local_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  first_batch = next(host_batches)
  # The crops and flips the network sees (the lighting shift is added on the device).
  first_images = pixels.flipped(pixels.resize_windows({k: v[:16] for k, v in first_batch.items()},
                                                      config.image_size))
  writer.write_image(start_step, 'augmented_inputs', visualize.image_grid(np.asarray(first_images)))
  batches = prefetch(map(parallel.put_batch, itertools.chain([first_batch], host_batches)))
  pending_metrics = []
  interval_start, interval_first_step = time.time(), start_step
  reported_skips = int(parallel.fetch(state.nonfinite_steps))
  try:
    for step in range(start_step, total_steps):
      state, step_metrics = parallel.train_step(state, next(batches))
      pending_metrics.append(step_metrics)
      done = step + 1
      is_last = done == total_steps
      is_log_step = done % config.log_every_steps == 0 or is_last

      if is_log_step:
        skipped = _check_finite(state, config, parallel, checkpointer)
        if skipped > reported_skips:
          logging.warning('step %d: %d steps with a NaN/Inf loss or gradient skipped so far '
                          '(their updates were not applied)', done, skipped)
          reported_skips = skipped
        fetched = parallel.fetch(pending_metrics)
        elapsed = time.time() - interval_start
        rate = (done - interval_first_step) * config.batch_size / max(elapsed, 1e-9)
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
        if config.lr_schedule == 'plateau':
          state = _update_plateau(state, results['top1_err'], config, patience_evals, parallel)
        _check_finite(state, config, parallel, checkpointer)
        checkpointer.save_best(done, parallel.state_for_checkpoint(state), results['top1_err'])
        writer.write_image(done, 'conv1_kernels', visualize.conv1_kernel_grid(
            {'conv1': parallel.fetch(state.params['conv1'])}, visualize.kernel_groups(config)),
            split='eval')
        interval_start += time.time() - eval_start  # eval time is not training throughput

      stop = watcher.should_stop(done, check_all_processes=is_log_step)
      if done % config.checkpoint_every_steps == 0 or is_last or stop:
        _check_finite(state, config, parallel, checkpointer)
        checkpointer.save(done, parallel.state_for_checkpoint(state))
      if stop and not is_last:
        checkpointer.wait()
        raise Preempted(done, watcher.signal_name)
    checkpointer.wait()
  finally:
    writer.close()
    checkpointer.close()

  if is_chief:
    run_info['finished'] = True
    _write_json(os.path.join(workdir, 'run_info.json'), run_info)
  return state
