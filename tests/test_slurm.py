"""launch/slurm/train.sbatch on a real one-node SLURM cluster (127.0.0.1), submitted with sbatch.

The cluster comes from .ci/setup_slurm.sh (run by .ci/run; run it by hand, as root, to try these
tests locally). Without it these tests fail, saying so: they are part of CI, not optional.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from test_distributed import REPO, env_with_cpu_devices, restore_latest, tiny_config, tiny_run_args

pytestmark = pytest.mark.slow

_SETUP_HINT = 'start the test cluster first: `sudo bash .ci/setup_slurm.sh` (installs slurm-wlm + munge)'
_TOTAL_STEPS = 60


@pytest.fixture(scope='module')
def slurm_cluster():
  if shutil.which('sbatch') is None:
    pytest.fail(f'sbatch not found: {_SETUP_HINT}')
  # A node still completing an earlier job ('comp') is up: give it a minute to become usable.
  deadline = time.monotonic() + 60
  while True:
    state = subprocess.run(['sinfo', '--noheader', '--format=%t'], capture_output=True, text=True)
    if state.returncode == 0 and re.search(r'idle|mix|alloc', state.stdout):
      return
    if state.returncode != 0 or 'comp' not in state.stdout or time.monotonic() > deadline:
      pytest.fail(f'no SLURM node is up ({state.stdout.strip()} {state.stderr.strip()}): '
                  f'{_SETUP_HINT}')
    time.sleep(1)


def _job_field(job_id: str, field: str) -> str:
  shown = subprocess.run(['scontrol', 'show', 'job', '--oneliner', job_id],
                         capture_output=True, text=True, check=True).stdout
  return re.search(rf'\b{field}=(\S+)', shown).group(1)


def _wait_for(condition, what: str, timeout: float = 600):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if result := condition():
      return result
    time.sleep(0.5)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def _train_records(workdir: str) -> list[dict]:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [r for r in map(json.loads, f) if r['split'] == 'train']
  except (OSError, ValueError):
    return []


def test_two_task_job_trains_is_requeued_near_its_time_limit_and_resumes(slurm_cluster, tmp_path):
  workdir, log = str(tmp_path / 'run'), tmp_path / 'job.log'
  env = env_with_cpu_devices(1)
  env['PYTHON'] = sys.executable
  job_id = subprocess.run(
      ['sbatch', '--parsable', '--ntasks=2', f'--output={log}', 'launch/slurm/train.sbatch',
       *tiny_run_args(workdir, num_train_steps=_TOTAL_STEPS, log_every_steps=2)],
      cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
  try:
    # Stand in for `--signal=B:USR1@300`: what SLURM sends the batch script near the time limit.
    _wait_for(lambda: _train_records(workdir), 'the first training steps')
    subprocess.run(['scancel', '--batch', '--signal=USR1', job_id], check=True)
    # The script requeues the job. SLURM holds a requeued job back until the old allocation's
    # credential has expired (AuthInfo=cred_expire; .ci/setup_slurm.sh sets 10 s): started earlier,
    # the job is killed as "non-startable: Job credential revoked". Wait out that hold, then ask for
    # a scheduling pass at once instead of at the scheduler's next periodic one.
    _wait_for(lambda: _job_field(job_id, 'Restarts') == '1'
              and _job_field(job_id, 'JobState') == 'PENDING', 'the requeue')
    hold_ends = datetime.datetime.fromisoformat(_job_field(job_id, 'StartTime'))
    time.sleep(max(0.0, (hold_ends - datetime.datetime.now()).total_seconds()) + 1)
    update = subprocess.run(['scontrol', 'update', f'JobId={job_id}', 'StartTime=now'],
                            capture_output=True, text=True)
    # The scheduler may have started the job in the meantime ("Job is no longer pending
    # execution"): then there is nothing to hurry.
    if update.returncode != 0 and _job_field(job_id, 'JobState') == 'PENDING':
      raise AssertionError(f'scontrol update failed: {update.stderr}')
    _wait_for(lambda: '(restart 1)' in log.read_text(), 'the requeued job to start', timeout=300)
    state = _wait_for(
        lambda: (s := _job_field(job_id, 'JobState')) not in ('PENDING', 'RUNNING', 'REQUEUED',
                                                               'COMPLETING', 'CONFIGURING') and s,
        'the job to end')
  finally:
    subprocess.run(['scancel', job_id], capture_output=True)
  output = log.read_text()
  assert state == 'COMPLETED', output[-5000:]

  # Both tasks joined one run through SLURM's variables, twice (first attempt and requeued one).
  for task in (0, 1):
    assert len(re.findall(rf'Joined a run of 2 processes as process {task} \(via slurm\)', output)) == 2
  with open(os.path.join(workdir, 'run_info.json')) as f:
    run_info = json.load(f)
  assert (run_info['process_count'], run_info['finished']) == (2, True)

  # The first attempt checkpointed on USR1; the second resumed from that step, not from 0.
  assert 'USR1 received' in output
  assert f'requeueing job {job_id}' in output
  resumed_at = int(re.search(r'resuming from \S+, step (\d+)', output).group(1))
  assert 0 < resumed_at < _TOTAL_STEPS
  steps = [r['step'] for r in _train_records(workdir)]
  assert steps[-1] == _TOTAL_STEPS and len(steps) == len(set(steps))

  step, params = restore_latest(workdir, tiny_config(num_train_steps=_TOTAL_STEPS))
  assert step == _TOTAL_STEPS
  assert set(params) >= {'conv1', 'fc8'}
