"""Joining a multi-process run: `jax.distributed.initialize` and the shared-workdir check.

Three ways a process learns who its peers are, tried in this order:

1. Explicit settings, for any launcher (launch/local.py passes them to main.py as flags):
     --coordinator_address=HOST:PORT --num_processes=N --process_id=I
2. The cluster environment JAX detects by itself: a SLURM job step started with `srun`
   (launch/slurm/train.sbatch) or an Open MPI `mpirun`. JAX reads SLURM_STEP_NODELIST, which
   exists only inside a job step, so the batch script must start the processes with srun.
3. Neither: one process, no distributed runtime.

Failure detection. Every process sends heartbeats to the coordination service run by process 0.
A process silent for `heartbeat_timeout_seconds` (main.py's --heartbeat_timeout_seconds, default 60) is declared dead and every other
process is terminated with an error. A collective that loses its peer fails at once; the survivors
then exit within the same heartbeat timeout (measured: dead peer at t=0, survivor gone at about
t=60 s). So a dead peer never leaves the job hanging for longer than about a minute; rerunning the
job resumes from the last checkpoint. A process that finishes normally waits at most
SHUTDOWN_TIMEOUT_SECONDS at exit for the others to finish too.
"""

import os
import secrets
import socket

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax import errors

DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 60
INITIALIZATION_TIMEOUT_SECONDS = 300  # peers that do not show up by then: error
SHUTDOWN_TIMEOUT_SECONDS = 120  # at exit, wait this long for the others to finish too

_WORKDIR_TOKEN_FILE = '.shared_workdir_check'


class ClusterError(errors.InputError, RuntimeError):
  """This process cannot join its run as it was started."""


def _detected_cluster() -> str | None:
  """Names the multi-process launcher this process runs under, if JAX can detect it."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    if 'SLURM_STEP_NODELIST' not in os.environ:
      raise ClusterError(
          f'This process runs inside a SLURM allocation of {os.environ["SLURM_NTASKS"]} tasks but '
          'outside a job step, so it cannot find its peers. Start the processes with srun (see '
          'launch/slurm/train.sbatch), or pass --num_processes=1 to train in this process alone.')
    return 'slurm'
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'ompi'
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS) -> None:
  """Joins the multi-process run this process belongs to, if any.

  Call before anything touches JAX devices. Takes the three explicit settings (main.py's flags
  --coordinator_address, --num_processes, --process_id; all or none); without them, joins the
  cluster JAX detects (SLURM job step, Open MPI); else leaves JAX single-process.
  `num_processes=1` forces a single-process run.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if num_processes == 1:
    logging.info('--num_processes=1: single-process run.')
    return
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise errors.InvalidError(
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
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=INITIALIZATION_TIMEOUT_SECONDS,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds,
      shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS)
  logging.info('Joined a run of %d processes as process %d (via %s) on %s.',
               jax.process_count(), jax.process_index(), cluster, socket.gethostname())


class WorkdirNotSharedError(errors.InputError, RuntimeError):
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
        '(NFS, Lustre, a bucket mounted with gcsfuse, ...); a host-local path makes multi-host '
        'checkpointing hang.')
  logging.info('All %d processes share workdir %s.', jax.process_count(), workdir)
