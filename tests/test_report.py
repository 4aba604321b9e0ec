"""alexnet_jax/report.py on metrics.jsonl files written here in the format train.py writes."""

import json
import logging
import os
import subprocess
import sys

from PIL import Image
import pytest

from alexnet_jax import metrics
from alexnet_jax import report

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
  # baseline first; columns: point, steps, eval top-1, eval top-5, train top-1, steps to 0.25, wall.
  assert rows[0].split(' | ') == ['| baseline (no overrides)', '50', '0.300', '0.080', '0.050',
                                  '30', '0:41 |']
  assert rows[1].split(' | ')[:6] == ['| `model.activation=tanh`', '50', '0.400', '0.100', '0.200',
                                      '50']
  assert rows[2].split(' | ')[:6] == ['| `resumed_run`', '20', '0.700', '0.300', '0.200', '20']
  for name in ('train_curves.png', 'eval_curves.png'):
    with Image.open(root / name) as image:
      assert image.format == 'PNG' and image.size[0] > 500
    assert f']({name})' in table


def test_points_never_reaching_the_target_show_a_dash(tmp_path):
  _write_point(tmp_path, 'baseline', {}, [0.9, 0.8], [(0.9, 0.5)])
  points = report.load_points(str(tmp_path))
  assert report.steps_to_train_err(points[0], 0.25) is None
  assert '| — |' in report.markdown_table(points, 0.25)


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
  assert [r['top1_err'] for r in point.eval] == [0.5, 0.3]
  assert point.checkpoint_evals == [evaluated]
  assert report.wall_seconds(point) == 41

  path = report.write_report(str(tmp_path), str(tmp_path), 0.25)
  table, evaluations = open(path).read().split('## Checkpoint evaluations')
  assert '| baseline (no overrides) | 50 | 0.300 | 0.080 | 0.050 | 30 | 0:41 |' in table
  assert '| baseline (no overrides) | latest | 50 | 10 | 0.100 | 0.010 |' in evaluations


def test_a_run_resumed_after_a_cut_short_record_loses_only_that_record(tmp_path, caplog):
  _write_point(tmp_path, 'baseline', {}, [0.9, 0.6], [], extra_lines='{"step": 30, "spl')
  writer = metrics.MetricsWriter(str(tmp_path / 'baseline'))  # the resumed run
  writer.write(30, 'train', loss=1.2, top1_err=0.4, top5_err=0.2)
  writer.close()
  with caplog.at_level(logging.WARNING):
    point, = report.load_points(str(tmp_path))
  assert [r['step'] for r in point.train] == [10, 20, 30]
  assert f'{tmp_path / "baseline" / "metrics.jsonl"}:3 is not JSON' in caplog.text
