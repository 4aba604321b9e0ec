"""The CPU train step with glibc's malloc as it comes against `runtime.keep_freed_memory`.

  python -m bench.host_memory                     # configs/fashion_mnist.py's model, batch 128
  python -m bench.host_memory --steps=100 --rounds=3

XLA:CPU allocates each execution's temporaries afresh; glibc maps the large blocks with `mmap` and
unmaps them when freed, so every step faults their pages in again (alexnet_jax/runtime.py). Each
round runs the project's train step (`bench.train_step.JaxStep`: `parallel.make_parallel` on one
device, a fixed batch of float32 images) in two fresh interpreters, one after the other: glibc's
defaults, then `runtime.keep_freed_memory()` before JAX starts. Both set the CPU convolution flag
that `runtime.configure` sets. Each child compiles, runs 5 untimed steps, then times --steps steps
and reports, per step, the wall time, the process's user and system CPU time and its minor page
faults (`resource.getrusage`). Prints one row per child, the medians per mode, and the last line
`keep/default images/s: X.XX`.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ('default', 'keep')


def _child(mode: str, steps: int) -> dict[str, float]:
  """Times `steps` train steps in this process, with malloc set as `mode` says."""
  from alexnet_jax import runtime  # pylint: disable=g-import-not-at-top  (before JAX, below)
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {runtime.CPU_CONVOLUTION_FLAG}'
  if mode == 'keep' and not runtime.keep_freed_memory():
    raise SystemExit('this C library has no mallopt: nothing to compare')
  from bench import train_step  # pylint: disable=g-import-not-at-top  (imports JAX)
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  config = fashion_mnist.get_config()
  config.dataset = 'synthetic'
  stepper = train_step.JaxStep(config, num_classes=config.num_classes)
  for _ in range(5):
    stepper.step()
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    stepper.step()
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {'images_per_second': steps * config.batch_size / wall,
          'wall_ms': 1e3 * wall / steps,
          'user_ms': 1e3 * (after.ru_utime - before.ru_utime) / steps,
          'system_ms': 1e3 * (after.ru_stime - before.ru_stime) / steps,
          'page_faults': (after.ru_minflt - before.ru_minflt) / steps}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=100, help='timed steps per child')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--child', choices=MODES, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_child(args.child, args.steps)))
    return

  rows = {mode: [] for mode in MODES}
  print(f'{"mode":8} {"images/s":>9} {"wall ms":>8} {"user ms":>8} {"system ms":>9} {"faults":>8}')
  for _ in range(args.rounds):
    for mode in MODES:
      result = subprocess.run([sys.executable, '-m', 'bench.host_memory', f'--child={mode}',
                               f'--steps={args.steps}'], capture_output=True, text=True, check=True,
                              env=dict(os.environ, JAX_PLATFORMS='cpu'))
      row = json.loads(result.stdout.strip().splitlines()[-1])
      rows[mode].append(row)
      print(f'{mode:8} {row["images_per_second"]:9.0f} {row["wall_ms"]:8.1f} {row["user_ms"]:8.1f} '
            f'{row["system_ms"]:9.1f} {row["page_faults"]:8.0f}', flush=True)
  medians = {mode: {key: statistics.median(r[key] for r in rows[mode]) for key in rows[mode][0]}
             for mode in MODES}
  for mode in MODES:
    m = medians[mode]
    print(f'median {mode}: {m["images_per_second"]:.0f} images/s, {m["wall_ms"]:.1f} ms wall, '
          f'{m["user_ms"]:.1f} ms user, {m["system_ms"]:.1f} ms system, {m["page_faults"]:.0f} '
          'page faults a step')
  ratio = medians['keep']['images_per_second'] / medians['default']['images_per_second']
  print(f'keep/default images/s: {ratio:.2f}')


if __name__ == '__main__':
  main()
