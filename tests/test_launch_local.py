"""launch/local.py with a probe module in place of alexnet_jax.main: signals and exit statuses."""

import os
import signal
import subprocess
import sys
import time

import pytest

from test_distributed import REPO

pytestmark = pytest.mark.slow

# Process 1 dies at once if --die is given (with that status, or SIGKILL); otherwise each process
# counts the SIGINTs it gets from the first one on (or for --wait seconds) and reports them.
_PROBE = '''
import os, signal, sys, time

flags = dict(arg.split('=', 1) for arg in sys.argv[1:] if '=' in arg)
if flags['--process_id'] == '1' and '--die' in flags:
  if flags['--die'] == 'SIGKILL':
    os.kill(os.getpid(), signal.SIGKILL)
  sys.exit(int(flags['--die']))
received = []
signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
print(f'ready in process group {os.getpgid(0)}', flush=True)
deadline = time.monotonic() + float(flags.get('--wait', 60))
while not received and time.monotonic() < deadline:
  time.sleep(0.05)
time.sleep(1)  # time for a second SIGINT, if one is coming
print(f'SIGINT received {len(received)} time(s)', flush=True)
'''


def _launch(tmp_path, *probe_args: str, **popen_args) -> subprocess.Popen:
  (tmp_path / 'probe.py').write_text(_PROBE)
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
  return subprocess.Popen(
      [sys.executable, '-m', 'launch.local', '--num_processes=2', '--module=probe', '--',
       *probe_args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, **popen_args)


def test_ctrl_c_reaches_each_process_once(tmp_path):
  # A session of its own, so that signalling its process group is what a terminal's Ctrl-C does.
  launcher = _launch(tmp_path, start_new_session=True)
  try:
    groups = []
    while len(groups) < 2:
      line = launcher.stdout.readline()
      assert line, 'launch.local ended before its processes were ready'
      if 'ready in process group' in line:
        groups.append(int(line.split()[-1]))
    # Before, the processes shared the launcher's group: a Ctrl-C reached them from the terminal
    # and again from the launcher (the two are merged only when the second comes before the
    # first is handled), and a second SIGINT cuts short the checkpoint write the first waits for.
    assert launcher.pid not in groups
    os.killpg(launcher.pid, signal.SIGINT)
    output = launcher.communicate(timeout=60)[0]
  finally:
    launcher.kill()
  assert output.count('SIGINT received 1 time(s)') == 2, output


def test_a_process_killed_by_a_signal_gives_128_plus_its_number(tmp_path):
  launcher = _launch(tmp_path, '--die=SIGKILL', '--wait=0')
  output = launcher.communicate(timeout=60)[0]
  assert 'process 1 was killed by signal 9' in output, output
  assert launcher.returncode == 128 + signal.SIGKILL  # was 247: sys.exit(-9)


def test_survivors_are_killed_after_the_heartbeat_timeout_the_run_was_given(tmp_path):
  start = time.monotonic()
  launcher = _launch(tmp_path, '--die=3', '--heartbeat_timeout_seconds=2')
  output = launcher.communicate(timeout=60)[0]
  # 1.5 x 2 s; the default 60 s timeout would give the survivor 90 s.
  assert 'killing process 0, still running 3 s after the first failure' in output, output
  assert launcher.returncode == 3
  assert time.monotonic() - start < 30
