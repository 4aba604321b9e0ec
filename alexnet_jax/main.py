r"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/default.py --workdir=DIR`.

Any config key can be overridden, e.g. `--config.model.groups=1 --config.batch_size=256`. Rerunning the
same command resumes from the latest checkpoint in DIR. Exit codes: 0 finished; 2 invalid config or
workdir, or an unknown or unparsable --config.* flag (one line on stderr says which key and what it
allows); 1 other errors, a NaN/Inf loss (the message names the step) or a failed checkpoint write among
them; 75 preempted by SIGTERM/SIGUSR1 after checkpointing (rerun to resume).
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
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; launch/ scripts requeue on it
CONFIG_ERROR_EXIT_CODE = 2

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file, e.g. configs/default.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, metrics.jsonl, config.json and TensorBoard logs go; storage '
    'every process sees.')
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


class _QuietLibraries(logging.logging.Filter):
  """Drops the INFO chatter of Orbax's save threads (several lines per checkpoint); keeps warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def _fail(message: str, exit_code: int) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(exit_code)


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
    _fail(str(e), CONFIG_ERROR_EXIT_CODE)
  except (KeyError, AttributeError) as e:
    message = _unknown_override(e, argv)
    if message is None:
      raise  # an error inside the config file itself: its traceback says where
    _fail(message, CONFIG_ERROR_EXIT_CODE)
  except OSError as e:  # the config file is missing or unreadable
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    _fail(f'cannot load the config file: {reason}', CONFIG_ERROR_EXIT_CODE)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  try:
    config_validation.validate(config)  # before JAX starts: bad configs cost no compile
  except config_validation.ConfigError as e:
    _fail(str(e), CONFIG_ERROR_EXIT_CODE)

  # Before anything asks JAX for its devices.
  distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _HEARTBEAT_TIMEOUT_SECONDS.value)
  try:
    config_validation.validate_devices(config, jax.device_count(), jax.process_count())
  except config_validation.ConfigError as e:
    _fail(str(e), CONFIG_ERROR_EXIT_CODE)
  try:
    distributed.check_shared_workdir(_WORKDIR.value)
  except distributed.WorkdirNotSharedError as e:
    _fail(str(e), CONFIG_ERROR_EXIT_CODE)

  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except workdir_lib.CheckpointMismatchError as e:
    _fail(str(e), CONFIG_ERROR_EXIT_CODE)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(PREEMPTED_EXIT_CODE)
  except (train.NonFiniteLossError, workdir_lib.CheckpointWriteError) as e:
    _fail(str(e), 1)


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
