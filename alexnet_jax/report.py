r"""Tabulates and plots the runs under a sweep root: `python -m alexnet_jax.report ROOT`.

Every subdirectory of ROOT with a metrics.jsonl is a point (launch/sweep.py makes them; any run
directories work). Writes into ROOT (or --output_dir):

- report.md: one row per point: its config overrides (from sweep_point.json, written by
  launch/sweep.py), the final eval top-1/top-5 error, the final training top-1 error, the first step
  whose training top-1 error is at most --target_train_err (the paper's Figure 1 measure), and the
  wall time from its first to its last training-run metrics record; then, if any, the records
  `alexnet_jax.evaluate` appended (they carry a "checkpoint" key), in a table of their own;
- train_curves.png (training loss and top-1 error) and eval_curves.png (eval top-1 and top-5
  error) against the step, one line per point.
"""

import dataclasses
import json
import os

from absl import app
from absl import flags
from absl import logging
import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from alexnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_TARGET_TRAIN_ERR = flags.DEFINE_float(
    'target_train_err', 0.25, 'Report the first step whose training top-1 error is at most this '
    '(0.25: the threshold of the paper\'s Figure 1).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where report.md and the plots go; '
                                  'default: ROOT.')

SWEEP_POINT_FILE = 'sweep_point.json'  # written by launch/sweep.py


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict | None  # None: not made by launch/sweep.py
  # The training run's metrics records, by step; a step logged twice (resumed run) keeps its last.
  train: list[dict]
  eval: list[dict]
  # What `alexnet_jax.evaluate` appended (records with a "checkpoint" key), in file order. Kept
  # apart: a 10-crop evaluation at step s is not training's eval at s, and it ran later.
  checkpoint_evals: list[dict]


def _read_records(path: str) -> list[dict]:
  """The JSON records of a metrics.jsonl, skipping lines that are not JSON."""
  records = []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except ValueError:
        # A run killed mid-write leaves a cut-short line; a resumed run then writes after it, so it
        # need not be the last. The last line of a live run may also be read half-written: quiet.
        if line.endswith('\n'):
          logging.warning('%s:%d is not JSON (a record cut short when its run was killed?); '
                          'skipped: %r', path, line_number, line[:80])
  return records


def _load_point(name: str, metrics_path: str, overrides: dict | None) -> Point:
  by_step = {'train': {}, 'eval': {}}
  checkpoint_evals = []
  for record in _read_records(metrics_path):
    if 'checkpoint' in record:
      checkpoint_evals.append(record)
    else:
      by_step.setdefault(record['split'], {})[record['step']] = record
  by_split = {split: [records[s] for s in sorted(records)] for split, records in by_step.items()}
  return Point(name, overrides, by_split['train'], by_split['eval'], checkpoint_evals)


def load_points(root: str) -> list[Point]:
  """The points under `root`: `baseline` first, then by name."""
  if not os.path.isdir(root):
    raise errors.NotFoundError(f'{root}: no such directory (pass the --workdir of launch.sweep)')
  points = []
  for name in sorted(os.listdir(root), key=lambda n: (n != 'baseline', n)):
    metrics_path = os.path.join(root, name, 'metrics.jsonl')
    if not os.path.isfile(metrics_path):
      continue
    overrides = None
    point_file = os.path.join(root, name, SWEEP_POINT_FILE)
    if os.path.isfile(point_file):
      with open(point_file) as f:
        overrides = json.load(f)['overrides']
    points.append(_load_point(name, metrics_path, overrides))
  if not points:
    raise errors.NotFoundError(f'{root}: no subdirectory holds a metrics.jsonl; is this the '
                               '--workdir of a sweep whose points have started?')
  return points


def steps_to_train_err(point: Point, target: float) -> int | None:
  return next((r['step'] for r in point.train if r['top1_err'] <= target), None)


def wall_seconds(point: Point) -> float:
  times = [r['wall_time'] for r in point.train + point.eval]
  return max(times) - min(times) if times else 0.0


def _describe(point: Point) -> str:
  if point.overrides is None:
    return f'`{point.name}`'
  if not point.overrides:
    return 'baseline (no overrides)'
  return ', '.join(f'`{key}={value}`' for key, value in point.overrides.items())


def _fmt(value: float | None, spec: str = '.3f') -> str:
  return '—' if value is None else format(value, spec)


def markdown_table(points: list[Point], target: float) -> str:
  lines = [
      f'| point | steps | eval top-1 err | eval top-5 err | train top-1 err | steps to train '
      f'top-1 err ≤ {target:g} | wall time |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for point in points:
    final_eval = point.eval[-1] if point.eval else {}
    final_train = point.train[-1] if point.train else {}
    last_step = max([r['step'] for r in point.train + point.eval], default=0)
    minutes, seconds = divmod(int(wall_seconds(point)), 60)
    lines.append(
        f'| {_describe(point)} | {last_step} | {_fmt(final_eval.get("top1_err"))} | '
        f'{_fmt(final_eval.get("top5_err"))} | {_fmt(final_train.get("top1_err"))} | '
        f'{_fmt(steps_to_train_err(point, target), "d")} | {minutes}:{seconds:02d} |')
  return '\n'.join(lines) + '\n'


def checkpoint_evals_table(points: list[Point]) -> str:
  """One row per record `alexnet_jax.evaluate` appended, in file order; '' when there are none."""
  lines = ['| point | checkpoint | step | crops | eval top-1 err | eval top-5 err |',
           '|---|---|---:|---:|---:|---:|']
  for point in points:
    for record in point.checkpoint_evals:
      lines.append(f'| {_describe(point)} | {record["checkpoint"]} | {record["step"]} | '
                   f'{record.get("eval_crops", "—")} | {_fmt(record.get("top1_err"))} | '
                   f'{_fmt(record.get("top5_err"))} |')
  return '\n'.join(lines) + '\n' if len(lines) > 2 else ''


def plot_curves(points: list[Point], split: str, keys: tuple[str, ...], path: str) -> None:
  figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
  for axis, key in zip(axes[0], keys):
    for point in points:
      records = [r for r in getattr(point, split) if key in r]
      axis.plot([r['step'] for r in records], [r[key] for r in records], label=point.name,
                marker='.' if split == 'eval' else None)
    axis.set_xlabel('step')
    axis.set_ylabel(f'{split} {key}')
    axis.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_report(root: str, output_dir: str, target_train_err: float) -> str:
  """Writes report.md and the two plots into `output_dir`; returns the report's path."""
  points = load_points(root)
  os.makedirs(output_dir, exist_ok=True)
  plot_curves(points, 'train', ('loss', 'top1_err'), os.path.join(output_dir, 'train_curves.png'))
  plot_curves(points, 'eval', ('top1_err', 'top5_err'), os.path.join(output_dir, 'eval_curves.png'))
  report = (f'# Sweep report: {os.path.abspath(root)}\n\n'
            f'{markdown_table(points, target_train_err)}\n'
            'Errors are the last values the training runs logged: eval over the whole eval split, '
            'train averaged over the last logging interval. Wall time runs from the first to the '
            'last of those records.\n\n'
            '![training curves](train_curves.png)\n\n![eval curves](eval_curves.png)\n')
  evaluations = checkpoint_evals_table(points)
  if evaluations:
    report += ('\n## Checkpoint evaluations (`alexnet_jax.evaluate`)\n\n'
               'Run after training, on a saved checkpoint; not part of the curves or the table '
               f'above.\n\n{evaluations}')
  path = os.path.join(output_dir, 'report.md')
  with open(path, 'w') as f:
    f.write(report)
  return path


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError('usage: python -m alexnet_jax.report ROOT [--target_train_err=0.25]')
  root = argv[1]
  path = write_report(root, _OUTPUT_DIR.value or root, _TARGET_TRAIN_ERR.value)
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
