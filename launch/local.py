r"""Starts K processes of one training run on this machine: multi-host without a cluster.

  python -m launch.local --num_processes=2 -- \
      --config=configs/smoke.py --workdir=/tmp/alexnet_2proc

Everything after `--` goes to `python -m alexnet_jax.main` (or --module) in every process, followed
by --coordinator_address (a free port on 127.0.0.1), --num_processes and --process_id. Each
output line is prefixed with its process index. On CPU, --cpu_devices_per_process sets how many
devices each process simulates; on GPUs, --gpus_per_process hands each process its own GPUs.

SIGINT, SIGTERM, SIGUSR1 and SIGHUP are passed on to every process, each time once. The processes run
in sessions of their own, so a Ctrl-C in the terminal reaches each of them exactly once, through this
launcher: at the first, the train loop's processes agree on a step, checkpoint it and exit 130 (75
for SIGTERM/SIGUSR1); a second Ctrl-C stops them at once. If one process fails, the others are
given 1.5 times the distributed runtime's heartbeat timeout (--heartbeat_timeout_seconds after `--`,
default 60 s) to fail on their own, then killed. The exit status is the first failure's, 128 + N for
a process killed by signal N. The processes' "[Gloo] Rank ... connected" lines (one per process and
collective group) are left out unless --verbose is given (it is passed on to the processes too).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from alexnet_jax import cli
from alexnet_jax import errors

_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 2, 'Processes to start.', lower_bound=1)
_MODULE = flags.DEFINE_string('module', 'alexnet_jax.main', 'Python module each process runs.')
_CPU_DEVICES_PER_PROCESS = flags.DEFINE_integer(
    'cpu_devices_per_process', None,
    'Simulated CPU devices per process (XLA --xla_force_host_platform_device_count); '
    'default: whatever XLA_FLAGS already says, else 1.')
_GPUS_PER_PROCESS = flags.DEFINE_integer(
    'gpus_per_process', 0, 'GPUs per process: process k gets GPUs [k*G, (k+1)*G) of those visible. '
    '0: do not touch CUDA_VISIBLE_DEVICES (CPU runs).')

# alexnet_jax/main.py's flag and its default (not imported: that would import JAX here).
_HEARTBEAT_FLAG = '--heartbeat_timeout_seconds'
_DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 60
# SIGHUP too: in sessions of their own, the processes no longer get the closing terminal's.
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _heartbeat_timeout_seconds(program_args: list[str]) -> int:
  """The heartbeat timeout the processes get: the last --heartbeat_timeout_seconds, as for absl."""
  timeout = str(_DEFAULT_HEARTBEAT_TIMEOUT_SECONDS)
  for i, arg in enumerate(program_args):
    if arg.startswith(f'{_HEARTBEAT_FLAG}='):
      timeout = arg.split('=', 1)[1]
    elif arg == _HEARTBEAT_FLAG and i + 1 < len(program_args):
      timeout = program_args[i + 1]
  if not timeout.isdigit():
    raise errors.InvalidError(f'{_HEARTBEAT_FLAG}={timeout}: expected a whole number of seconds')
  return int(timeout)


def _exit_status(returncode: int) -> int:
  """A child's return code as a shell reports it: 128 + N for one killed by signal N (Popen says
  -N, and sys.exit(-N) would exit 256 - N)."""
  return 128 - returncode if returncode < 0 else returncode


def _process_env(process_id: int) -> dict[str, str]:
  env = dict(os.environ)
  if _CPU_DEVICES_PER_PROCESS.value is not None:
    xla_flags = [f for f in env.get('XLA_FLAGS', '').split()
                 if not f.startswith('--xla_force_host_platform_device_count')]
    xla_flags.append(f'--xla_force_host_platform_device_count={_CPU_DEVICES_PER_PROCESS.value}')
    env['XLA_FLAGS'] = ' '.join(xla_flags)
  if _GPUS_PER_PROCESS.value:
    visible = env.get('CUDA_VISIBLE_DEVICES')
    gpus = visible.split(',') if visible else [
        str(i) for i in range(_NUM_PROCESSES.value * _GPUS_PER_PROCESS.value)]
    needed = _NUM_PROCESSES.value * _GPUS_PER_PROCESS.value
    if len(gpus) < needed:
      raise errors.InvalidError(f'{_NUM_PROCESSES.value} processes x {_GPUS_PER_PROCESS.value} GPUs '
                           f'need {needed} GPUs, but CUDA_VISIBLE_DEVICES lists {len(gpus)}.')
    first = process_id * _GPUS_PER_PROCESS.value
    env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus[first:first + _GPUS_PER_PROCESS.value])
  return env


# Printed by gloo's C++ code as each process joins a collective group: not logging, so the
# processes cannot hold it back themselves.
_GLOO_CONNECTED = b'[Gloo] Rank '


def _relay_output(process_id: int, stream, verbose: bool) -> None:
  for line in iter(stream.readline, b''):
    if not verbose and line.startswith(_GLOO_CONNECTED):
      continue
    sys.stdout.buffer.write(f'[{process_id}] '.encode() + line)
    sys.stdout.buffer.flush()


def _wait_all(processes: list[subprocess.Popen], grace_seconds: float) -> int:
  """Waits for every process; after a failure, kills stragglers once `grace_seconds` are over.
  Returns the exit status of the first process seen failing, else 0."""
  first_failure, failed_at, reported = 0, None, set()
  while True:
    statuses = [p.poll() for p in processes]
    for process_id, status in enumerate(statuses):
      if status not in (None, 0) and process_id not in reported:
        reported.add(process_id)
        how = f'was killed by signal {-status}' if status < 0 else f'exited with status {status}'
        print(f'launch.local: process {process_id} {how}.', flush=True)
        if failed_at is None:
          first_failure, failed_at = _exit_status(status), time.monotonic()
    if None not in statuses:
      return first_failure
    if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
      for process_id, p in enumerate(processes):
        if p.poll() is None:
          print(f'launch.local: killing process {process_id}, still running '
                f'{grace_seconds:g} s after the first failure.', flush=True)
          p.kill()
    time.sleep(0.2)


def main(argv: list[str]) -> int:
  program_args = argv[1:]
  verbose = flags.FLAGS.verbose or '--verbose' in program_args
  if verbose and '--verbose' not in program_args:
    program_args.append('--verbose')
  # Survivors of a failure exit within about the heartbeat timeout (alexnet_jax/distributed.py);
  # half as long again is their margin before they are killed.
  grace_seconds = 1.5 * _heartbeat_timeout_seconds(program_args)
  coordinator_address = f'127.0.0.1:{_free_port()}'
  processes = []

  def forward(signum, frame):
    del frame
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  # Installed before any process starts; as they run in sessions of their own, a Ctrl-C in the
  # terminal then reaches each of them exactly once, through forward().
  for signum in _FORWARDED_SIGNALS:
    signal.signal(signum, forward)
  for process_id in range(_NUM_PROCESSES.value):
    command = [sys.executable, '-m', _MODULE.value, *program_args,
               f'--coordinator_address={coordinator_address}',
               f'--num_processes={_NUM_PROCESSES.value}', f'--process_id={process_id}']
    processes.append(subprocess.Popen(
        command, env=_process_env(process_id), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True))
  relays = [threading.Thread(target=_relay_output, args=(i, p.stdout, verbose), daemon=True)
            for i, p in enumerate(processes)]
  for relay in relays:
    relay.start()
  status = _wait_all(processes, grace_seconds)
  for relay in relays:
    relay.join(timeout=5)
  return status


if __name__ == '__main__':
  cli.run(main)
