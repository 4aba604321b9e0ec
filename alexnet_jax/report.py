r"""Tabulates and plots the runs under a sweep root: `python -m alexnet_jax.report ROOT`.

Every subdirectory of ROOT with a metrics.jsonl is a point (launch/sweep.py makes them; any run
directories work). Writes into ROOT (or --output_dir):

- report.md: one row per point: its config overrides (from sweep_point.json, written by
  launch/sweep.py), the final eval top-1/top-5 error, the final training top-1 error, the first step
  whose training top-1 error is at most --target_train_err (the paper's Figure 1 measure), and the
  wall time from its first to its last metrics record;
- train_curves.png (training loss and top-1 error) and eval_curves.png (eval top-1 and top-5
  error) against the step, one line per point.
"""

import dataclasses
import json
import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

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
  train: list[dict]  # metrics records, by step; a step logged twice (resumed run) keeps its last
  eval: list[dict]


def _records_by_split(path: str) -> dict[str, list[dict]]:
  by_step = {'train': {}, 'eval': {}}
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        # The last line of a run killed mid-write may be cut short; anything else is an error.
        if line.endswith('\n'):
          raise ValueError(f'{path}:{line_number} is not JSON: {line[:80]!r}') from None
        continue
      by_step.setdefault(record['split'], {})[record['step']] = record
  return {split: [records[s] for s in sorted(records)] for split, records in by_step.items()}


def load_points(root: str) -> list[Point]:
  """The points under `root`: `baseline` first, then by name."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{root}: no such directory (pass the --workdir of launch.sweep)')
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
    records = _records_by_split(metrics_path)
    points.append(Point(name, overrides, records['train'], records['eval']))
  if not points:
    raise FileNotFoundError(f'{root}: no subdirectory holds a metrics.jsonl; is this the --workdir '
                            'of a sweep whose points have started?')
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
            'Errors are the last logged values: eval over the whole eval split, train averaged over '
            'the last logging interval. Wall time runs from the first to the last metrics record.\n\n'
            '![training curves](train_curves.png)\n\n![eval curves](eval_curves.png)\n')
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
  app.run(main)
