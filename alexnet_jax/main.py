r"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/default.py --workdir=DIR`.

Any config key can be overridden, e.g. `--config.model.groups=1 --config.batch_size=256`. Rerunning the
same command resumes from the latest checkpoint in DIR; rerunning a finished run says so and exits 0.
Every failure is one line on stderr, `error: ...`, naming the problem and the fix (alexnet_jax/cli.py;
`--verbose` adds the traceback). Exit codes (alexnet_jax/errors.py):
  0    finished, now or before
  1    the run failed: a NaN/Inf loss (the message names the step), a failed checkpoint write (it
       names the intact checkpoint), or an unexpected error (it names the file with the traceback)
  2    bad input, nothing trained: an invalid config, an unknown or unparsable --config.* flag, a
       workdir that cannot be written or holds another model, a dataset not prepared or unusable
  75   SIGTERM or SIGUSR1: the current step was checkpointed; rerun to resume
  130  Ctrl-C: the current step was checkpointed; rerun to resume (a second Ctrl-C stops at once)
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import config_validation
from alexnet_jax import distributed
from alexnet_jax import errors
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file, e.g. configs/default.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, metrics.jsonl, config.json and TensorBoard logs go; a local '
    'path (or a mounted file system) every process sees.')
flags.mark_flags_as_required(['config', 'workdir'])
# Joining a multi-process run (alexnet_jax/distributed.py).
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None,
    'HOST:PORT of process 0, reachable from every process. Set together with --num_processes '
    'and --process_id; leave all three unset under SLURM (srun) or mpirun.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in the run (1 forces a single-process run).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
_HEARTBEAT_TIMEOUT_SECONDS = flags.DEFINE_integer(
    'heartbeat_timeout_seconds', distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    'A process silent for this long is declared dead and all others exit with an error.',
    lower_bound=1)


def _unknown_override(error: Exception, argv: list[str]) -> str | None:
  """The message for ml_collections' KeyError (or AttributeError wrapping one) about a `--config.*`
  override of a key the config lacks; None if `error` is about something else."""
  cause = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
  name, _, suggestion = str(cause.args[0] if cause.args else '').partition('\n')
  name = name.strip('\'"')
  for arg in argv[1:]:
    flag = arg.split('=', 1)[0].lstrip('-')
    if flag.startswith('config.') and name in flag.split('.')[1:]:
      suggestion = f' {suggestion.strip()}' if suggestion else ''
      return (f'--{flag}: the config has no key {name!r}.{suggestion} Every key is set in '
              f'configs/default.py (README, "Config keys").')
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad --config file or --config.* override reported in one line (exit 2)
  instead of a traceback."""
  try:
    remaining = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a config file that failed to load raises its OSError on first access
    return remaining
  except flags.Error as e:  # a missing or unparsable value, e.g. --config.batch_size=3.5
    # A config file's own error (e.g. get_config refusing FILE:ARG) arrives with its traceback in
    # the message: the flag and the exception's last line say it.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cli.fail(lines[0] if len(lines) == 1 else f'{lines[0]} {lines[-1]}', errors.BAD_INPUT)
  except (KeyError, AttributeError) as e:
    message = _unknown_override(e, argv)
    if message is None:
      raise  # an error inside the config file itself: its traceback says where
    cli.fail(message, errors.BAD_INPUT)
  except OSError as e:  # the config file is missing or unreadable
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    cli.fail(f'cannot load the config file: {reason}', errors.BAD_INPUT)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  config_validation.validate(config)  # before JAX starts: bad configs cost no compile
  workdir = _WORKDIR.value
  created = workdir_lib.make_workdir(workdir)
  try:
    # Before anything asks JAX for its devices.
    distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _HEARTBEAT_TIMEOUT_SECONDS.value)
    config_validation.validate_devices(config, jax.device_count(), jax.process_count())
    distributed.check_shared_workdir(workdir)
    train.train_and_evaluate(config, workdir)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(e.exit_code)
  finally:
    if created:  # a start that failed leaves no empty workdir behind
      workdir_lib.remove_if_empty(workdir)


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
