"""Everything read from or written to a run's directory, the workdir.

  DIR/config.json           the resolved config of the run (`record_config`, `load_config`)
  DIR/config_changes.jsonl  what a resumed run changed in it, and from which step (`record_config`)
  DIR/run_info.json         process and device counts, steps, and `finished` (`write_run_info`)
  DIR/checkpoints/<step>/   Orbax checkpoints of the whole train state, the last `keep` (`Checkpointer`)
  DIR/checkpoints_best/     the checkpoint with the lowest eval top-1 error, written when it improves
  DIR/metrics.jsonl, DIR/tensorboard/   written by alexnet_jax/metrics.py

Writing. Orbax writes each step to a temporary directory (`<step>.orbax-checkpoint-tmp`) and renames it
only once complete, so a run killed mid-save leaves no half-written checkpoint for `latest_step` to find;
the next run deletes such leftovers. Saving is asynchronous: training continues while the previous
checkpoint is written; `wait` blocks until it is on disk. A write that fails (disk full, directory gone
or read-only) surfaces at the next `save` or `wait` as a CheckpointWriteError naming the step; the
earlier checkpoints are untouched, since Orbax deletes old steps only after a new one is complete. In a
multi-process run, a process whose write fails leaves the others waiting at Orbax's barriers; all stop
with the error once `checkpoint_timeout_seconds` have passed.

Reading. Restoring checks the checkpoint's array shapes against the model built from the current config
first, so a workdir holding another model's checkpoints gives a readable error instead of an Orbax
traceback; `checkpoint_step`, `restore_params` and `load` find and read a checkpoint's parameters
('latest', 'best' or a step) for evaluation, prediction, pictures and fine-tuning (`init_from`).
They open the checkpoints read-only (`open_read_only`): they never create, delete or rename anything,
so evaluating a workdir while its run writes a checkpoint leaves that write alone, and a read-only
workdir can be read.

The workdir is a local path (or a file system mounted as one): `make_workdir` refuses URLs such as
gs://, as config.json, run_info.json and metrics.jsonl are written with the local file system's calls.
"""

from collections.abc import Mapping
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import defaults
from alexnet_jax import errors
from alexnet_jax import steps
from alexnet_jax.model import AlexNet

CONFIG_FILE = 'config.json'
CONFIG_CHANGES_FILE = 'config_changes.jsonl'  # see record_config
RUN_INFO_FILE = 'run_info.json'


def _path_name(path: tuple[Any, ...]) -> str:
  """'opt_state/count' for a tree path, whether its steps are dict keys, attributes or indices
  (Orbax's metadata turns dataclasses and named tuples into dicts)."""
  names = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)))
        break
  return '/'.join(names)


class CheckpointMismatchError(errors.InvalidError):
  """The workdir's checkpoints were written by a model or optimizer of another shape."""


class CheckpointWriteError(errors.Error, OSError):
  """A checkpoint could not be written; the previous ones are intact."""


class WorkdirError(errors.InputError, OSError):
  """The workdir cannot be used: not a local path, a file, or not writable."""


DEFAULT_TIMEOUT_SECONDS = 300  # the default of config.checkpoint_timeout_seconds


class Checkpointer:
  """Latest-`keep` checkpoints plus the best one by eval top-1 error."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True,
               timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    # Orbax's processes meet at barriers during a write. One whose write fails never arrives, and
    # the others (and its own finalizing thread) wait out the barrier's timeout before all fail.
    # Orbax's default is 20 minutes (a two-process run was seen stalled for the 5 minutes it was
    # watched); writing AlexNet's ~0.5 GB needs far less.
    async_options = ocp.options.AsyncOptions(timeout_secs=timeout_seconds)
    # Naming the handler lets a fresh process read a checkpoint's metadata before restoring it.
    # cleanup_tmp_directories: a run killed mid-save left a temporary directory, never loaded; this
    # frees its space.
    # In a multi-process run Orbax names its barriers after the step; both managers save the same
    # step whenever an eval and a checkpoint fall together, so each gets its own barrier prefix
    # (sharing one made the second save fail with "Barrier _async_write_complete.N is already ongoing").
    self._latest = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, async_options=async_options,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='latest')))
    self._best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints_best'),
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, async_options=async_options,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='best'),
            best_fn=lambda metrics: metrics['top1_err'], best_mode='min'))
    self._writing = {id(self._latest): None, id(self._best): None}  # the step of the write in flight
    self._failed = False
    best = self._best.best_step()
    self._best_err = float('inf') if best is None else float(self._best.metrics(best)['top1_err'])

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.best_step()

  def all_steps(self) -> list[int]:
    return list(self._latest.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing `state` as checkpoint `step` (after the previous write has finished)."""
    self._save(self._latest, step, state)

  def is_new_best(self, top1_err: float) -> bool:
    """Whether an eval top-1 error is lower than that of the checkpoint in `checkpoints_best`."""
    return float(top1_err) < self._best_err

  def save_best(self, step: int, state: Any, top1_err: float) -> None:
    """Writes `state` into `checkpoints_best`, replacing the one there once it is complete. Call it
    only for a new best (`is_new_best`): each write is the whole train state (~0.5 GB for the
    paper's model)."""
    self._save(self._best, step, state, metrics={'top1_err': float(top1_err)})
    self._best_err = float(top1_err)

  def _save(self, manager: ocp.CheckpointManager, step: int, state: Any, **kwargs: Any) -> None:
    if step in manager.all_steps():
      return
    self._wait(manager)  # a failure of the previous write is reported with that write's step
    try:
      manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises ValueError, OSError, ...)
      raise self._write_error(manager, step, e) from e
    self._writing[id(manager)] = step

  def _wait(self, manager: ocp.CheckpointManager) -> None:
    try:
      manager.wait_until_finished()  # re-raises an exception of Orbax's background writer
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(manager, self._writing[id(manager)], e) from e
    self._writing[id(manager)] = None

  def _write_error(self, manager: ocp.CheckpointManager, step: int | None,
                   error: Exception) -> CheckpointWriteError:
    self._failed = True
    complete = [s for s in manager.all_steps() if s != step]
    previous = (f'the latest complete checkpoint, step {max(complete)}, is intact' if complete
                else 'there is no earlier checkpoint')
    cause = str(error)
    if jax.process_count() > 1 and 'Barrier timed out' in cause:
      cause = ('a process did not reach Orbax\'s barrier within checkpoint_timeout_seconds: its write '
               'failed (the process\'s log has the error) or took longer')
    return CheckpointWriteError(
        f'Writing the checkpoint of step {step} to {manager.directory} failed ({cause}); {previous}. '
        f'Free disk space or make the directory writable, then rerun the same command to resume.')

  def restore(self, abstract_state: Any, step: int | None = None, best: bool = False) -> Any:
    """Restores `step` (default: the latest) into the structure and shardings of `abstract_state`."""
    manager = self._best if best else self._latest
    step = (manager.best_step() if best else manager.latest_step()) if step is None else step
    if step is None:
      raise errors.NotFoundError(f'no checkpoint in {manager.directory}')
    self._check_shapes(manager, step, abstract_state)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def _check_shapes(self, manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
    stored = manager.item_metadata(step)
    stored_shapes = {_path_name(path): tuple(leaf.shape)
                     for path, leaf in jax.tree_util.tree_leaves_with_path(stored)
                     if hasattr(leaf, 'shape')}
    wanted_shapes = {_path_name(path): tuple(np.shape(leaf))
                     for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}
    problems = []
    for key in sorted(set(stored_shapes) | set(wanted_shapes)):
      if stored_shapes.get(key) != wanted_shapes.get(key):
        problems.append(f'{key}: checkpoint {stored_shapes.get(key, "absent")}, '
                        f'config {wanted_shapes.get(key, "absent")}')
    if problems:
      shown = '; '.join(problems[:5]) + (f'; ... {len(problems) - 5} more' if len(problems) > 5 else '')
      raise CheckpointMismatchError(
          f'The checkpoint at step {step} in {manager.directory} was written by a different model or '
          f'optimizer than this config builds ({shown}). Use a new --workdir for this config, or rerun with '
          f'the config that wrote these checkpoints.')

  def wait(self) -> None:
    """Blocks until every checkpoint started is on disk; raises CheckpointWriteError if one failed."""
    self._wait(self._latest)
    self._wait(self._best)

  def close(self) -> None:
    """Waits for the writes in flight and releases Orbax's threads. A failed write was already
    reported by `save`/`wait` (or is reported here, if it was not)."""
    for manager in (self._latest, self._best):
      try:
        # Orbax waits for its clean-up of leftover temporary directories only at a manager's first
        # save; one closed before any save would leave it running after close, listing folders
        # that a failed start then removes (remove_if_empty).
        manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._failed:
          raise self._write_error(manager, self._writing[id(manager)], e) from e
        logging.warning('closed %s after its failed write: %s', manager.directory, e)


# --------------------------------------------------------------------------------------------------
# The workdir itself.
# --------------------------------------------------------------------------------------------------

# Made by Orbax when the Checkpointer opens them, before anything is written.
_CHECKPOINT_DIRS = ('checkpoints', 'checkpoints_best')


def make_workdir(workdir: str) -> bool:
  """Creates `workdir` if needed and checks that this process can write into it; returns whether
  it was created here.

  Raises WorkdirError naming the fix for a URL (the workdir is read and written through the local
  file system's calls; a bucket mounted as a folder, e.g. with gcsfuse, is a local path), a path
  that is a file or lies under one, and a folder that cannot be created or written.
  """
  if '://' in workdir:
    raise WorkdirError(f'--workdir={workdir}: a workdir is a local path; this project writes it with '
                       'the local file system\'s calls. Mount the bucket as a folder (e.g. with '
                       'gcsfuse) and give that folder, or give a local or shared (NFS) directory.')
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise WorkdirError(f'--workdir={workdir} is a file, or lies under one, not a directory: give '
                       'the path of a new or existing directory.') from None
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} cannot be created ({e.strerror}): give a directory '
                       'you can write to.') from None
  try:
    descriptor, probe = tempfile.mkstemp(prefix='.write_check', dir=workdir)
    os.close(descriptor)
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} is not writable ({e.strerror}): make it writable, or '
                       'give another --workdir.') from None
  return created


def remove_if_empty(workdir: str) -> None:
  """Removes `workdir` if it holds nothing but the empty folders opening its checkpoints makes: what
  a start that failed early leaves. Never removes a file."""
  for name in _CHECKPOINT_DIRS:
    with contextlib.suppress(OSError):
      os.rmdir(os.path.join(workdir, name))
  with contextlib.suppress(OSError):
    os.rmdir(workdir)


# --------------------------------------------------------------------------------------------------
# config.json and run_info.json.
# --------------------------------------------------------------------------------------------------


# The config keys that shape the train state. A workdir's checkpoints restore only into a config that
# agrees on all of them (the fc6 input depends on image_size and the pools).
STATE_SHAPE_KEYS = ('num_classes', 'image_size', 'optimizer', 'model.variant', 'model.groups',
                    'model.width', 'model.overlapping_pool', 'model.conv1_kernel',
                    'model.conv1_stride', 'model.remove_conv')


def check_config_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises CheckpointMismatchError if `workdir/config.json` is of a run whose train state has other
  shapes, naming the first key that differs."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    previous = json.load(f)
  for key in STATE_SHAPE_KEYS:
    was, now = previous, config
    for part in key.split('.'):
      was, now = was.get(part) if isinstance(was, dict) else None, now[part]
    if was is not None and was != now:
      raise CheckpointMismatchError(
          f'--workdir={workdir} holds a run of another model: config.{key} is {was!r} there and {now!r} '
          f'now, which changes the shapes of the train state. Use a new --workdir for this config, or '
          f'resume that run with --config.{key}={was}.')


def _write_json(path: str, value: dict[str, Any]) -> None:
  """Whole or not at all: written beside `path`, then renamed over it."""
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  _write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'model.width': 1.0, ...} of a nested config dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def record_config(workdir: str, config: ml_collections.ConfigDict, step: int
                  ) -> dict[str, list[Any]]:
  """Writes DIR/config.json; returns how it differs from the one there before, if any.

  A resumed run may change keys that keep the train state's shapes (a learning rate, the dropout
  rate, the data). config.json then describes the run from `step` on, and the differences are
  appended first to DIR/config_changes.jsonl, one line per resume that changed something:
  {"step": 1000, "wall_time": ..., "changes": {"learning_rate": [0.01, 0.001]}} ([before, after];
  null for a key one side lacks). The two files together say which config trained which steps.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  now = json.loads(json.dumps(config.to_dict()))  # as JSON stores it: tuples are lists
  changes = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      before, after = _flat(json.load(f)), _flat(now)
    changes = {key: [before.get(key), after.get(key)] for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)}
  if changes:
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), 'a', encoding='utf-8') as f:
      f.write(json.dumps({'step': int(step), 'wall_time': time.time(), 'changes': changes}) + '\n')
  _write_json(path, now)
  return changes


def describe_changes(changes: Mapping[str, list[Any]]) -> str:
  """'learning_rate 0.01 -> 0.001, model.dropout_rate 0.5 -> 0.0' for `record_config`'s changes."""
  return ', '.join(f'{key} {before!r} -> {after!r}' for key, (before, after) in changes.items())


def write_run_info(workdir: str, run_info: dict[str, Any]) -> None:
  _write_json(os.path.join(workdir, RUN_INFO_FILE), run_info)


def read_run_info(workdir: str) -> dict[str, Any]:
  """DIR/run_info.json, or {} where there is none (a run that never got that far)."""
  try:
    with open(os.path.join(workdir, RUN_INFO_FILE), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def load_config(workdir: str, **overrides: Any) -> ml_collections.ConfigDict:
  """DIR/config.json as a ConfigDict; `overrides` (top-level keys) replace values unless None.

  Keys that `defaults.get_config()` has and the file lacks (added after the run) keep their
  defaults.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.NotFoundError(f'{path} does not exist: --workdir must be a workdir written by '
                               'alexnet_jax.main or alexnet_jax.convert.')
  config = defaults.get_config()
  with open(path, encoding='utf-8') as f:
    config.update(json.load(f))
  for key, value in overrides.items():
    if value is not None:
      config[key] = value
  return config


# --------------------------------------------------------------------------------------------------
# Reading a checkpoint's parameters.
# --------------------------------------------------------------------------------------------------


def check_params_match(params: Mapping[str, Any], model: AlexNet, image_size: int,
                       what: str) -> None:
  """Raises errors.InvalidError (a ValueError) naming every array of `params` whose shape `model`
  does not have."""
  wanted = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), train=False))['params']
  shapes = lambda tree: {jax.tree_util.keystr(path): tuple(np.shape(leaf))
                         for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  wanted, found = shapes(wanted), shapes(params)
  problems = [f'{key}: {what} {found.get(key, "absent")}, model {wanted.get(key, "absent")}'
              for key in sorted(set(wanted) | set(found)) if wanted.get(key) != found.get(key)]
  if problems:
    raise errors.InvalidError(
        f'The parameters of {what} do not fit AlexNet(variant={model.variant!r}, '
        f'width={model.width}, num_classes={model.num_classes}): ' + '; '.join(problems))


def _hide_read_only_notice(record: logging.logging.LogRecord) -> bool:
  """Orbax warns that the directory is read only each time a reader opens one, which is what a
  reader asks for: a filter on absl's logger that drops that one line."""
  return not record.getMessage().startswith('Given directory is read only')


def open_read_only(directory: str, handler: ocp.CheckpointHandler | None = None
                   ) -> ocp.CheckpointManager:
  """A CheckpointManager that reads `directory` and never creates, deletes or renames anything in
  it: a run may be writing a checkpoint there right now (Orbax's read-write manager deletes the
  temporary directory of a save in flight when it opens), and the workdir may be read-only.
  It knows the best checkpoint by its `top1_err`, as `Checkpointer` writes them."""
  absl_logger = logging.get_absl_logger()
  if _hide_read_only_notice not in absl_logger.filters:
    absl_logger.addFilter(_hide_read_only_notice)
  return ocp.CheckpointManager(
      directory, item_handlers=handler or ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0,
          best_fn=lambda metrics: metrics['top1_err'], best_mode='min'))


def checkpoint_step(workdir: str, checkpoint: str = 'latest') -> tuple[str, int]:
  """(checkpoint directory, step) named by `checkpoint`: 'latest', 'best' or a step number."""
  latest_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(latest_dir):
    raise errors.NotFoundError(f'{workdir} has no checkpoints/ folder: give the --workdir of a run '
                               'of alexnet_jax.main or of alexnet_jax.convert.')
  best_dir = os.path.join(os.path.abspath(workdir), 'checkpoints_best')
  directory = best_dir if checkpoint == 'best' else latest_dir
  if checkpoint not in ('latest', 'best') and not str(checkpoint).isdigit():
    raise errors.InvalidError(f'checkpoint={checkpoint!r}: use latest, best or a step number.')
  if not os.path.isdir(directory):
    step = None
  else:
    manager = open_read_only(directory)
    try:
      if checkpoint == 'latest':
        step = manager.latest_step()
      elif checkpoint == 'best':
        step = manager.best_step()
      else:
        step = int(checkpoint)
        if step not in manager.all_steps():
          raise errors.NotFoundError(f'No checkpoint of step {step} in {latest_dir}; it holds steps '
                                     f'{list(manager.all_steps())}.')
    finally:
      manager.close()
  if step is None:
    hint = (' (best checkpoints are written at evals during training; use --checkpoint=latest)'
            if checkpoint == 'best' else '')
    raise errors.NotFoundError(f'No {checkpoint} checkpoint in {directory}{hint}.')
  return directory, int(step)


def restore_params(workdir: str, checkpoint: str = 'latest') -> tuple[dict[str, Any], int]:
  """(params as host NumPy arrays, step) of a workdir's checkpoint; reads the parameters only, and
  writes nothing.

  Works whatever optimizer wrote the checkpoint and however many devices it ran on.
  """
  directory, step = checkpoint_step(workdir, checkpoint)
  manager = open_read_only(directory, ocp.PyTreeCheckpointHandler())
  try:
    stored = manager.item_metadata(step).tree  # shapes and dtypes, nothing read yet
    if 'params' not in stored:
      raise errors.InvalidError(f'The checkpoint of step {step} in {directory} holds no params.')
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
    target = {'params': jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=host), stored['params'])}
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  finally:
    manager.close()
  return jax.tree.map(np.asarray, restored['params']), step


def load_pretrained_params(path: str, target_params: Mapping[str, Any]) -> dict[str, Any]:
  """`target_params` with every layer replaced by the latest checkpoint's of workdir `path`.

  fc8, the classifier, keeps its value from `target_params` (a fresh initialization) when its shape
  differs, so a 1000-class ImageNet model starts a 10-class fine-tuning. Any other difference is an
  error: the two models must share everything below the classifier.
  """
  source, step = restore_params(path)
  shapes = lambda tree: jax.tree.map(np.shape, dict(tree))
  params, problems = {}, []
  for layer, target in target_params.items():
    if layer in source and shapes(source[layer]) == shapes(target):
      params[layer] = source[layer]
    elif layer == 'fc8' and layer in source:
      logging.info('init_from %s: fc8 %s -> %s, keeping its fresh initialization', path,
                   np.shape(source['fc8']['kernel']), np.shape(target['kernel']))
      params[layer] = jax.tree.map(np.asarray, dict(target))
    else:
      problems.append(f'{layer}: {shapes(source[layer]) if layer in source else "absent"} in '
                      f'{path}, {shapes(target)} in this model')
  if problems:
    raise errors.InvalidError(
        f'Cannot start from {path} (step {step}): its model differs from this config\'s below the '
        f'classifier ({"; ".join(problems)}). Only fc8 may differ; set config.model to the model '
        'that wrote it (see its config.json).')
  logging.info('initialized from %s, step %d', path, step)
  return params


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A checkpoint with what it takes to run it."""
  config: ml_collections.ConfigDict  # DIR/config.json, with any overrides
  model: AlexNet
  params: dict[str, Any]  # host NumPy arrays
  step: int


def load(workdir: str, checkpoint: str = 'latest', **overrides: Any) -> Loaded:
  """The model of DIR/config.json with the parameters of checkpoint 'latest', 'best' or STEP."""
  config = load_config(workdir, **overrides)
  model = steps.create_model(config, config.num_classes)
  params, step = restore_params(workdir, checkpoint)
  check_params_match(params, model, config.image_size,
                             f'the {checkpoint} checkpoint (step {step}) of {workdir}')
  return Loaded(config=config, model=model, params=params, step=step)
