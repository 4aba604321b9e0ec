r"""Runs every point of a sweep, each in its own workdir, on this machine or as a SLURM job array.

  python -m launch.sweep --config=configs/smoke.py --sweep=configs/sweeps/ablations.py \
      --workdir=/tmp/ablations --launcher=local --seeds=3 -- --config.num_train_steps=400

A sweep file defines `get_sweep() -> list[dict]`: one dict of config overrides per point, e.g.
{'model.activation': 'tanh'}. Point P trains in ROOT/<name of P> (its overrides spelled out, or
`baseline` for {}) with `--config.KEY=VALUE` for each override, after the flags given after `--`,
which every point shares. With --seeds=N each point trains N times, with config.seed 0..N-1, in
ROOT/<name of P>/seed=<s>. A run whose run_info.json says finished is skipped; any other is started
again and resumes from its last checkpoint. So rerunning the same command completes a sweep, and
rerunning it with more seeds adds only the new ones.

A sweep file may also define `get_claims() -> list[dict]`, the paper's claims its points test, each
{'claim': what the paper says, 'section': where, 'paper': its number, 'point': the overrides of the
point without the paper's choice, 'baseline': those of the point with it (default {}), 'measure':
'eval_top1_err' | 'train_test_gap' | 'steps_to_train_err'}; they go to ROOT/sweep.json, with the
points and seeds, where `python -m alexnet_jax.report ROOT` reads them to judge each claim.

--launcher=local trains the runs one after another (through launch/local.py when
--processes_per_point > 1); --launcher=slurm submits one job array of launch/slurm/train.sbatch whose
tasks are the unfinished runs (--sbatch_args for its resources) and returns; a run whose task
from an earlier submission is still queued or running (ROOT/.sweep/tasks.json, squeue) is not
submitted again. Logs: ROOT/<name>/train.log (local), ROOT/logs/<job>_<task>.log (SLURM).
`python -m alexnet_jax.report ROOT` then tabulates and plots the points, over their seeds.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile

from absl import flags

from alexnet_jax import cli
from alexnet_jax import errors

_CONFIG = flags.DEFINE_string('config', None, 'Base config file, e.g. configs/smoke.py, or FILE:ARG '
                              'for get_config(ARG).', required=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep().', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Root: one subdirectory per point.', required=True)
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'Where the points run.')
_PROCESSES_PER_POINT = flags.DEFINE_integer(
    'processes_per_point', 1, 'local: processes per point (launch/local.py); slurm: set tasks in '
    '--sbatch_args instead.', lower_bound=1)
_SBATCH_ARGS = flags.DEFINE_string(
    'sbatch_args', '', 'slurm: extra sbatch options, e.g. "--nodes=2 --ntasks-per-node=8 '
    '--gpus-per-node=8 --time=12:00:00".')
_SEEDS = flags.DEFINE_integer(
    'seeds', None, 'Train each point with config.seed 0..N-1, in ROOT/<point>/seed=<s>; unset: '
    'once, at the config\'s seed, in ROOT/<point>.', lower_bound=1)

SWEEP_POINT_FILE = 'sweep_point.json'  # a run's point name, overrides and seed, read by report.py
SWEEP_FILE = 'sweep.json'  # ROOT/sweep.json: the points, seeds and claims, read by report.py
MEASURES = ('eval_top1_err', 'train_test_gap', 'steps_to_train_err')  # what a claim is judged by
_BATCH_SCRIPT = 'launch/slurm/train.sbatch'
_TASKS_FILE = 'tasks.json'  # in ROOT/.sweep; see _read_tasks


def _load_module(path: str):
  if not os.path.isfile(path):
    raise errors.NotFoundError(f'--sweep={path}: no such file')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(path: str) -> list[dict]:
  """The points of the sweep file at `path`, checked."""
  module = _load_module(path)
  if not hasattr(module, 'get_sweep'):
    raise errors.InvalidError(f'{path} must define get_sweep() -> list[dict] of config overrides')
  points = module.get_sweep()
  if not isinstance(points, list) or not all(
      isinstance(p, dict) and all(isinstance(k, str) for k in p) for p in points):
    raise errors.InvalidError(f'{path}: get_sweep() must return a list of dicts '
                              '{"config.key": value}')
  names = [point_name(p) for p in points]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise errors.InvalidError(f'{path}: points repeated: {duplicates}')
  return points


def load_claims(path: str, points: list[dict]) -> list[dict]:
  """The claims of the sweep file at `path` (`get_claims()`, [] without one), checked against its
  `points`: each names a point and a baseline of the sweep and a measure of MEASURES."""
  module = _load_module(path)
  if not hasattr(module, 'get_claims'):
    return []
  claims = []
  for claim in module.get_claims():
    claim = {'baseline': {}, **claim}
    for key in ('point', 'baseline'):
      if claim.get(key) not in points:
        raise ValueError(f'{path}: the claim {claim.get("claim")!r} names a {key} {claim.get(key)!r} '
                         'that is not a point of get_sweep()')
    if claim.get('measure') not in MEASURES:
      raise ValueError(f'{path}: the claim {claim.get("claim")!r} has measure '
                       f'{claim.get("measure")!r}; use one of {", ".join(MEASURES)}')
    claims.append(claim)
  return claims


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep: a point, at one seed (None: the config's own)."""
  point: dict
  seed: int | None

  @property
  def name(self) -> str:
    """Its workdir under ROOT: `<point name>`, or `<point name>/seed=<s>`."""
    name = point_name(self.point)
    return name if self.seed is None else f'{name}/seed={self.seed}'

  @property
  def overrides(self) -> dict:
    return self.point if self.seed is None else {**self.point, 'seed': self.seed}


def sweep_runs(points: list[dict], seeds: int | None) -> list[Run]:
  """Every point at seeds 0..seeds-1, or once each at the config's seed. Seed by seed: a sweep cut
  short has whole seeds of every point, a comparison already, rather than some points only."""
  if seeds is None:
    return [Run(point, None) for point in points]
  return [Run(point, seed) for seed in range(seeds) for point in points]


def point_name(overrides: dict) -> str:
  """A readable directory name for a point: `model.lrn=False,model.groups=1`, or `baseline`."""
  if not overrides:
    return 'baseline'
  name = ','.join(f'{key}={_flag_value(value)}' for key, value in overrides.items())
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name)


def _flag_value(value) -> str:
  return repr(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


def override_flags(overrides: dict) -> list[str]:
  return [f'--config.{key}={_flag_value(value)}' for key, value in overrides.items()]


def is_finished(workdir: str) -> bool:
  try:
    with open(os.path.join(workdir, 'run_info.json')) as f:
      return bool(json.load(f).get('finished'))
  except (OSError, ValueError):
    return False


def _run_args(root: str, run: Run, shared_args: list[str]) -> list[str]:
  return [f'--config={_CONFIG.value}', f'--workdir={os.path.join(root, run.name)}',
          *shared_args, *override_flags(run.overrides)]


def _prepare_run(root: str, run: Run) -> str:
  workdir = os.path.join(root, run.name)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, SWEEP_POINT_FILE), 'w') as f:
    json.dump({'name': point_name(run.point), 'overrides': run.point, 'seed': run.seed}, f,
              indent=2)
  return workdir


def write_sweep_file(root: str, points: list[dict], seeds: int | None, claims: list[dict]) -> None:
  """ROOT/sweep.json: what the report needs to know of the sweep file (written whole, then
  renamed)."""
  record = {'sweep': os.path.abspath(_SWEEP.value), 'seeds': seeds,
            'points': [{'name': point_name(p), 'overrides': p} for p in points],
            'claims': [{**c, 'point': point_name(c['point']), 'baseline': point_name(c['baseline'])}
                       for c in claims]}
  path = os.path.join(root, SWEEP_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)


@contextlib.contextmanager
def _forwarding_signals_to(child: subprocess.Popen):
  """SIGINT/SIGTERM/SIGUSR1/SIGHUP to the sweep reach the training run (which checkpoints and exits)
  instead of leaving it running on its own. Yields the list of signals received."""
  received = []

  def forward(signum, frame):
    del frame
    received.append(signum)
    child.send_signal(signum)

  previous = {s: signal.signal(s, forward)
              for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)}
  try:
    yield received
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def run_local(root: str, runs: list[Run], shared_args: list[str]) -> int:
  failed = []
  for index, run in enumerate(runs):
    name = run.name
    workdir = _prepare_run(root, run)
    if is_finished(workdir):
      print(f'[{index + 1}/{len(runs)}] {name}: finished, skipped', flush=True)
      continue
    if _PROCESSES_PER_POINT.value > 1:
      command = [sys.executable, '-m', 'launch.local',
                 f'--num_processes={_PROCESSES_PER_POINT.value}', '--']
    else:
      command = [sys.executable, '-m', 'alexnet_jax.main']
    command += _run_args(root, run, shared_args)
    print(f'[{index + 1}/{len(runs)}] {name}: training, log in {workdir}/train.log', flush=True)
    with open(os.path.join(workdir, 'train.log'), 'a') as log:
      # A session of its own: a Ctrl-C in the terminal reaches the run once, through forward(),
      # not also directly (a second SIGINT cuts short the checkpoint write the first waits for).
      child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
      with _forwarding_signals_to(child) as received:
        status = child.wait()
    if received:
      print(f'[{index + 1}/{len(runs)}] {name}: stopped by signal {received[0]} (status {status});'
            ' rerun the same command to resume the sweep.', flush=True)
      return status or 1
    if status != 0:
      print(f'[{index + 1}/{len(runs)}] {name}: failed with status {status}', flush=True)
      failed.append(name)
  if failed:
    print(f'{len(failed)} of {len(runs)} runs failed: {failed}; rerun to resume them.')
    return 1
  print(f'all {len(runs)} runs finished; report: python -m alexnet_jax.report {root}')
  return 0


def _read_tasks(sweep_dir: str) -> dict[str, str]:
  """ROOT/.sweep/tasks.json: run name -> the array task last submitted for it ("<job>_<i>")."""
  try:
    with open(os.path.join(sweep_dir, _TASKS_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def _record_tasks(sweep_dir: str, tasks: dict[str, str]) -> None:
  path = os.path.join(sweep_dir, _TASKS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(_read_tasks(sweep_dir) | tasks, f, indent=2)
  os.replace(path + '.tmp', path)  # a sweep stopped mid-write keeps the previous record


def _queued_runs(sweep_dir: str) -> dict[str, str]:
  """The runs whose last submitted array task squeue still lists (pending, running, requeued or
  held): submitted again, they would train twice at once in one workdir. Name -> task."""
  tasks = _read_tasks(sweep_dir)
  if not tasks:
    return {}
  squeue = subprocess.run(['squeue', '--noheader', '--array', '--format=%i'],
                          capture_output=True, text=True)
  if squeue.returncode != 0:
    raise RuntimeError(f'squeue failed ({squeue.stderr.strip()}), so whether the tasks submitted '
                       'before are still queued is unknown; rerun once squeue works.')
  listed = set(squeue.stdout.split())  # "<job>_<i>" for every array task, whatever its state
  return {name: task for name, task in tasks.items() if task in listed}


def submit_slurm(root: str, runs: list[Run], shared_args: list[str]) -> int:
  """One array job; task i trains run i. Runs finished or still in the queue from an earlier
  submission are left out. The tasks' arguments go in a directory of this submission's own,
  ROOT/.sweep/submission-*/i.args (NUL-separated, read by train.sbatch), so that any value survives
  unquoted and a task requeued later reads the run it was submitted for, whatever a rerun with an
  edited sweep file writes."""
  sweep_dir = os.path.join(root, '.sweep')
  os.makedirs(sweep_dir, exist_ok=True)
  os.makedirs(os.path.join(root, 'logs'), exist_ok=True)
  try:
    queued = _queued_runs(sweep_dir)
  except RuntimeError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  unsubmitted, in_queue = [], []
  for index, run in enumerate(runs):
    name = run.name
    if is_finished(_prepare_run(root, run)):
      print(f'{name}: finished, skipped')
    elif name in queued:
      print(f'{name}: still queued or running as job {queued[name]}, skipped '
            f'(scancel {queued[name]} to submit it again)')
      in_queue.append(index)
    else:
      unsubmitted.append(index)
  if in_queue and not unsubmitted:
    print(f'nothing to submit: every unfinished run ({len(in_queue)} of {len(runs)}) is still '
          'queued or running')
    return 0
  if not unsubmitted:
    print(f'all {len(runs)} runs finished; report: python -m alexnet_jax.report {root}')
    return 0
  args_dir = os.path.abspath(tempfile.mkdtemp(prefix='submission-', dir=sweep_dir))
  for index in unsubmitted:
    with open(os.path.join(args_dir, f'{index}.args'), 'w') as f:
      f.write(''.join(arg + '\0' for arg in _run_args(root, runs[index], shared_args)))
  sweep_name = os.path.splitext(os.path.basename(_SWEEP.value))[0]
  command = ['sbatch', '--parsable', f'--job-name={sweep_name}',
             f'--array={",".join(map(str, unsubmitted))}',
             f'--output={os.path.join(root, "logs", "%A_%a.log")}',
             f'--export=ALL,ALEXNET_ARRAY_ARGS={args_dir}',
             *shlex.split(_SBATCH_ARGS.value), _BATCH_SCRIPT]
  submitted = subprocess.run(command, capture_output=True, text=True)
  if submitted.returncode != 0:
    print(f'sbatch failed: {submitted.stderr.strip()}', file=sys.stderr)
    return 1
  job_id = submitted.stdout.strip().split(';')[0]
  _record_tasks(sweep_dir, {runs[i].name: f'{job_id}_{i}' for i in unsubmitted})
  print(f'submitted job array {job_id}: {len(unsubmitted)} of {len(runs)} runs '
        f'(tasks {",".join(map(str, unsubmitted))}); logs in {root}/logs/{job_id}_<task>.log')
  return 0


def main(argv: list[str]) -> int:
  shared_args = argv[1:]
  config_file = _CONFIG.value.split(':', 1)[0]  # configs/x.py:arg passes arg to get_config
  if not os.path.isfile(config_file):
    raise errors.NotFoundError(f'--config={_CONFIG.value}: no such file {config_file}')
  points = load_sweep(_SWEEP.value)
  claims = load_claims(_SWEEP.value, points)
  root = os.path.abspath(_WORKDIR.value)
  os.makedirs(root, exist_ok=True)
  write_sweep_file(root, points, _SEEDS.value, claims)
  runs = sweep_runs(points, _SEEDS.value)
  if _LAUNCHER.value == 'local':
    return run_local(root, runs, shared_args)
  return submit_slurm(root, runs, shared_args)


if __name__ == '__main__':
  cli.run(main)
