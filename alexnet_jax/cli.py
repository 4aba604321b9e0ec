"""What every command does around its own work: process settings, quiet logs, one-line errors.

Each command (main, evaluate, predict, convert, visualize, prepare, report, and launch/'s local and
sweep) ends with `cli.run(main)` instead of `absl.app.run(main)`. `run`:
* makes the process settings the commands want (`runtime.configure()`: the CPU XLA flag,
  TensorFlow's host memory pool) before JAX or TensorFlow start, so that importing the library never
  has to;
* keeps the console to what the command itself says: INFO records of other libraries (Orbax's
  dozens of lines per checkpoint read or write, JAX's "Unable to initialize backend 'tpu'") are
  dropped; their warnings and errors stay. `--verbose` shows everything. (TensorFlow's C++ notices
  at its first use, "oneDNN custom operations are on", remain: TF_CPP_MIN_LOG_LEVEL=3 leaves them.)
* turns a failure into one line on stderr: an `errors.Error` prints `error: <message>` (the message
  names the problem and the fix) and exits with its code; anything else is a bug, printed as
  `error: <type>: <message>` naming a file that holds the traceback, exit 1. `--verbose` prints the
  traceback itself. A Ctrl-C that reaches a command as KeyboardInterrupt exits 130 with one line.
"""

from collections.abc import Callable
import logging as std_logging
import os
import sys
import tempfile
import time
import traceback
from typing import Any

from absl import app
from absl import flags
from absl import logging

from alexnet_jax import errors
from alexnet_jax import runtime

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors of every library, and INFO records of this package only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def _command_name() -> str:
  return os.path.splitext(os.path.basename(sys.argv[0]))[0] or 'python'


def _write_traceback(error: BaseException) -> str:
  """The traceback of `error` in a new file of the temporary directory; returns its path."""
  descriptor, path = tempfile.mkstemp(
      prefix=f'alexnet_jax-{_command_name()}-{time.strftime("%Y%m%d-%H%M%S")}-', suffix='.txt')
  with os.fdopen(descriptor, 'w', encoding='utf-8') as f:
    f.write(f'{" ".join(sys.argv)}\n\n')
    f.write(''.join(traceback.format_exception(error)))
  return path


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else '(no message)'


def fail(message: str, exit_code: int) -> None:
  """Prints `error: <message>` on stderr and exits with `exit_code`."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _run_main(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  verbose = flags.FLAGS['verbose'].value
  if not verbose:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
  try:
    return main(argv)
  except app.UsageError:
    raise  # absl prints the usage
  except errors.Error as e:
    if verbose:
      traceback.print_exc()
    fail(str(e), e.exit_code)
  except KeyboardInterrupt:
    fail('interrupted (Ctrl-C)', errors.INTERRUPTED)
  except Exception as e:  # pylint: disable=broad-except  (a bug: one line, and where to read more)
    if verbose:
      traceback.print_exc()
      fail(f'{type(e).__name__}: {_first_line(e)} (unexpected: the traceback is above)',
           errors.FAILED)
    try:
      where = f'the traceback is in {_write_traceback(e)}'
    except OSError:
      where = 'rerun with --verbose for the traceback'
    fail(f'{type(e).__name__}: {_first_line(e)} (unexpected: {where})', errors.FAILED)


def run(main: Callable[[list[str]], Any], **app_run_kwargs: Any) -> None:
  """`absl.app.run(main)` after `runtime.configure()`, with quiet logs and one-line errors."""
  runtime.configure()
  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_boolean('verbose', False, 'Show other libraries\' INFO logs and the traceback of '
                         'an error.')
  app.run(lambda argv: _run_main(main, argv), **app_run_kwargs)
