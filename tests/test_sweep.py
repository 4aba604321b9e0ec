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
  path = os.path.join(REPO, 'configs/sweeps/ablations.py')
  points = sweep.load_sweep(path)
  assert points[0] == {} and len(points) == 8
  paper = defaults.get_config()
  for point in points[1:]:
    config = paper.copy_and_resolve_references()
    config.update_from_flattened_dict(point)  # a KeyError for a key the config lacks
    config_validation.validate(config)
    unchanged = [key for key, value in point.items()
                 if functools.reduce(getattr, key.split('.'), paper) == value]
    assert not unchanged, f'{point}: {unchanged} already the recipe\'s value'
  claims = sweep.load_claims(path, points)  # each names a point of the sweep
  assert {sweep.point_name(c['point']) for c in claims} == {sweep.point_name(p) for p in points[1:]}
  assert [c['measure'] for c in claims if c['point'] == {'model.activation': 'tanh'}] == [
      'steps_to_train_err']


def test_the_study_judges_each_claim_in_its_regime():
  path = os.path.join(REPO, 'configs/sweeps/study.py')
  points = sweep.load_sweep(path)
  claims = sweep.load_claims(path, points)
  small = [p for p in points if 'train_examples' in p]
  assert len(points) == 9 and len(small) == 3 and all(
      p['eval_train_examples'] == -1 for p in small)
  by_regime = {}
  for claim in claims:
    by_regime.setdefault(claim['regime'], []).append((claim['point'], claim['measure']))
    assert claim['baseline'] == ({} if claim['regime'] == 'full data' else small[0])
  assert {m for _, m in by_regime['small data']} == {'eval_top1_err', 'train_test_gap'}
  assert len(by_regime['full data']) == 5 and len(by_regime['small data']) == 4


def test_each_departure_point_undoes_a_choice_of_the_fashion_mnist_config():
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  points = sweep.load_sweep(os.path.join(REPO, 'configs/sweeps/fashion_mnist_departures.py'))
  adapted = fashion_mnist.get_config('upsampled')  # the adaptation the sweep measured
  assert points[0] == {}
  for point in points[1:]:
    config = adapted.copy_and_resolve_references()
    config.update_from_flattened_dict(point)
    config_validation.validate(config)
    assert all(functools.reduce(getattr, key.split('.'), adapted) != value
               for key, value in point.items()), point


def test_the_fashion_mnist_config_has_two_adaptations_and_names_them_on_a_typo():
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  small_images, upsampled = fashion_mnist.get_config(), fashion_mnist.get_config('upsampled')
  for config in (small_images, upsampled):
    config_validation.validate(config)
  layout = lambda c: (c.image_size, c.model.conv1_kernel, c.model.conv1_stride, c.eval_crops)
  assert layout(small_images) == (28, 5, 1, 10) and layout(upsampled) == (67, 0, 0, 1)
  with pytest.raises(ValueError, match='configs/fashion_mnist.py:upsampled'):
    fashion_mnist.get_config('upsampeld')


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


def test_seeds_give_each_point_a_run_per_seed_seed_by_seed():
  runs = sweep.sweep_runs([{}, {'model.lrn': False}], seeds=2)
  assert [r.name for r in runs] == ['baseline/seed=0', 'model.lrn=False/seed=0',
                                    'baseline/seed=1', 'model.lrn=False/seed=1']
  assert runs[3].overrides == {'model.lrn': False, 'seed': 1}
  assert [r.name for r in sweep.sweep_runs([{}], seeds=None)] == ['baseline']
  assert sweep.sweep_runs([{}], seeds=None)[0].overrides == {}


def test_claims_name_points_of_the_sweep_and_a_known_measure(tmp_path):
  sweep_file = tmp_path / 'claims.py'
  body = ('def get_sweep():\n  return [{}, {"model.lrn": False}]\n'
          'def get_claims():\n  return [{"claim": "LRN", "point": %s, "measure": %r}]\n')
  sweep_file.write_text(body % ('{"model.lrn": False}', 'eval_top1_err'))
  points = sweep.load_sweep(str(sweep_file))
  assert sweep.load_claims(str(sweep_file), points) == [
      {'claim': 'LRN', 'point': {'model.lrn': False}, 'baseline': {}, 'measure': 'eval_top1_err'}]
  sweep_file.write_text(body % ('{"model.lrn": True}', 'eval_top1_err'))
  with pytest.raises(ValueError, match="names a point {'model.lrn': True} that is not a point"):
    sweep.load_claims(str(sweep_file), points)
  sweep_file.write_text(body % ('{"model.lrn": False}', 'accuracy'))
  with pytest.raises(ValueError, match="measure 'accuracy'; use one of eval_top1_err"):
    sweep.load_claims(str(sweep_file), points)


def _sweep(root, sweep_file, launcher: str, *flags: str) -> subprocess.CompletedProcess:
  shared = [f'--config.{key}={value}' for key, value in {**TINY_RUN, 'num_train_steps': 2}.items()]
  env = env_with_cpu_devices(1)
  env['PYTHON'] = sys.executable  # the interpreter SLURM jobs run
  result = subprocess.run(
      [sys.executable, '-m', 'launch.sweep', '--config=configs/smoke.py', f'--sweep={sweep_file}',
       f'--workdir={root}', f'--launcher={launcher}', *flags, '--', *shared],
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
  job_id = re.search(r'submitted job array (\d+): 1 of 2 runs \(tasks 0\)', output).group(1)
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
  assert 'all 2 runs finished' in output


def _seed_of(workdir) -> int:
  with open(workdir / 'config.json') as f:
    return json.load(f)['seed']


@pytest.mark.slow
def test_seeds_train_locally_and_as_a_slurm_array_and_more_seeds_add_runs(slurm_cluster, tmp_path):
  sweep_file = tmp_path / 'one_point.py'
  sweep_file.write_text('def get_sweep():\n  return [{}]\n')
  root = tmp_path / 'sweep'
  output = _sweep(root, sweep_file, 'local', '--seeds=2').stdout
  assert 'baseline/seed=0: training' in output and 'baseline/seed=1: training' in output
  assert [_seed_of(root / 'baseline' / f'seed={s}') for s in (0, 1)] == [0, 1]
  with open(root / 'sweep.json') as f:
    assert json.load(f)['seeds'] == 2

  # A third seed: the two finished are skipped, the new one is a task of a SLURM array.
  output = _sweep(root, sweep_file, 'slurm', '--seeds=3').stdout
  assert output.count('finished, skipped') == 2
  job_id = re.search(r'submitted job array (\d+): 1 of 3 runs \(tasks 2\)', output).group(1)
  deadline = time.monotonic() + 600
  while subprocess.run(['squeue', '--noheader', f'--jobs={job_id}'], capture_output=True,
                       text=True).stdout.strip():
    assert time.monotonic() < deadline, f'job array {job_id} still running after 600 s'
    time.sleep(1)
  assert _finished(root / 'baseline' / 'seed=2') and _seed_of(root / 'baseline' / 'seed=2') == 2
  result = subprocess.run([sys.executable, '-m', 'alexnet_jax.report', str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| baseline (no overrides) | 3 | 2 |' in (root / 'report.md').read_text()
