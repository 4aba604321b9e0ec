"""The failures a user can act on, and the exit code of each.

Every command runs under `cli.run`, which turns an `Error` into one line on stderr, `error: <message>`,
and exits with the error's `exit_code`; the message names the problem and the fix. Anything else that
escapes a command is a bug: one line too, naming a file that holds the traceback (`--verbose` prints
it instead). The project's own exceptions derive from these classes, most of them also from the
built-in exception they stand for (a missing checkpoint is still a FileNotFoundError to a caller).

The exit codes besides 0 (README, "Checkpoints, resume and exit codes", lists them all):
"""

FAILED = 1  # the run itself failed: a NaN/Inf loss, a checkpoint write, an unexpected exception
BAD_INPUT = 2  # what the command was given: config, flags, workdir, dataset, files; fix it and rerun
PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGUSR1, checkpointed; launch/ scripts requeue on it
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C; checkpointed; rerun to resume


class Error(Exception):
  """A failure during the run (exit 1); the message says what failed and what is intact."""
  exit_code = FAILED


class InputError(Error):
  """Something the command was given is wrong or missing (exit 2); the message names the fix."""
  exit_code = BAD_INPUT


class InvalidError(InputError, ValueError):
  """A value, file or dataset the command was given cannot be used as it is."""


class NotFoundError(InputError, FileNotFoundError):
  """A file, folder, split or checkpoint the command needs is not there."""


class ExistsError(InputError, FileExistsError):
  """The command would overwrite something that is already there."""
