"""What every command does before its own work: the process settings, then absl's flags and `main`.

Each command module (main, evaluate, predict, convert, visualize, prepare, report) ends with
`cli.run(main)` instead of `absl.app.run(main)`: `runtime.configure()` makes the process settings the
commands want (the CPU XLA flag, TensorFlow's host memory pool) before JAX or TensorFlow start, so
that importing the library never has to.
"""

from collections.abc import Callable
from typing import Any

from absl import app

from alexnet_jax import runtime


def run(main: Callable[[list[str]], Any], **app_run_kwargs: Any) -> None:
  """`absl.app.run(main)` after `runtime.configure()`."""
  runtime.configure()
  app.run(main, **app_run_kwargs)
