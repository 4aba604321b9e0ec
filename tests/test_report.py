"""alexnet_jax/report.py on metrics.jsonl files written here in the format train.py writes."""

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import stats

from alexnet_jax import metrics
from alexnet_jax import report
from alexnet_jax import verdicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_point(root, name, overrides, train_errs, eval_errs, start_time=1000.0, extra_lines=''):
  """A run logging every 10 steps: train records with `train_errs`, eval records (top-1, top-5)."""
  workdir = root / name
  workdir.mkdir()
  if overrides is not None:
    (workdir / 'sweep_point.json').write_text(json.dumps({'name': name, 'overrides': overrides}))
  lines = []
  for i, err in enumerate(train_errs):
    lines.append({'step': 10 * (i + 1), 'split': 'train', 'loss': 3 * err, 'top1_err': err,
                  'top5_err': err / 2, 'wall_time': start_time + 10 * (i + 1)})
  for i, (top1, top5) in enumerate(eval_errs):
    step = 10 * len(train_errs) * (i + 1) // len(eval_errs)
    lines.append({'step': step, 'split': 'eval', 'loss': 2.0, 'top1_err': top1, 'top5_err': top5,
                  'wall_time': start_time + step + 1})
  (workdir / 'metrics.jsonl').write_text(
      ''.join(json.dumps(line) + '\n' for line in lines) + extra_lines)


def test_report_table_and_plots(tmp_path):
  root = tmp_path / 'sweep'
  root.mkdir()
  _write_point(root, 'model.activation=tanh', {'model.activation': 'tanh'},
               [0.9, 0.7, 0.5, 0.3, 0.2], [(0.6, 0.2), (0.4, 0.1)])
  _write_point(root, 'baseline', {}, [0.8, 0.4, 0.2, 0.1, 0.05], [(0.5, 0.15), (0.3, 0.08)])
  # A resumed run logs step 20 twice (the later record wins) and was killed mid-line.
  _write_point(root, 'resumed_run', None, [0.9, 0.6], [(0.7, 0.3)],
               extra_lines=json.dumps({'step': 20, 'split': 'train', 'loss': 0.1, 'top1_err': 0.2,
                                       'top5_err': 0.1, 'wall_time': 1100.0}) + '\n{"step": 3')
  (root / 'not_started').mkdir()  # no metrics.jsonl: not a point yet

  result = subprocess.run([sys.executable, '-m', 'alexnet_jax.report', str(root),
                           '--target_train_err=0.25'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  table = (root / 'report.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| ') and '---' not in line][1:]
  assert len(rows) == 3
  # baseline first; columns: point, seeds, steps, eval top-1, Δ vs baseline, eval top-5, train
  # top-1, train-test gap, steps to 0.25, wall time. One seed each: values, no intervals.
  assert rows[0].split(' | ') == ['| baseline (no overrides)', '1', '50', '0.300', '—', '0.080',
                                  '0.050', '—', '30', '0:41 |']
  assert rows[1].split(' | ')[:9] == ['| `model.activation=tanh`', '1', '50', '0.400',
                                      '+0.100 vs baseline (no overrides)', '0.100', '0.200', '—',
                                      '50']
  assert rows[2].split(' | ')[:9] == ['| `resumed_run`', '1', '20', '0.700', '—', '0.300', '0.200',
                                      '—', '20']
  for name in ('train_curves.png', 'eval_curves.png'):
    with Image.open(root / name) as image:
      assert image.format == 'PNG' and image.size[0] > 500
    assert f']({name})' in table


def test_points_never_reaching_the_target_show_a_lower_bound(tmp_path):
  _write_point(tmp_path, 'baseline', {}, [0.9, 0.8], [(0.9, 0.5)])
  points = report.load_points(str(tmp_path))
  assert report.steps_to_train_err(points[0].runs[0], 0.25) is None
  assert '| ≥ 20 (1 of 1 never reached it) |' in report.markdown_table(points, 0.25)


def test_a_root_without_runs_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no subdirectory holds a metrics.jsonl'):
    report.load_points(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no such directory'):
    report.load_points(str(tmp_path / 'missing'))


def test_evaluate_records_are_shown_apart_from_the_training_run(tmp_path):
  # alexnet_jax.evaluate appended a 10-crop evaluation of the final checkpoint an hour later.
  evaluated = {'step': 50, 'split': 'eval', 'loss': 1.0, 'top1_err': 0.1, 'top5_err': 0.01,
               'checkpoint': 'latest', 'eval_crops': 10, 'wall_time': 5000.0}
  _write_point(tmp_path, 'baseline', {}, [0.8, 0.4, 0.2, 0.1, 0.05], [(0.5, 0.15), (0.3, 0.08)],
               extra_lines=json.dumps(evaluated) + '\n')
  point, = report.load_points(str(tmp_path))
  run, = point.runs
  assert [r['top1_err'] for r in run.eval] == [0.5, 0.3]
  assert run.checkpoint_evals == [evaluated]
  assert report.wall_seconds(run) == 41

  path = report.write_report(str(tmp_path), str(tmp_path), 0.25)
  table, evaluations = open(path).read().split('## Checkpoint evaluations')
  assert '| baseline (no overrides) | 1 | 50 | 0.300 | — | 0.080 | 0.050 | — | 30 | 0:41 |' in table
  assert '| baseline (no overrides) | — | latest | 50 | 10 | 0.100 | 0.010 |' in evaluations


def test_a_run_resumed_after_a_cut_short_record_loses_only_that_record(tmp_path, caplog):
  _write_point(tmp_path, 'baseline', {}, [0.9, 0.6], [], extra_lines='{"step": 30, "spl')
  writer = metrics.MetricsWriter(str(tmp_path / 'baseline'))  # the resumed run
  writer.write(30, 'train', loss=1.2, top1_err=0.4, top5_err=0.2)
  writer.close()
  with caplog.at_level(logging.WARNING):
    point, = report.load_points(str(tmp_path))
  assert [r['step'] for r in point.runs[0].train] == [10, 20, 30]
  assert f'{tmp_path / "baseline" / "metrics.jsonl"}:3 is not JSON' in caplog.text


# Seeds: hand-made runs whose numbers give intervals that are easy to check by hand. ----------------

T_975_4 = 2.776445  # Student's t, 97.5% quantile, 4 degrees of freedom (from a table)


def _write_run(directory, reach_step: int, eval_top1: float, gap: float | None = None):
  """A run of 100 steps logging every 10: training error 0.9 until `reach_step`, then 0.2; evals
  at steps 50 and 100, the last with top-1 error `eval_top1`; with `gap`, 'eval_train' records
  `gap` below the evals."""
  directory.mkdir(parents=True)
  lines = [{'step': s, 'split': 'train', 'loss': 1.0, 'top1_err': 0.9 if s < reach_step else 0.2,
            'top5_err': 0.1, 'wall_time': 1000.0 + s} for s in range(10, 101, 10)]
  for step, top1 in ((50, eval_top1 + 0.1), (100, eval_top1)):
    lines.append({'step': step, 'split': 'eval', 'loss': 1.0, 'top1_err': top1, 'top5_err': 0.05,
                  'wall_time': 1001.0 + step})
    if gap is not None:
      lines.append({'step': step, 'split': 'eval_train', 'loss': 0.5, 'top1_err': top1 - gap,
                    'top5_err': 0.0, 'wall_time': 1002.0 + step})
  (directory / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


SMALL = {'train_examples': 100, 'eval_train_examples': -1}
# point name -> (overrides, per seed: (steps to 25% training error, final eval top-1, gap or None))
STUDY = {
    'baseline': ({}, [(60, 0.30, None), (70, 0.32, None), (80, 0.34, None)]),
    'model.lrn=False': ({'model.lrn': False}, [(60, 0.40, None), (70, 0.42, None), (80, 0.44, None)]),
    'model.activation=tanh': ({'model.activation': 'tanh'},
                              [(10, 0.30, None), (20, 0.30, None), (30, 0.30, None)]),
    'train_examples=100,eval_train_examples=-1': (
        SMALL, [(20, 0.50, 0.10), (20, 0.50, 0.12), (20, 0.50, 0.14)]),
    'train_examples=100,eval_train_examples=-1,model.dropout_rate=0.0': (
        {**SMALL, 'model.dropout_rate': 0.0}, [(20, 0.50, 0.11), (20, 0.50, 0.15), (20, 0.50, 0.13)]),
}
CLAIMS = [
    {'claim': 'LRN helps', 'section': '§3.3', 'paper': '-1.4% top-1', 'measure': 'eval_top1_err',
     'baseline': 'baseline', 'point': 'model.lrn=False'},
    {'claim': 'ReLU trains faster', 'section': '§3.1', 'paper': '6x', 'measure': 'steps_to_train_err',
     'baseline': 'baseline', 'point': 'model.activation=tanh'},
    {'claim': 'dropout against overfitting', 'section': '§4.2', 'paper': 'substantial',
     'measure': 'train_test_gap', 'baseline': 'train_examples=100,eval_train_examples=-1',
     'point': 'train_examples=100,eval_train_examples=-1,model.dropout_rate=0.0'},
]


@pytest.fixture
def study_root(tmp_path):
  root = tmp_path / 'study'
  for name, (overrides, seeds) in STUDY.items():
    for seed, (reach, top1, gap) in enumerate(seeds):
      run = root / name / f'seed={seed}'
      _write_run(run, reach, top1, gap)
      (run / 'sweep_point.json').write_text(json.dumps(
          {'name': name, 'overrides': overrides, 'seed': seed}))
  (root / 'sweep.json').write_text(json.dumps({
      'seeds': 3, 'claims': CLAIMS,
      'points': [{'name': name, 'overrides': o} for name, (o, _) in STUDY.items()]}))
  return root


def test_means_stds_and_welch_intervals_equal_a_hand_computation(study_root):
  points = report.load_points(str(study_root))
  assert [p.name for p in points] == list(STUDY)  # the sweep's order
  baseline, lrn = points[0], points[1]
  assert [r.seed for r in lrn.runs] == [0, 1, 2]
  summary = verdicts.summarize(report.measure(lrn, 'eval_top1_err', 0.25).values)
  assert (summary.n, summary.mean, summary.std) == (3, pytest.approx(0.42), pytest.approx(0.02))
  # Equal spreads (0.02) and 3 seeds a side: se = sqrt(2 * 0.02^2 / 3), and Welch's df is 4.
  interval = verdicts.welch_interval(report.measure(lrn, 'eval_top1_err', 0.25).values,
                                     report.measure(baseline, 'eval_top1_err', 0.25).values)
  half = T_975_4 * math.sqrt(2 * 0.02**2 / 3)  # 0.04534
  assert interval.df == pytest.approx(4)
  assert (interval.difference, interval.low, interval.high) == (
      pytest.approx(0.10), pytest.approx(0.10 - half, abs=1e-6), pytest.approx(0.10 + half, abs=1e-6))

  table = report.markdown_table(points, 0.25)
  assert '| `model.lrn=False` | 3 | 100 | 0.420 ± 0.020 | +0.100 [+0.055, +0.145] vs baseline' in table
  # The small-data regime's points are compared with its own baseline, and it with the full one.
  assert ('| `train_examples=100`, `eval_train_examples=-1`, `model.dropout_rate=0.0` | 3 | 100 | '
          '0.500 ± 0.000 | +0.000 [+0.000, +0.000] vs `train_examples=100`, '
          '`eval_train_examples=-1` | 0.050 ± 0.000 | 0.200 ± 0.000 | 0.130 ± 0.020 | 20 ± 0 |'
          ) in table
  assert '| 70 ± 10 |' in table  # the baseline's steps to 25% training error


def test_verdicts_follow_from_the_intervals(study_root):
  path = report.write_report(str(study_root), str(study_root), 0.25)
  claims = open(path).read().split("## The paper's claims")[1]
  rows = {line.split(' | ')[0]: line for line in claims.splitlines() if line.startswith('| ')}
  # LRN: +0.10, the interval above 0.
  assert rows['| LRN helps (§3.3)'].endswith('| +0.100 [+0.055, +0.145] | **reproduced** |')
  # tanh reached 25% training error 50 steps sooner: the interval, ±22.7 (df 4), below 0.
  half = T_975_4 * math.sqrt(2 * 10.0**2 / 3)
  assert rows['| ReLU trains faster (§3.1)'].endswith(
      f'| -50 [{-50 - half:+.0f}, {-50 + half:+.0f}] | **opposite** |')
  # Without dropout the gap grew by 0.01 ± 0.045: the interval spans 0.
  assert '| +0.010 [-0.035, +0.055] | **inconclusive** |' in rows[
      '| dropout against overfitting (§4.2)']
  for name in ('train_curves.png', 'eval_curves.png', 'gap_curves.png'):
    assert os.path.isfile(study_root / name) and f']({name})' in open(path).read()


def test_curves_are_the_mean_and_std_over_seeds(study_root):
  point = report.load_points(str(study_root))[0]
  steps, mean, std = report.curve(point, lambda run: {r['step']: r['top1_err'] for r in run.eval})
  assert steps.tolist() == [50, 100]
  np.testing.assert_allclose(mean, [0.42, 0.32])
  np.testing.assert_allclose(std, [0.02, 0.02])


def test_unequal_spreads_use_welch_satterthwaite_degrees_of_freedom():
  point, baseline = [0.40, 0.41, 0.45], [0.30, 0.32, 0.34]
  # By hand: variances of the means 0.0007/3 and 0.0004/3; df = (0.0011/3)^2 /
  # ((0.0007/3)^2 / 2 + (0.0004/3)^2 / 2) = 1.21 / (0.49/2 + 0.16/2) = 3.7231.
  interval = verdicts.welch_interval(point, baseline)
  assert interval.df == pytest.approx(1.21 / 0.325, rel=1e-9)
  se = math.sqrt(0.0011 / 3)
  assert interval.high - interval.difference == pytest.approx(
      stats.t.ppf(0.975, 1.21 / 0.325) * se)
  assert 2.776445 < stats.t.ppf(0.975, 1.21 / 0.325) < 3.182446  # between the table's df 4 and 3


def test_a_verdict_a_lower_bound_could_overturn_is_inconclusive():
  above = verdicts.Interval(10.0, 2.0, 18.0, 4.0)
  below = verdicts.Interval(-10.0, -18.0, -2.0, 4.0)
  assert verdicts.verdict(above) == verdicts.REPRODUCED
  assert verdicts.verdict(below) == verdicts.OPPOSITE
  # The point's values are lower bounds: its true values can only be higher.
  assert verdicts.verdict(above, point_is_lower_bound=True) == verdicts.REPRODUCED
  assert verdicts.verdict(below, point_is_lower_bound=True) == verdicts.INCONCLUSIVE
  # The baseline's are: the true difference can only be smaller.
  assert verdicts.verdict(above, baseline_is_lower_bound=True) == verdicts.INCONCLUSIVE
  assert verdicts.verdict(below, baseline_is_lower_bound=True) == verdicts.OPPOSITE
  one_seed = verdicts.welch_interval([0.5], [0.3, 0.4])
  assert one_seed.difference == pytest.approx(0.15) and math.isnan(one_seed.low)
  assert verdicts.verdict(one_seed) == verdicts.INCONCLUSIVE


def test_points_are_grouped_by_regime(study_root):
  points = report.load_points(str(study_root))
  groups = report.regimes(points)
  assert [[p.name for p in group] for group in groups] == [list(STUDY)[:3], list(STUDY)[3:]]
  # The plots' legends name a point by what it changes in its regime.
  assert [[report._legend_label(p, report._regime_head(group, points)) for p in group]
          for group in groups] == [['baseline', 'model.lrn=False', 'model.activation=tanh'],
                                   ['baseline', 'model.dropout_rate=0.0']]


def test_runs_that_never_reach_the_target_count_as_lower_bounds_in_a_verdict(tmp_path):
  claim = {'claim': 'ReLU trains faster', 'measure': 'steps_to_train_err', 'baseline': 'baseline',
           'point': 'model.activation=tanh'}
  points = []
  for name, overrides, reach in (('baseline', {}, (20, 30, 40)),
                                 ('model.activation=tanh', {'model.activation': 'tanh'},
                                  (80, 90, 1000))):  # the last never gets there: 100, a bound
    runs = []
    for seed, step in enumerate(reach):
      _write_run(tmp_path / name / f'seed={seed}', step, 0.3)
      runs.append(report._load_run(  # pylint: disable=protected-access
          str(tmp_path / name / f'seed={seed}' / 'metrics.jsonl'), seed))
    points.append(report.Point(name, overrides, runs))
  judged = report.judge(claim, points, 0.25)
  assert judged.point.values == (80, 90, 100) and judged.point.unreached == 1
  assert judged.verdict == verdicts.REPRODUCED  # a bound on the slower side cannot overturn it
  swapped = report.judge({**claim, 'baseline': claim['point'], 'point': claim['baseline']},
                         points, 0.25)
  # Now the bounds are the baseline's: its true values are higher still, the interval lower.
  assert swapped.baseline.unreached == 1 and swapped.interval.high < 0
  assert swapped.verdict == verdicts.OPPOSITE
