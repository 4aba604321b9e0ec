"""launch/sweep.py: points, their workdirs, skipping finished points and resuming the others, both on
this machine and as a SLURM job array."""

import functools
import json
import os
import re
import subprocess
import sys
import time

import pytest

from alexnet_jax import config_validation
from alexnet_jax import defaults
from launch import sweep
from test_distributed import REPO, TINY_RUN, env_with_cpu_devices
from test_slurm import slurm_cluster  # pylint: disable=unused-import  (a fixture)


def test_each_ablation_point_is_a_valid_config_that_turns_off_one_of_the_papers_choices():
  # Each point applied, as launch.sweep applies it, to the paper's recipe: a key the config lacks,
  # a value the config check refuses, or an override equal to the recipe's own value would each
  # make that point of the ablation say nothing.
  points = sweep.load_sweep(os.path.join(REPO, 'configs/sweeps/ablations.py'))
  assert points[0] == {} and len(points) == 7
  paper = defaults.get_config()
  for point in points[1:]:
    config = paper.copy_and_resolve_references()
    config.update_from_flattened_dict(point)  # a KeyError for a key the config lacks
    config_validation.validate(config)
    unchanged = [key for key, value in point.items()
                 if functools.reduce(getattr, key.split('.'), paper) == value]
    assert not unchanged, f'{point}: {unchanged} already the recipe\'s value'


def test_bad_sweep_files_are_clear_errors(tmp_path):
  no_function = tmp_path / 'no_function.py'
  no_function.write_text('POINTS = [{}]\n')
  with pytest.raises(ValueError, match='must define get_sweep'):
    sweep.load_sweep(str(no_function))
  repeated = tmp_path / 'repeated.py'
  repeated.write_text('def get_sweep():\n  return [{"model.lrn": False}, {"model.lrn": False}]\n')
  with pytest.raises(ValueError, match='repeated'):
    sweep.load_sweep(str(repeated))
  with pytest.raises(FileNotFoundError, match='no such file'):
    sweep.load_sweep(str(tmp_path / 'missing.py'))


def _sweep(root, sweep_file, launcher: str) -> subprocess.CompletedProcess:
  shared = [f'--config.{key}={value}' for key, value in {**TINY_RUN, 'num_train_steps': 2}.items()]
  env = env_with_cpu_devices(1)
  env['PYTHON'] = sys.executable  # the interpreter SLURM jobs run
  result = subprocess.run(
      [sys.executable, '-m', 'launch.sweep', '--config=configs/smoke.py', f'--sweep={sweep_file}',
       f'--workdir={root}', f'--launcher={launcher}', '--', *shared],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def _finished(workdir) -> bool:
  with open(workdir / 'run_info.json') as f:
    return json.load(f)['finished']


@pytest.mark.slow
def test_sweep_runs_points_skips_finished_and_resumes_unfinished(slurm_cluster, tmp_path):
  sweep_file = tmp_path / 'two_points.py'
  sweep_file.write_text('def get_sweep():\n  return [{}, {"model.activation": "tanh"}]\n')
  root = tmp_path / 'sweep'
  baseline, tanh = root / 'baseline', root / 'model.activation=tanh'

  output = _sweep(root, sweep_file, 'local').stdout
  assert 'baseline: training' in output and 'model.activation=tanh: training' in output
  assert _finished(baseline) and _finished(tanh)
  with open(tanh / 'config.json') as f:
    assert json.load(f)['model']['activation'] == 'tanh'
  with open(tanh / 'sweep_point.json') as f:
    assert json.load(f)['overrides'] == {'model.activation': 'tanh'}

  # A point stopped after its last checkpoint, before its run_info said finished: the SLURM array
  # holds only it, and it finds its last step saved and records that it finished.
  with open(baseline / 'run_info.json') as f:
    run_info = json.load(f)
  (baseline / 'run_info.json').write_text(json.dumps({**run_info, 'finished': False}))
  output = _sweep(root, sweep_file, 'slurm').stdout
  assert 'model.activation=tanh: finished, skipped' in output
  job_id = re.search(r'submitted job array (\d+): 1 of 2 points \(tasks 0\)', output).group(1)
  # Rerun while that task is queued or running (it trains for seconds): not submitted twice.
  output = _sweep(root, sweep_file, 'slurm').stdout
  assert f'baseline: still queued or running as job {job_id}_0, skipped' in output, output
  assert 'submitted' not in output
  deadline = time.monotonic() + 600
  while subprocess.run(['squeue', '--noheader', f'--jobs={job_id}'], capture_output=True,
                       text=True).stdout.strip():
    assert time.monotonic() < deadline, f'job array {job_id} still running after 600 s'
    time.sleep(1)
  job_log = (root / 'logs' / f'{job_id}_0.log').read_text()
  assert f'{baseline} finished already: its latest checkpoint is of step 2' in job_log, job_log[-3000:]
  assert _finished(baseline)

  output = _sweep(root, sweep_file, 'local').stdout
  assert output.count('finished, skipped') == 2 and 'training' not in output
  assert 'all 2 points finished' in output
