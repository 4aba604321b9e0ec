"""Orbax checkpoints of the train state in `WORKDIR/checkpoints` (and the best one in
`WORKDIR/checkpoints_best`).

Orbax writes each step to a temporary directory (`<step>.orbax-checkpoint-tmp`) and renames it only once
complete, so a run killed mid-save leaves no half-written checkpoint for `latest_step` to find; the next run
deletes such leftovers. Saving is asynchronous: training continues while the previous checkpoint is written;
`wait` blocks until it is on disk. A write that fails (disk full, directory gone or read-only) surfaces at
the next `save` or `wait` as a CheckpointWriteError naming the step; the earlier checkpoints are untouched,
since Orbax deletes old steps only after a new one is complete. In a multi-process run, a process whose
write fails leaves the others waiting at Orbax's barriers; all stop with the error once
`checkpoint_timeout_seconds` have passed.

Restoring checks the checkpoint's array shapes against the model built from the current config first, so
a workdir holding another model's checkpoints gives a readable error instead of an Orbax traceback.
"""

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


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


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoints were written by a model or optimizer of another shape."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; the previous ones are intact."""


DEFAULT_TIMEOUT_SECONDS = 300  # configs/default.py's checkpoint_timeout_seconds


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

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.best_step()

  def all_steps(self) -> list[int]:
    return list(self._latest.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing `state` as checkpoint `step` (after the previous write has finished)."""
    self._save(self._latest, step, state)

  def save_best(self, step: int, state: Any, top1_err: float) -> None:
    """Offers the state for `checkpoints_best`; Orbax keeps it only if its error is the lowest."""
    self._save(self._best, step, state, metrics={'top1_err': float(top1_err)})

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
      raise FileNotFoundError(f'no checkpoint in {manager.directory}')
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
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._failed:
          raise self._write_error(manager, self._writing[id(manager)], e) from e
        logging.warning('closed %s after its failed write: %s', manager.directory, e)
