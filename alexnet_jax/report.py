r"""Tabulates and plots the runs under a sweep root, over their seeds: `python -m alexnet_jax.report ROOT`.

Every subdirectory of ROOT with a metrics.jsonl is a point with one run; one whose seed=<s>/
subdirectories hold them (`launch.sweep --seeds=N`) is a point with a run per seed (any run
directories work). Writes into ROOT (or --output_dir):

- report.md:
  * one row per point: its config overrides (sweep_point.json, written by launch/sweep.py), its
    seeds, and per measure the mean ± sample std over the seeds: the final eval top-1 error and its
    difference from the point's baseline with a 95% Welch interval (alexnet_jax/verdicts.py), the
    final eval top-5 error, the final training top-1 error (as logged: augmented images, dropout
    on), the train-test gap (final eval top-1 error minus the error on training examples without
    augmentation or dropout, the 'eval_train' records of `config.eval_train_examples`), the first
    step whose training top-1 error is at most --target_train_err (the paper's Figure 1 measure),
    and the wall time from a run's first to its last metrics record;
  * with ROOT/sweep.json's claims (launch/sweep.py writes it from the sweep file's get_claims()),
    one row per claim: the paper's number, the measure, the baseline and the point without the
    paper's choice, their difference with its 95% Welch interval, and the verdict;
  * the records `alexnet_jax.evaluate` appended (they carry a "checkpoint" key), in a table of
    their own;
- train_curves.png (training loss and top-1 error), eval_curves.png (eval top-1 and top-5 error)
  and, with 'eval_train' records, gap_curves.png (the train-test gap), against the step: one line
  per point, the mean over its seeds, in a band of ± one std.

A point's baseline is the point whose overrides are the largest part of its own (the first in sweep
order among equals): `{}` for the ablations of the full recipe, `{'train_examples': N}` for those of
the small-data regime, `{}` again for that regime's own baseline.
"""

import dataclasses
import json
import math
import os
import textwrap

from absl import app
from absl import flags
from absl import logging
import matplotlib
import numpy as np

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from alexnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax import verdicts  # pylint: disable=g-import-not-at-top,wrong-import-position

_TARGET_TRAIN_ERR = flags.DEFINE_float(
    'target_train_err', 0.25, 'Report the first step whose training top-1 error is at most this '
    '(0.25: the threshold of the paper\'s Figure 1).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where report.md and the plots go; '
                                  'default: ROOT.')

SWEEP_POINT_FILE = 'sweep_point.json'  # written by launch/sweep.py in each run's directory
SWEEP_FILE = 'sweep.json'  # written by launch/sweep.py in ROOT: points, seeds, claims
SEED_PREFIX = 'seed='  # launch/sweep.py's run directories of a point: ROOT/<point>/seed=<s>
_FINAL_VALUES = {'eval_top1_err': ('eval', 'top1_err'), 'eval_top5_err': ('eval', 'top5_err'),
                 'train_top1_err': ('train', 'top1_err')}  # measure -> (split, key) of a record
MEASURE_NAMES = {
    'eval_top1_err': 'test top-1 error',
    'train_test_gap': 'train-test gap (top-1)',
    'steps_to_train_err': 'steps to the target training error',
}


@dataclasses.dataclass
class Run:
  """One run's metrics records, by split and step; a step logged twice (resumed run) keeps its last."""
  seed: int | None
  train: list[dict]
  eval: list[dict]
  # 'eval_train': the error on training examples without augmentation (config.eval_train_examples).
  eval_train: list[dict]
  # What `alexnet_jax.evaluate` appended (records with a "checkpoint" key), in file order. Kept
  # apart: a 10-crop evaluation at step s is not training's eval at s, and it ran later.
  checkpoint_evals: list[dict]


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict | None  # None: not made by launch/sweep.py
  runs: list[Run]


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


def _load_run(metrics_path: str, seed: int | None) -> Run:
  by_step = {'train': {}, 'eval': {}, 'eval_train': {}}
  checkpoint_evals = []
  for record in _read_records(metrics_path):
    if 'checkpoint' in record:
      checkpoint_evals.append(record)
    else:
      by_step.setdefault(record['split'], {})[record['step']] = record
  by_split = {split: [records[s] for s in sorted(records)] for split, records in by_step.items()}
  return Run(seed, by_split['train'], by_split['eval'], by_split['eval_train'], checkpoint_evals)


def _overrides(directory: str) -> dict | None:
  path = os.path.join(directory, SWEEP_POINT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)['overrides']


def _load_point(root: str, name: str) -> Point | None:
  """The point in ROOT/name: one run there, or one per seed=<s>/ below it; None if none started."""
  directory = os.path.join(root, name)
  if os.path.isfile(os.path.join(directory, 'metrics.jsonl')):
    return Point(name, _overrides(directory),
                 [_load_run(os.path.join(directory, 'metrics.jsonl'), None)])
  seeds = sorted(int(entry[len(SEED_PREFIX):]) for entry in os.listdir(directory)
                 if entry.startswith(SEED_PREFIX) and entry[len(SEED_PREFIX):].isdigit()
                 and os.path.isfile(os.path.join(directory, entry, 'metrics.jsonl')))
  if not seeds:
    return None
  runs = [_load_run(os.path.join(directory, f'{SEED_PREFIX}{s}', 'metrics.jsonl'), s)
          for s in seeds]
  return Point(name, _overrides(os.path.join(directory, f'{SEED_PREFIX}{seeds[0]}')), runs)


def read_sweep_file(root: str) -> dict:
  """ROOT/sweep.json ({'points': [...], 'claims': [...], 'seeds': N}), or {} without one."""
  try:
    with open(os.path.join(root, SWEEP_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def load_points(root: str) -> list[Point]:
  """The points under `root`: `baseline` first, then in the sweep's order, then by name."""
  if not os.path.isdir(root):
    raise errors.NotFoundError(f'{root}: no such directory (pass the --workdir of launch.sweep)')
  order = {p['name']: i for i, p in enumerate(read_sweep_file(root).get('points', []))}
  names = sorted((n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))),
                 key=lambda n: (n != 'baseline', order.get(n, len(order)), n))
  points = [point for point in (_load_point(root, name) for name in names) if point is not None]
  if not points:
    raise errors.NotFoundError(f'{root}: no subdirectory holds a metrics.jsonl; is this the '
                               '--workdir of a sweep whose points have started?')
  return points


# Measures of one run ------------------------------------------------------------------------------


def steps_to_train_err(run: Run, target: float) -> int | None:
  """The first logged step whose training top-1 error is at most `target`; None if none is."""
  return next((r['step'] for r in run.train if r['top1_err'] <= target), None)


def last_step(run: Run) -> int:
  return max([r['step'] for r in run.train + run.eval], default=0)


def train_test_gap(run: Run) -> float | None:
  """The final eval top-1 error minus the error on training examples (no augmentation, no dropout)
  at the same step; None without 'eval_train' records."""
  on_train = {r['step']: r['top1_err'] for r in run.eval_train}
  steps = [r['step'] for r in run.eval if r['step'] in on_train]
  if not steps:
    return None
  final = max(steps)
  return next(r['top1_err'] for r in run.eval if r['step'] == final) - on_train[final]


def wall_seconds(run: Run) -> float:
  times = [r['wall_time'] for r in run.train + run.eval]
  return max(times) - min(times) if times else 0.0


@dataclasses.dataclass(frozen=True)
class Values:
  """A measure's value in each run of a point that has it."""
  values: tuple[float, ...]
  runs: int  # how many runs the point has
  unreached: int = 0  # steps_to_train_err: runs that never got there (their last step, a bound)

  @property
  def lower_bound(self) -> bool:
    return self.unreached > 0


def measure(point: Point, name: str, target: float) -> Values:
  """The values of measure `name` over the point's runs: 'eval_top1_err', 'eval_top5_err' and
  'train_top1_err' (final records), 'train_test_gap', 'steps_to_train_err' (a run that never
  reached `target` counts its last step, a lower bound), 'wall_seconds'."""
  values, unreached = [], 0
  for run in point.runs:
    if name in _FINAL_VALUES:
      split, key = _FINAL_VALUES[name]
      records = getattr(run, split)
      value = records[-1][key] if records else None
    elif name == 'train_test_gap':
      value = train_test_gap(run)
    elif name == 'steps_to_train_err':
      value = steps_to_train_err(run, target)
      if value is None and run.train:
        value, unreached = last_step(run), unreached + 1
    elif name == 'wall_seconds':
      value = wall_seconds(run)
    else:
      raise ValueError(f'unknown measure {name!r}')
    if value is not None:
      values.append(float(value))
  return Values(tuple(values), len(point.runs), unreached)


# Tables -------------------------------------------------------------------------------------------


def baseline_of(point: Point, points: list[Point]) -> Point | None:
  """The point whose overrides are the largest proper part of `point`'s (the first among equals);
  None for a point with none, or not made by launch/sweep.py."""
  if point.overrides is None:
    return None
  items = set(map(json.dumps, point.overrides.items()))
  candidates = [p for p in points if p is not point and p.overrides is not None
                and set(map(json.dumps, p.overrides.items())) < items]
  return max(candidates, key=lambda p: len(p.overrides), default=None)


def regimes(points: list[Point]) -> list[list[Point]]:
  """The points grouped by regime: a regime is a baseline that is itself compared with another
  (`{'train_examples': N}` against `{}`) or a point with no baseline (the full recipe), with the
  points whose baselines lead to it; in the order of their first points."""
  baselines = {id(p): baseline_of(p, points) for p in points}
  heads = {id(b) for b in baselines.values() if b is not None and baselines[id(b)] is not None}

  def regime(point: Point) -> int:
    while id(point) not in heads and baselines[id(point)] is not None:
      point = baselines[id(point)]
    return id(point)

  groups = {}
  for point in points:
    groups.setdefault(regime(point), []).append(point)
  return list(groups.values())


def _describe(point: Point) -> str:
  if point.overrides is None:
    return f'`{point.name}`'
  if not point.overrides:
    return 'baseline (no overrides)'
  return ', '.join(f'`{key}={value}`' for key, value in point.overrides.items())


def _fmt(value: float | None, spec: str = '.3f') -> str:
  return '—' if value is None or math.isnan(value) else format(value, spec)


def _mean_std(values: Values, spec: str = '.3f') -> str:
  """'mean ± std' over the seeds ('value' for one); '—' for none; '≥ ...' and how many runs never
  reached the target where some values are lower bounds."""
  summary = verdicts.summarize(values.values)
  if not summary.n:
    return '—'
  text = _fmt(summary.mean, spec) if summary.n == 1 else (
      f'{_fmt(summary.mean, spec)} ± {_fmt(summary.std, spec)}')
  if not values.lower_bound:
    return text
  return f'≥ {text} ({values.unreached} of {values.runs} never reached it)'


def _signed(value: float, spec: str) -> str:
  return '—' if math.isnan(value) else format(value, '+' + spec)


def _difference(interval: verdicts.Interval, spec: str = '.3f') -> str:
  """'+d [low, high]', or '+d' without an interval."""
  if math.isnan(interval.low):
    return _signed(interval.difference, spec)
  return (f'{_signed(interval.difference, spec)} [{_signed(interval.low, spec)}, '
          f'{_signed(interval.high, spec)}]')


def markdown_table(points: list[Point], target: float) -> str:
  lines = [
      f'| point | seeds | steps | eval top-1 err | Δ eval top-1 err vs baseline [95% CI] | '
      f'eval top-5 err | train top-1 err | train–test gap | steps to train top-1 err ≤ {target:g} '
      '| wall time |',
      '|---|---:|---:|---:|---|---:|---:|---:|---:|---:|',
  ]
  for point in points:
    values = {name: measure(point, name, target) for name in (
        'eval_top1_err', 'eval_top5_err', 'train_top1_err', 'train_test_gap',
        'steps_to_train_err', 'wall_seconds')}
    baseline = baseline_of(point, points)
    versus = '—'
    if baseline is not None and values['eval_top1_err'].values:
      interval = verdicts.welch_interval(values['eval_top1_err'].values,
                                         measure(baseline, 'eval_top1_err', target).values)
      versus = f'{_difference(interval)} vs {_describe(baseline)}'
    minutes, seconds = divmod(int(verdicts.summarize(values['wall_seconds'].values).mean), 60)
    lines.append(
        f'| {_describe(point)} | {len(point.runs)} | {max(map(last_step, point.runs))} | '
        f'{_mean_std(values["eval_top1_err"])} | {versus} | {_mean_std(values["eval_top5_err"])} | '
        f'{_mean_std(values["train_top1_err"])} | {_mean_std(values["train_test_gap"])} | '
        f'{_mean_std(values["steps_to_train_err"], ".0f")} | {minutes}:{seconds:02d} |')
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass(frozen=True)
class Judgement:
  """A claim of the sweep file (`get_claims`), measured: both sides' values, and the verdict."""
  claim: dict
  baseline: Values
  point: Values
  interval: verdicts.Interval
  verdict: str
  note: str  # why a verdict could not be reached, where it could not


def judge(claim: dict, points: list[Point], target: float) -> Judgement:
  """The verdict on one claim ({'claim', 'section', 'paper', 'point', 'baseline', 'measure'}, the
  points by name) from the values of its measure over the seeds of its two points."""
  by_name = {p.name: p for p in points}
  sides, note = {}, ''
  for side in ('baseline', 'point'):
    point = by_name.get(claim[side])
    sides[side] = measure(point, claim['measure'], target) if point else Values((), 0)
    if not point:
      note = f'`{claim[side]}` has not run'
    elif not sides[side].values and claim['measure'] == 'train_test_gap':
      note = 'no training-set error: set config.eval_train_examples'
  interval = verdicts.welch_interval(sides['point'].values, sides['baseline'].values)
  if not note and math.isnan(interval.low):
    note = 'fewer than 2 seeds'
  verdict = verdicts.verdict(interval, sides['point'].lower_bound, sides['baseline'].lower_bound)
  return Judgement(claim, sides['baseline'], sides['point'], interval, verdict, note)


def claims_table(judgements: list[Judgement]) -> str:
  lines = ['| claim | paper | measure | with the paper\'s choice | without it | difference [95% CI] '
           '| verdict |', '|---|---|---|---:|---:|---|---|']
  for j in judgements:
    spec = '.0f' if j.claim['measure'] == 'steps_to_train_err' else '.3f'
    verdict = f'**{j.verdict}**' + (f' ({j.note})' if j.note else '')
    where = '; '.join(j.claim[key] for key in ('section', 'regime') if j.claim.get(key))
    lines.append(
        f'| {j.claim["claim"]} ({where}) | {j.claim.get("paper", "")} | '
        f'{MEASURE_NAMES[j.claim["measure"]]} | `{j.claim["baseline"]}`: '
        f'{_mean_std(j.baseline, spec)} | `{j.claim["point"]}`: {_mean_std(j.point, spec)} | '
        f'{_difference(j.interval, spec)} | {verdict} |')
  return '\n'.join(lines) + '\n'


def checkpoint_evals_table(points: list[Point]) -> str:
  """One row per record `alexnet_jax.evaluate` appended, in file order; '' when there are none."""
  lines = ['| point | seed | checkpoint | step | crops | eval top-1 err | eval top-5 err |',
           '|---|---:|---|---:|---:|---:|---:|']
  for point in points:
    for run in point.runs:
      for record in run.checkpoint_evals:
        lines.append(f'| {_describe(point)} | {_fmt(run.seed, "d")} | {record["checkpoint"]} | '
                     f'{record["step"]} | {record.get("eval_crops", "—")} | '
                     f'{_fmt(record.get("top1_err"))} | {_fmt(record.get("top5_err"))} |')
  return '\n'.join(lines) + '\n' if len(lines) > 2 else ''


# Curves -------------------------------------------------------------------------------------------


def curve(point: Point, value_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, std) over the point's runs of `value_of(run)` ({step: value}), at the steps
  every run has (std 0 for one run)."""
  per_run = [value_of(run) for run in point.runs]
  steps = sorted(set.intersection(*(set(values) for values in per_run)))
  table = np.array([[values[s] for s in steps] for values in per_run], np.float64).reshape(
      len(per_run), len(steps))
  std = table.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros(len(steps))
  return np.asarray(steps), table.mean(axis=0), std


def _gap_by_step(run: Run) -> dict[int, float]:
  on_train = {r['step']: r['top1_err'] for r in run.eval_train}
  return {r['step']: r['top1_err'] - on_train[r['step']] for r in run.eval if r['step'] in on_train}


def _regime_head(group: list[Point], points: list[Point]) -> Point:
  """The point of a regime (`regimes`) the others are compared with: the one whose own baseline is
  outside the regime."""
  return next(p for p in group if baseline_of(p, points) not in group)


def _legend_label(point: Point, head: Point) -> str:
  """A point as its regime's legend names it: 'baseline' for the head, otherwise only the
  overrides the head does not have (the regime's own are in the row's title)."""
  if point is head:
    return 'baseline'
  if point.overrides is None or head.overrides is None:
    return point.name
  return _overrides_text({key: value for key, value in point.overrides.items()
                          if key not in head.overrides or head.overrides[key] != value})


def _overrides_text(overrides: dict) -> str:
  return ', '.join(f'{key}={value}' for key, value in overrides.items())


def plot_curves(points: list[Point], panels: list[tuple[str, object]], path: str,
                markers: bool = False) -> None:
  """One column per (label, value_of) in `panels`, one row per regime (`regimes`), titled by the
  regime's own overrides; per point, its mean over seeds in a ± std band."""
  rows = regimes(points)
  figure, axes = plt.subplots(len(rows), len(panels), figsize=(6 * len(panels), 4.5 * len(rows)),
                              squeeze=False)
  for row, group in zip(axes, rows):
    head = _regime_head(group, points)
    for axis, (label, value_of) in zip(row, panels):
      for point in group:
        steps, mean, std = curve(point, value_of)
        line, = axis.plot(steps, mean, label=_legend_label(point, head),
                          marker='.' if markers else None)
        axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
      axis.set_xlabel('step')
      axis.set_ylabel(label)
      axis.grid(alpha=0.3)
    if head.overrides:
      row[0].set_title(textwrap.fill(f'baseline: {_overrides_text(head.overrides)}', 90),
                       fontsize=8, loc='left')
    row[0].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _by_step(split: str, key: str):
  return lambda run: {r['step']: r[key] for r in getattr(run, split) if key in r}


def write_report(root: str, output_dir: str, target_train_err: float) -> str:
  """Writes report.md and the plots into `output_dir`; returns the report's path."""
  points = load_points(root)
  os.makedirs(output_dir, exist_ok=True)
  plot_curves(points, [('train loss', _by_step('train', 'loss')),
                       ('train top1_err', _by_step('train', 'top1_err'))],
              os.path.join(output_dir, 'train_curves.png'))
  plot_curves(points, [('eval top1_err', _by_step('eval', 'top1_err')),
                       ('eval top5_err', _by_step('eval', 'top5_err'))],
              os.path.join(output_dir, 'eval_curves.png'), markers=True)
  plots = ['![training curves](train_curves.png)', '![eval curves](eval_curves.png)']
  with_gap = [p for p in points if all(run.eval_train for run in p.runs)]
  if with_gap:
    plot_curves(with_gap, [('train–test gap (eval top-1 err − training-set top-1 err)',
                            _gap_by_step)], os.path.join(output_dir, 'gap_curves.png'), markers=True)
    plots.append('![train-test gap](gap_curves.png)')
  report = (f'# Sweep report: {os.path.abspath(root)}\n\n'
            f'{markdown_table(points, target_train_err)}\n'
            'Each value is the mean ± sample standard deviation over a point\'s seeds of the last '
            'value its training run logged: eval over the whole eval split, train averaged over '
            'the last logging interval (augmented images, dropout on); the train–test gap is the '
            'eval top-1 error minus the top-1 error on training examples without augmentation or '
            'dropout (`config.eval_train_examples`) at the last eval. Δ is the difference of the '
            'means from the point\'s baseline, with a two-sided 95% Welch t interval '
            '(Welch–Satterthwaite degrees of freedom; no interval with one seed). Wall time runs '
            'from the first to the last of a run\'s records.\n\n')
  claims = read_sweep_file(root).get('claims', [])
  if claims:
    judgements = [judge(claim, points, target_train_err) for claim in claims]
    report += (f'## The paper\'s claims\n\n{claims_table(judgements)}\n'
               'Difference: the point without the paper\'s choice minus the one with it, mean over '
               'seeds, with its two-sided 95% Welch t interval. Every claim says that undoing the '
               'choice makes the measure worse (higher): **reproduced** when the whole interval '
               'is above 0, **opposite** when it is below, **inconclusive** when it spans 0. '
               f'Steps to a training top-1 error ≤ {target_train_err:g}: a run that never got '
               'there counts its last step, a lower bound, and a verdict such a bound could '
               'overturn is inconclusive.\n\n')
  report += '\n\n'.join(plots) + '\n'
  evaluations = checkpoint_evals_table(points)
  if evaluations:
    report += ('\n## Checkpoint evaluations (`alexnet_jax.evaluate`)\n\n'
               'Run after training, on a saved checkpoint; not part of the curves or the tables '
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
