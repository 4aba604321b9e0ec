"""Joining a multi-process run: `jax.distributed.initialize` and the shared-workdir check.

Three ways a process learns who its peers are, tried in this order:

1. Explicit flags, for any launcher (launch/local.py passes them):
     --coordinator_address=HOST:PORT --num_processes=N --process_id=I
2. The cluster environment JAX detects by itself: a SLURM job step started with `srun`
   (launch/slurm/train.sbatch) or an Open MPI `mpirun`. JAX reads SLURM_STEP_NODELIST, which
   exists only inside a job step, so the batch script must start the processes with srun.
3. Neither: one process, no distributed runtime.

Failure detection. Every process sends heartbeats to the coordination service run by process 0.
A process silent for --heartbeat_timeout_seconds (default 60) is declared dead and every other
process is terminated with an error. A collective that loses its peer fails at once; the survivors
then exit within the same heartbeat timeout (measured: dead peer at t=0, survivor gone at about
t=60 s). So a dead peer never leaves the job hanging for longer than about a minute; rerunning the
job resumes from the last checkpoint. A process that finishes normally waits at most
SHUTDOWN_TIMEOUT_SECONDS at exit for the others to finish too.
"""

import os
import secrets
import socket

from absl import flags
from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None,
    'HOST:PORT of process 0, reachable from every process. Set together with --num_processes '
    'and --process_id; leave all three unset under SLURM (srun) or mpirun.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in the run (1 forces a single-process run).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
_HEARTBEAT_TIMEOUT_SECONDS = flags.DEFINE_integer(
    'heartbeat_timeout_seconds', 60,
    'A process silent for this long is declared dead and all others exit with an error.',
    lower_bound=1)

INITIALIZATION_TIMEOUT_SECONDS = 300  # peers that do not show up by then: error
SHUTDOWN_TIMEOUT_SECONDS = 120  # at exit, wait this long for the others to finish too

_WORKDIR_TOKEN_FILE = '.shared_workdir_check'


def _detected_cluster() -> str | None:
  """Names the multi-process launcher this process runs under, if JAX can detect it."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    if 'SLURM_STEP_NODELIST' not in os.environ:
      raise RuntimeError(
          f'This process runs inside a SLURM allocation of {os.environ["SLURM_NTASKS"]} tasks but '
          'outside a job step, so it cannot find its peers. Start the processes with srun (see '
          'launch/slurm/train.sbatch), or pass --num_processes=1 to train in this process alone.')
    return 'slurm'
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'ompi'
  return None


def initialize() -> None:
  """Joins the multi-process run this process belongs to, if any.

  Call before anything touches JAX devices. Reads --coordinator_address, --num_processes and
  --process_id; without them, joins the cluster JAX detects (SLURM job step, Open MPI); else
  leaves JAX single-process.
  """
  explicit = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _NUM_PROCESSES.value == 1:
    logging.info('--num_processes=1: single-process run.')
    return
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ValueError(
          'Set all of --coordinator_address, --num_processes and --process_id, or none of them '
          f'(got {explicit}). launch/local.py sets them for processes on one machine.')
    cluster = 'flags'
  else:
    cluster = _detected_cluster()
    if cluster is None:
      logging.info('No multi-process environment found: single-process run.')
      return

  # Cross-process collectives on CPU devices go through gloo (TCP); GPUs use NCCL regardless.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=_COORDINATOR_ADDRESS.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      initialization_timeout=INITIALIZATION_TIMEOUT_SECONDS,
      heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT_SECONDS.value,
      shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS)
  logging.info('Joined a run of %d processes as process %d (via %s) on %s.',
               jax.process_count(), jax.process_index(), cluster, socket.gethostname())


class WorkdirNotSharedError(RuntimeError):
  """The workdir is not one directory seen by every process."""


def check_shared_workdir(workdir: str) -> None:
  """Raises on every process unless all processes see the same `workdir`.

  Process 0 writes a fresh random token into the workdir; every process reads it back. A
  host-local path would make multi-host Orbax checkpointing hang, so it is caught here first.
  """
  if jax.process_count() == 1:
    return
  token_file = epath.Path(workdir) / _WORKDIR_TOKEN_FILE
  # The expected token reaches every process over the network, not through the filesystem.
  token = multihost_utils.broadcast_one_to_all(
      np.array(secrets.randbits(31), np.int32), is_source=jax.process_index() == 0)
  token = str(int(token))
  if jax.process_index() == 0:
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(token)
  multihost_utils.sync_global_devices('workdir token written')
  try:
    sees_token = token_file.read_text() == token
  except OSError:
    sees_token = False
  all_see_token = multihost_utils.process_allgather(np.array(sees_token))
  multihost_utils.sync_global_devices('workdir token read')
  if jax.process_index() == 0:
    token_file.unlink()
  if not all_see_token.all():
    blind = [int(i) for i in np.flatnonzero(~all_see_token)]
    raise WorkdirNotSharedError(
        f'--workdir={workdir} is not the same directory on every process: processes {blind} do '
        'not see the file process 0 wrote there. Put the workdir on storage all hosts share '
        '(NFS, Lustre, GCS, ...); a host-local path makes multi-host checkpointing hang.')
  logging.info('All %d processes share workdir %s.', jax.process_count(), workdir)
