"""Several processes, one run: real processes on this machine, started by launch/local.py."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from alexnet_jax import data, distributed, optim, steps
from alexnet_jax import workdir as workdir_lib
from configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run of a few seconds: the smoke config (width 0.25, 67x67, learnable synthetic data) for 6 steps.
TINY_RUN = {
    'batch_size': 16, 'synthetic_eval_examples': 32, 'num_train_steps': 6, 'log_every_steps': 2,
    'eval_every_steps': 100, 'checkpoint_every_steps': 100,
}


def tiny_run_args(workdir: str, **overrides) -> list[str]:
  """main's flags for the smoke config with TINY_RUN and `overrides` applied."""
  return ['--config=configs/smoke.py', f'--workdir={workdir}',
          *(f'--config.{key}={value}' for key, value in {**TINY_RUN, **overrides}.items())]


def tiny_config(**overrides):
  config = smoke.get_config()
  config.update_from_flattened_dict({**TINY_RUN, **overrides})
  return config


def env_with_cpu_devices(count: int) -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=REPO)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={count}'
  return env


def restore_latest(workdir: str, config) -> tuple[int, dict]:
  """The latest checkpoint in `workdir`, restored through the project's own Checkpointer into a
  single-device state (whatever topology wrote it): (step, params as NumPy)."""
  info = data.get_dataset_info(config)
  model = steps.create_model(config, info.num_classes)
  tx = optim.create_optimizer(config, max(info.num_train_examples // config.batch_size, 1),
                              config.num_train_steps)
  target = steps.create_train_state(config, model, tx)
  checkpointer = workdir_lib.Checkpointer(workdir, keep=config.keep_checkpoints, async_save=False)
  try:
    step = checkpointer.latest_step()
    state = checkpointer.restore(target)
  finally:
    checkpointer.close()
  return step, jax.tree.map(np.asarray, state.params)


def _train_in_one_and_in_two_processes(tmp_path, devices: int, **overrides) -> tuple[str, str]:
  """The tiny run with `overrides` in 1 process x `devices` CPU devices and in 2 processes x
  `devices`/2 (launch/local.py), side by side; both must finish. Returns their workdirs."""
  one_dir, two_dir = str(tmp_path / 'one_process'), str(tmp_path / 'two_processes')
  one = subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', *tiny_run_args(one_dir, **overrides)], cwd=REPO,
      env=env_with_cpu_devices(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  two = subprocess.run(
      [sys.executable, '-m', 'launch.local', '--num_processes=2',
       f'--cpu_devices_per_process={devices // 2}', '--', *tiny_run_args(two_dir, **overrides)],
      cwd=REPO, env=env_with_cpu_devices(devices // 2), capture_output=True, text=True, timeout=600)
  one_output = one.communicate(timeout=600)[0]
  assert one.returncode == 0, one_output[-3000:]
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
  with open(os.path.join(two_dir, 'run_info.json')) as f:
    run_info = json.load(f)
  assert (run_info['process_count'], run_info['device_count'], run_info['finished']) == (
      2, devices, True)
  return one_dir, two_dir


def _assert_same_final_params(one_dir: str, two_dir: str) -> None:
  config = tiny_config()
  one_step, one_params = restore_latest(one_dir, config)
  two_step, two_params = restore_latest(two_dir, config)
  assert one_step == two_step == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
               one_params, two_params)


@pytest.mark.slow
@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_two_processes_train_like_one(tmp_path, parallelism):
  """1 process x 2 devices and 2 processes x 1 device see the same global batches and devices, so
  they must end at the same parameters. Tolerance: 1e-6 absolute (float32 all-reduce order across
  processes may differ from in-process; in practice the results are bit-identical). With pmap this
  failed when each process's pmap spanned its own devices only: no gradient crossed processes."""
  # An eval (with its best-checkpoint save) and a checkpoint at every other step: both Orbax managers
  # save the same step at once, which across processes needs distinct barrier names.
  one_dir, two_dir = _train_in_one_and_in_two_processes(
      tmp_path, 2, eval_every_steps=2, checkpoint_every_steps=2, parallelism=parallelism)
  # Only process 0 writes metrics: every record appears once.
  with open(os.path.join(two_dir, 'metrics.jsonl')) as f:
    records = [(r['split'], r['step']) for r in map(json.loads, f)]
  assert len(records) == len(set(records)) and ('eval', 6) in records
  _assert_same_final_params(one_dir, two_dir)


@pytest.mark.slow
def test_model_parallel_in_two_processes_trains_like_one(tmp_path):
  """The paper's two-tower split (model_parallel=2) with two pairs of devices: in one process, and in
  two processes holding one pair each (split weights sharded within each process, the batch across
  both; the checkpoint written by both)."""
  one_dir, two_dir = _train_in_one_and_in_two_processes(
      tmp_path, 4, model_parallel=2, checkpoint_every_steps=3)
  _assert_same_final_params(one_dir, two_dir)


_PROBE = textwrap.dedent('''
    """Joins a run like main does, then optionally dies mid-collective."""
    import os
    from absl import app, flags
    import jax
    from jax.experimental import multihost_utils
    import numpy as np
    from alexnet_jax import distributed

    _WORKDIR = flags.DEFINE_string('workdir', None, '')
    _OWN_WORKDIR = flags.DEFINE_bool('own_workdir', False, 'each process its own dir: not shared')
    _DIE = flags.DEFINE_integer('die', -1, 'this process exits after a few collectives')

    _HEARTBEAT = flags.DEFINE_integer('heartbeat_timeout_seconds', 60, '')
    _COORDINATOR = flags.DEFINE_string('coordinator_address', None, '')
    _NUM = flags.DEFINE_integer('num_processes', None, '')
    _ID = flags.DEFINE_integer('process_id', None, '')

    def main(argv):
      distributed.initialize(_COORDINATOR.value, _NUM.value, _ID.value, _HEARTBEAT.value)
      workdir = _WORKDIR.value
      if _OWN_WORKDIR.value:
        workdir = os.path.join(workdir, str(jax.process_index()))
      distributed.check_shared_workdir(workdir)
      print('joined', jax.process_index(), 'of', jax.process_count(), flush=True)
      if _DIE.value >= 0:
        for i in range(1000):
          multihost_utils.process_allgather(np.int32(i))
          if i == 3 and jax.process_index() == _DIE.value:
            os._exit(3)
    app.run(main)
''')


def _run_probe(tmp_path, *probe_args: str) -> subprocess.CompletedProcess:
  (tmp_path / 'probe.py').write_text(_PROBE)
  env = env_with_cpu_devices(1)
  env['PYTHONPATH'] = f'{tmp_path}{os.pathsep}{REPO}'
  return subprocess.run(
      [sys.executable, '-m', 'launch.local', '--num_processes=2', '--module=probe', '--',
       f'--workdir={tmp_path / "work"}', *probe_args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_workdir_not_shared_is_a_clear_error(tmp_path):
  result = _run_probe(tmp_path, '--own_workdir')
  assert result.returncode != 0
  # Both processes stop with the same message, naming the fix.
  assert result.stdout.count('is not the same directory on every process') == 2, result.stdout[-3000:]
  assert 'storage all hosts share' in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize('dead_process', [0, 1])
def test_a_dead_process_ends_the_run(tmp_path, dead_process):
  """The survivor exits with an error within the heartbeat timeout (5 s here) plus start-up; a
  hang would hit the 120 s subprocess timeout instead."""
  result = _run_probe(tmp_path, f'--die={dead_process}', '--heartbeat_timeout_seconds=5')
  assert result.stdout.count('joined') == 2, result.stdout[-3000:]
  assert result.returncode != 0
  assert 'killing process' not in result.stdout  # the survivor left on its own, not by the launcher
  assert f'process {dead_process} exited with status 3' in result.stdout


def test_partial_flags_are_rejected():
  with pytest.raises(ValueError, match='--coordinator_address'):
    distributed.initialize(num_processes=2, process_id=0)


def test_slurm_allocation_outside_a_job_step_asks_for_srun(monkeypatch):
  """In an sbatch script (no srun), SLURM_NTASKS says 2 but JAX could not find the peers."""
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_NTASKS', '2')
  monkeypatch.delenv('SLURM_STEP_NODELIST', raising=False)
  with pytest.raises(RuntimeError, match='srun'):
    distributed.initialize()
