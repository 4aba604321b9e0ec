"""launch/slurm/train.sbatch on a real one-node SLURM cluster (127.0.0.1), submitted with sbatch.

The cluster comes from .ci/setup_slurm.sh: `slurm_cluster` runs it when no cluster is up and it can
(as root, with slurm-wlm and munge installed), and otherwise skips these tests saying why. Under
CI (CI=true, where .ci/run starts the cluster first) a missing cluster fails them instead: there
they are required.
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

_SETUP_HINT = 'start it with `sudo bash .ci/setup_slurm.sh` (it installs slurm-wlm and munge)'
_TOTAL_STEPS = 60
_DAEMONS = ('slurmctld', 'slurmd', 'munged', 'sbatch')


def _node_state() -> tuple[bool, str]:
  """(whether a node takes jobs, what sinfo said). A node still completing an earlier job
  ('comp') gets a minute to become usable."""
  deadline = time.monotonic() + 60
  while True:
    try:
      state = subprocess.run(['sinfo', '--noheader', '--format=%t'], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
      return False, str(e)
    said = f'{state.stdout.strip()} {state.stderr.strip()}'.strip()
    if state.returncode == 0 and re.search(r'idle|mix|alloc', state.stdout):
      return True, said
    if state.returncode != 0 or 'comp' not in state.stdout or time.monotonic() > deadline:
      return False, said
    time.sleep(1)


@pytest.fixture(scope='module')
def slurm_cluster():
  up, said = _node_state() if shutil.which('sinfo') else (False, 'sinfo not found')
  if up:
    return
  missing = [name for name in _DAEMONS if shutil.which(name) is None]
  if os.geteuid() == 0 and not missing:
    setup = subprocess.run(['bash', '.ci/setup_slurm.sh'], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    up, said = _node_state()
    if up:
      return
    problem = (f'no SLURM node is up, and .ci/setup_slurm.sh could not start one (exit '
               f'{setup.returncode}): {(setup.stdout + setup.stderr)[-1500:]}')
  elif missing:
    problem = f'no SLURM cluster here ({", ".join(missing)} not installed): {_SETUP_HINT}'
  else:
    problem = f'no SLURM node is up ({said}) and only root can start one: {_SETUP_HINT}'
  if os.environ.get('CI') == 'true':
    pytest.fail(problem)
  pytest.skip(problem)


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


def test_without_a_cluster_these_tests_skip_saying_why_except_under_ci(tmp_path):
  # No SLURM command on the PATH: a fresh machine. The README's test command passes there (the
  # tests skip, naming the fix); under CI the same is a failure.
  selected = (f'{os.path.abspath(__file__)}::'
              'test_two_task_job_trains_is_requeued_near_its_time_limit_and_resumes')
  for ci, exit_code, outcome in (('', 0, '1 skipped'), ('true', 1, '1 error')):
    env = dict(os.environ, PATH=str(tmp_path), CI=ci)
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
                             selected], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == exit_code and outcome in result.stdout, result.stdout[-3000:]
    assert 'not installed): start it with `sudo bash .ci/setup_slurm.sh`' in result.stdout
