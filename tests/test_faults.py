"""Faults a long run meets, each with real `python -m alexnet_jax.main` processes and real signals.

Every run here is the same tiny job (16 steps of a 1/8-width AlexNet on 67x67 synthetic images, 2 CPU
devices); `reference` runs it once without interruption, and the faulty runs are compared with it bit for
bit. A persistent compilation cache shared by the runs keeps each restart to its start-up cost.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import errors
from alexnet_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 16
CHECKPOINT_EVERY = 4
RUN_FLAGS = (
    '--config=configs/smoke.py', '--config.model.width=0.125', '--config.image_size=67',
    '--config.batch_size=16', '--config.synthetic_train_examples=256',
    '--config.synthetic_eval_examples=32', '--config.lr_schedule=constant',
    f'--config.num_train_steps={TOTAL_STEPS}', '--config.log_every_steps=2',
    '--config.eval_every_steps=8', f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}')
TMP_MARKER = '.orbax-checkpoint-tmp'  # Orbax's name for a checkpoint still being written


@pytest.fixture(scope='module')
def run_env(tmp_path_factory):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  env['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('jax_cache'))
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


class Run:
  """One `python -m alexnet_jax.main` process on `workdir`; its output goes to a log file."""

  def __init__(self, workdir, env, *overrides, file_size_limit_kib=None):
    self.workdir = str(workdir)
    self.log_path = f'{self.workdir}.{time.monotonic_ns()}.log'
    command = [sys.executable, '-m', 'alexnet_jax.main', *RUN_FLAGS, f'--workdir={self.workdir}',
               *overrides]
    if file_size_limit_kib:  # RLIMIT_FSIZE, set by the shell that then becomes the run
      command = ['bash', '-c', f'ulimit -f {file_size_limit_kib} && exec "$@"', 'bash', *command]
    with open(self.log_path, 'w') as log:
      self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait(self, timeout=300) -> int:
    return self.process.wait(timeout=timeout)

  def wait_for(self, condition, what, timeout=300) -> None:
    """Polls `condition` every 2 ms (fast enough to catch a checkpoint being written)."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.process.poll() is not None:
        raise AssertionError(f'the run exited ({self.process.returncode}) before {what}:\n'
                             f'{self.log()[-3000:]}')
      assert time.monotonic() < deadline, f'timed out waiting for {what}'
      time.sleep(0.002)

  def finish(self) -> None:
    """Waits for the run and asserts it finished cleanly."""
    code = self.wait()
    assert code == 0, f'exit code {code}:\n{self.log()[-3000:]}'

  def kill(self, signum=signal.SIGKILL) -> None:
    self.process.send_signal(signum)


def checkpoint_names(workdir) -> list[str]:
  directory = os.path.join(workdir, 'checkpoints')
  return os.listdir(directory) if os.path.isdir(directory) else []


def temporary_dirs(workdir, step) -> set[tuple[int, int]]:
  """(inode, ctime) of each temporary directory of checkpoint `step`: it is being written, or was when
  a run died. (An inode alone may be reused by the next run's directory of the same name.)"""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return set()
  found = set()
  for entry in os.scandir(directory):
    if entry.name.startswith(f'{step}{TMP_MARKER}'):
      try:
        found.add((entry.inode(), entry.stat().st_ctime_ns))
      except FileNotFoundError:  # renamed or cleaned up just now
        pass
  return found


def last_train_step(workdir) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line)['step'] for line in f if '"train"' in line]
  return max(steps, default=0)


def checkpoint_manager(workdir, directory='checkpoints'):
  """A read-only view: it neither creates nor cleans up anything."""
  return ocp.CheckpointManager(
      os.path.join(workdir, directory), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(read_only=True))


def restore(workdir, step=None):
  """(step, whole train state as a flat {path: NumPy array}) of checkpoint `step` (default: latest)."""
  manager = checkpoint_manager(workdir)
  step = manager.latest_step() if step is None else step
  state = manager.restore(step)
  flat = {}

  def walk(prefix, tree):
    if isinstance(tree, dict):
      for key, value in tree.items():
        walk(f'{prefix}/{key}', value)
    elif isinstance(tree, (list, tuple)):
      for index, value in enumerate(tree):
        walk(f'{prefix}/{index}', value)
    elif tree is not None:  # None: optax's empty states
      flat[prefix] = np.asarray(tree)
  walk('', state)
  return step, flat


def assert_bitwise_equal(a, b):
  assert a.keys() == b.keys()
  different = [key for key in a if a[key].dtype != b[key].dtype or a[key].shape != b[key].shape
               or a[key].tobytes() != b[key].tobytes()]
  assert not different, f'differ: {different}'


def metrics_rows(workdir) -> list[tuple]:
  """(step, split, loss, top-1 error) of each record of metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [(r['step'], r['split'], r['loss'], r['top1_err']) for r in rows]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, run_env):
  """The uninterrupted run: its workdir."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  Run(workdir, run_env).finish()
  return workdir


def copy_of(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  return workdir


def assert_matches_reference(workdir, reference):
  """Same final train state, bit for bit, and the same records in metrics.jsonl: a run restarted
  from an earlier checkpoint replaces the records of the steps it redoes, so the file is one
  history."""
  step, state = restore(workdir)
  reference_step, reference_state = restore(reference)
  assert step == reference_step == TOTAL_STEPS
  assert_bitwise_equal(state, reference_state)
  rows, expected = metrics_rows(workdir), metrics_rows(reference)
  assert [row[:2] for row in rows] == [row[:2] for row in expected]  # each record once, in order
  # (A training record averages the steps since the previous one: after a resume between log
  # steps it averages fewer, so only the evals are compared number for number.)
  assert [row for row in rows if row[1] == 'eval'] == [row for row in expected if row[1] == 'eval']


def test_kill_9_at_any_moment_then_rerun_gives_the_uninterrupted_result(tmp_path, run_env, reference):
  workdir = str(tmp_path / 'run')
  moment = random.Random(0)  # the kill moments: varied, and the same on every test run
  half_written_seen = []

  def kill_while_writing():
    """Kills the rerun while it writes the checkpoint after the latest complete one."""
    step = (checkpoint_manager(workdir).latest_step() or 0) + CHECKPOINT_EVERY
    left_by_earlier_runs = temporary_dirs(workdir, step)
    run = Run(workdir, run_env)
    run.wait_for(lambda: temporary_dirs(workdir, step) - left_by_earlier_runs,
                 f'checkpoint {step} being written')
    run.kill()
    assert run.wait() == -signal.SIGKILL
    if temporary_dirs(workdir, step) - left_by_earlier_runs:  # killed before Orbax renamed it
      half_written_seen.append(step)
      # Orbax never lists it as a step, so the next run resumes from the one before.
      assert step not in checkpoint_manager(workdir).all_steps()

  # 1. While the first checkpoint is being written: nothing complete yet, the rerun starts over.
  kill_while_writing()
  # 2. Anywhere: in a step, an eval, a save, a metrics write.
  run = Run(workdir, run_env)
  kill_after = moment.randint(5, 8)
  run.wait_for(lambda: last_train_step(workdir) >= kill_after, f'step {kill_after}')
  time.sleep(moment.uniform(0, 0.01))  # a few steps at most: the run must not finish first
  run.kill()
  assert run.wait() == -signal.SIGKILL
  # 3. While a later checkpoint is being written.
  kill_while_writing()
  # And the same command once more, to the end.
  Run(workdir, run_env).finish()

  assert half_written_seen, 'no kill landed while a checkpoint was being written'
  assert not [name for name in checkpoint_names(workdir) if TMP_MARKER in name]  # cleaned up
  assert_matches_reference(workdir, reference)


def test_sigterm_and_sigusr1_checkpoint_the_current_step_and_exit_75(tmp_path, run_env, reference):
  workdir = str(tmp_path / 'run')
  # SIGTERM mid-run: the step it lands after is saved, whether or not it is a checkpoint step.
  run = Run(workdir, run_env)
  run.wait_for(lambda: last_train_step(workdir) >= 6, 'step 6')
  run.kill(signal.SIGTERM)
  assert run.wait() == errors.PREEMPTED, run.log()[-3000:]
  saved = int(re.search(r'SIGTERM received: saved a checkpoint at step (\d+)', run.log()).group(1))
  assert 6 <= saved < TOTAL_STEPS
  assert checkpoint_manager(workdir).latest_step() == saved

  # SIGUSR1 (SLURM's warning before its time limit) while the rerun is still starting up: it saves
  # after its first step.
  run = Run(workdir, run_env)
  run.wait_for(lambda: 'resuming from' in run.log(), 'the restore')
  run.kill(signal.SIGUSR1)
  assert run.wait() == errors.PREEMPTED, run.log()[-3000:]
  assert f'SIGUSR1 received: saved a checkpoint at step {saved + 1}' in run.log()
  assert checkpoint_manager(workdir).latest_step() == saved + 1

  Run(workdir, run_env).finish()
  assert_matches_reference(workdir, reference)


def test_ctrl_c_checkpoints_the_current_step_and_exits_130_and_a_second_stops_at_once(
    tmp_path, run_env, reference):
  workdir = str(tmp_path / 'run')
  # Ctrl-C mid-run saves the step it lands after, as SIGTERM does, and says how to resume. It was
  # a KeyboardInterrupt: no checkpoint, every step since the last one lost.
  run = Run(workdir, run_env)
  run.wait_for(lambda: last_train_step(workdir) >= 6, 'step 6')
  run.kill(signal.SIGINT)
  assert run.wait() == errors.INTERRUPTED, run.log()[-3000:]
  saved = int(re.search(r'Ctrl-C \(SIGINT\) received: saved a checkpoint at step (\d+); rerun the '
                        r'same command to resume from it', run.log()).group(1))
  assert 6 <= saved < TOTAL_STEPS
  assert checkpoint_manager(workdir).latest_step() == saved

  # Two while the rerun starts up: the second stops it at once, before any step or save.
  run = Run(workdir, run_env)
  run.wait_for(lambda: 'resuming from' in run.log(), 'the restore')
  run.kill(signal.SIGINT)
  run.wait_for(lambda: 'Ctrl-C received' in run.log(), 'the first Ctrl-C to be seen')
  run.kill(signal.SIGINT)
  assert run.wait() == -signal.SIGINT, run.log()[-3000:]
  assert 'saved a checkpoint' not in run.log()
  assert checkpoint_manager(workdir).latest_step() == saved

  Run(workdir, run_env).finish()
  assert_matches_reference(workdir, reference)


def test_ctrl_c_to_launch_local_stops_both_processes_at_one_checkpoint(tmp_path, run_env):
  # A terminal's Ctrl-C reaches the launcher's process group; the launcher passes it to each
  # process once, and they agree on the step they save, as for SIGTERM.
  workdir = str(tmp_path / 'run')
  with open(tmp_path / 'launcher.log', 'w') as log:
    launcher = subprocess.Popen(
        [sys.executable, '-m', 'launch.local', '--num_processes=2', '--cpu_devices_per_process=1',
         '--', *RUN_FLAGS, f'--workdir={workdir}'],
        cwd=REPO, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + 300
    while last_train_step(workdir) < 6:
      assert launcher.poll() is None, (tmp_path / 'launcher.log').read_text()[-3000:]
      assert time.monotonic() < deadline, 'timed out waiting for step 6'
      time.sleep(0.01)
    os.killpg(launcher.pid, signal.SIGINT)
    assert launcher.wait(timeout=300) == errors.INTERRUPTED
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
  output = (tmp_path / 'launcher.log').read_text()
  saved = {int(step) for step in re.findall(r'\[[01]\] .*received: saved a checkpoint at step (\d+)',
                                            output)}
  assert len(saved) == 1 and len(re.findall(r'saved a checkpoint at step', output)) == 2, output
  assert checkpoint_manager(workdir).latest_step() == saved.pop()
  assert '[Gloo]' not in output  # the processes' gloo chatter, left out without --verbose


def test_two_processes_agree_on_the_step_they_save_when_one_is_signalled(tmp_path, run_env):
  # Only process 1 gets SIGTERM; the flag is combined across processes at log steps (every 2), so
  # both stop after the same step, write one checkpoint together and exit 75.
  workdir = str(tmp_path / 'run')
  env = dict(run_env, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  runs = [Run(workdir, env, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
              f'--process_id={index}') for index in range(2)]
  runs[0].wait_for(lambda: last_train_step(workdir) >= 6, 'step 6')
  runs[1].kill(signal.SIGTERM)
  assert [run.wait() for run in runs] == [errors.PREEMPTED] * 2, runs[0].log()[-3000:]
  saved = [int(re.search(r'received: saved a checkpoint at step (\d+)', run.log()).group(1))
           for run in runs]
  assert saved[0] == saved[1] and saved[0] % 2 == 0 and 6 <= saved[0] < TOTAL_STEPS
  assert "a peer process's SIGTERM received" in runs[0].log()
  assert checkpoint_manager(workdir).latest_step() == saved[0]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, run_env,
                                                                           reference):
  # Resume the finished reference for 4 more steps at a rate that blows the params up at once, so
  # the loss of step 18 (or of step 17, if its own update already overflows) is not finite. Steps
  # are counted as in metrics.jsonl: step N is the N-th update.
  workdir = copy_of(reference, tmp_path)
  more_steps = ('--config.num_train_steps=20', '--config.learning_rate=1e30')
  run = Run(workdir, run_env, *more_steps)
  assert run.wait() == 1
  error = re.search(r'error: The loss or a gradient became NaN/Inf at step (\d+) \(that '
                    r'update was not applied\)\. The latest checkpoint, step (\d+), is from before it '
                    r'and is intact\.', run.log())
  assert error, run.log()[-3000:]
  bad_step = int(error.group(1))
  assert TOTAL_STEPS < bad_step <= 18 and int(error.group(2)) == TOTAL_STEPS  # stopped at log step 18
  assert checkpoint_manager(workdir).all_steps()[-1] == TOTAL_STEPS
  assert_bitwise_equal(restore(workdir)[1], restore(reference)[1])

  # With skip_nonfinite_steps the same run goes on to step 20: every update from `bad_step` on is
  # skipped (none applied, the checkpoint stays finite), counted and logged.
  run = Run(workdir, run_env, *more_steps, '--config.skip_nonfinite_steps=True')
  run.finish()
  assert (f'step 18: {18 - bad_step + 1} steps with a NaN/Inf loss or gradient skipped so '
          'far (their updates were not applied)') in run.log()
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last_train_row = [json.loads(line) for line in f if '"train"' in line][-1]
  assert last_train_row['step'] == 20 and last_train_row['nonfinite_steps'] == 20 - bad_step + 1
  step, state = restore(workdir)
  assert step == 20 and all(np.isfinite(v).all() for k, v in state.items() if k.startswith('/params'))
  assert state['/nonfinite_steps'] == 20 - bad_step + 1
  assert state['/first_nonfinite_step'] == bad_step - 1  # the 0-based index of the update

  # Skipping off again: the steps skipped above do not stop the run (they did, naming step
  # `bad_step`, before such a resume started afresh); its own first bad step does.
  run = Run(workdir, run_env, '--config.num_train_steps=22', '--config.learning_rate=1e30')
  assert run.wait() == 1
  named = re.search(r'error: The (?:loss or a gradient became NaN/Inf at|parameters or optimizer '
                    r'state became NaN/Inf by) step (\d+)', run.log())
  assert named and 20 < int(named.group(1)) <= 22, run.log()[-3000:]


def test_a_failed_checkpoint_write_is_reported_and_the_previous_checkpoint_survives(tmp_path, run_env,
                                                                                    reference):
  workdir = copy_of(reference, tmp_path)
  # A file-size limit binds root too (permissions do not): a write past it fails with EFBIG, as a
  # write to a full disk fails with ENOSPC. The limit lets every other file of a run through (the
  # largest, TensorBoard's train events with the input-image grid, is ~200 KB) but not a checkpoint's
  # arrays (~2.4 MB, which Orbax's OCDBT packs into one to three data files, unevenly, varying from
  # save to save; a limit derived from one save's largest file let another save through).
  limit_kib = 512
  data_bytes = sum(os.path.getsize(os.path.join(directory, name))
                   for directory, _, names in os.walk(os.path.join(reference, 'checkpoints',
                                                                   str(TOTAL_STEPS)))
                   for name in names)
  other_bytes = max(os.path.getsize(os.path.join(directory, name))
                    for directory, _, names in os.walk(reference) for name in names
                    if 'checkpoints' not in directory)
  assert other_bytes < limit_kib * 1024 < data_bytes // 4
  run = Run(workdir, run_env, '--config.num_train_steps=20', file_size_limit_kib=limit_kib)
  assert run.wait() == 1
  error = [line for line in run.log().splitlines() if line.startswith('error: ')]
  assert len(error) == 1, run.log()[-3000:]
  assert error[0].startswith('error: Writing the checkpoint of step 20 to ')
  assert 'File too large' in error[0] and 'is intact' in error[0]
  assert checkpoint_manager(workdir).latest_step() == TOTAL_STEPS
  assert_bitwise_equal(restore(workdir)[1], restore(reference)[1])


def test_a_write_failing_on_one_of_two_processes_stops_both_and_keeps_the_checkpoint(
    tmp_path, run_env, reference):
  # Process 0 cannot write its part of checkpoint 20 (the file-size limit above); process 1 can. The
  # first never reaches Orbax's barrier, so both wait out checkpoint_timeout_seconds and then stop
  # with the error. With Orbax's default of 20 minutes the run stalled (5 minutes, when it was killed).
  workdir = copy_of(reference, tmp_path)
  env = dict(run_env, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  start = time.monotonic()
  runs = [Run(workdir, env, '--config.num_train_steps=20', '--config.checkpoint_timeout_seconds=10',
              f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
              f'--process_id={index}', file_size_limit_kib=512 if index == 0 else None)
          for index in range(2)]
  assert [run.wait(timeout=240) for run in runs] == [1, 1], runs[0].log()[-3000:]
  assert time.monotonic() - start < 180
  for run in runs:
    error = [line for line in run.log().splitlines() if line.startswith('error: ')]
    assert len(error) == 1 and error[0].startswith('error: Writing the checkpoint of step 20 '), (
        run.log()[-3000:])
    assert 'did not reach Orbax\'s barrier' in error[0] and 'step 16, is intact' in error[0]
  assert 'File too large' in runs[0].log()  # Orbax logs the cause where it happened
  assert checkpoint_manager(workdir).latest_step() == TOTAL_STEPS
  assert_bitwise_equal(restore(workdir)[1], restore(reference)[1])


def test_a_workdir_of_another_model_is_refused_with_the_fix(tmp_path, run_env, reference):
  # Its config.json names the key that differs, before anything is built.
  workdir = copy_of(reference, tmp_path)
  run = Run(workdir, run_env, '--config.model.width=0.25')
  assert run.wait() == 2
  assert ("error: --workdir={} holds a run of another model: config.model.width is 0.125 there and "
          "0.25 now, which changes the shapes of the train state. Use a new --workdir for this config, "
          "or resume that run with --config.model.width=0.125.").format(workdir) in run.log()
  assert checkpoint_manager(workdir).latest_step() == TOTAL_STEPS

  # Without config.json the checkpoint's own shapes are compared with the state the config builds,
  # before Orbax reads any array: here a state whose fc8 has 20 classes instead of 10.
  stored = checkpoint_manager(workdir).item_metadata(TOTAL_STEPS)
  wanted = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), stored)
  wanted['params']['fc8']['kernel'] = np.zeros(stored['params']['fc8']['kernel'].shape[:1] + (20,))
  checkpointer = workdir_lib.Checkpointer(workdir, keep=3)
  with pytest.raises(workdir_lib.CheckpointMismatchError,
                     match=r'was written by a different model .*params/fc8/kernel: checkpoint '
                           r'\(\d+, 10\), config \(\d+, 20\).* Use a new --workdir for this config'):
    checkpointer.restore(wanted)
  checkpointer.close()
