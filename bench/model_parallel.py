"""The paper's two-device split against plain data parallelism: ms per train step on the same devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bench.model_parallel [--width=0.25]

Compiles the project's train step twice over all devices, as n x 1 data parallel and as n/2 x 2
model parallel (`config.model_parallel=2`, alexnet_jax/towers.py), on configs/smoke.py's model
at --width and --image_size, and times them interleaved on a fixed batch already on the devices.
Results: docs/benchmarks.md.
"""

import argparse
import time

import jax
import ml_collections
import numpy as np

from alexnet_jax import model as alexnet
from alexnet_jax import optim
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import runtime
from alexnet_jax import steps as steps_lib
from alexnet_jax import towers
from configs import smoke


def benchmark(config: ml_collections.ConfigDict, steps: int, repeats: int) -> dict[str, list[float]]:
  """Seconds per train step of 8 x 1 data parallel and n/2 x 2 model parallel on all devices, one
  list per layout (one entry per repeat of `steps` steps, after compiling and one warm-up step). The
  batch is fixed and already on the devices, so only the step is timed."""
  model = steps_lib.create_model(config, config.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch=100, total_steps=steps * repeats + 1)
  host_state = steps_lib.create_train_state(config, model, tx)
  model_parallel = config.copy_and_resolve_references()
  model_parallel.model_parallel = 2
  rng = np.random.default_rng(0)
  host_batch = {'image': rng.normal(size=(config.batch_size, config.image_size, config.image_size, 3)
                                    ).astype(np.float32),
                'label': rng.integers(0, config.num_classes, config.batch_size).astype(np.int32)}
  pairs = jax.device_count() // towers.TOWERS
  layouts = {f'data parallel {jax.device_count()}x1': parallel_lib.make_parallel(config, model, tx),
             f'model parallel {pairs}x{towers.TOWERS}': parallel_lib.make_parallel(model_parallel,
                                                                                  model, tx)}
  states = {name: parallel.put_state(host_state) for name, parallel in layouts.items()}
  batches = {name: parallel.put_batch(host_batch) for name, parallel in layouts.items()}
  for name, parallel in layouts.items():
    states[name], _ = parallel.train_step(states[name], batches[name])  # compile and warm up
    jax.block_until_ready(states[name])
  times = {name: [] for name in layouts}
  for _ in range(repeats):  # interleaved, so a busy spell on the machine hits both layouts
    for name, parallel in layouts.items():
      start = time.perf_counter()
      for _ in range(steps):
        states[name], _ = parallel.train_step(states[name], batches[name])
      jax.block_until_ready(states[name])
      times[name].append((time.perf_counter() - start) / steps)
  return times


def main() -> None:
  runtime.configure()  # the CPU XLA flag training uses, before JAX starts
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--width', type=float, default=0.25, help='config.model.width')
  parser.add_argument('--image_size', type=int, default=67, help='config.image_size')
  parser.add_argument('--batch_size', type=int, default=64, help='global batch')
  parser.add_argument('--dtype', default='float32', choices=alexnet.DTYPES, help='config.model.dtype')
  parser.add_argument('--steps', type=int, default=10, help='steps per timed repeat')
  parser.add_argument('--repeats', type=int, default=5, help='timed repeats per layout')
  args = parser.parse_args()
  if jax.device_count() % towers.TOWERS:
    raise SystemExit(f'{jax.device_count()} devices: the model-parallel layout needs an even number. On '
                     f'CPU run with XLA_FLAGS=--xla_force_host_platform_device_count=8.')
  config = smoke.get_config()
  config.model.width, config.model.dtype = args.width, args.dtype
  config.image_size = config.resize_size = args.image_size
  config.batch_size = args.batch_size
  times = benchmark(config, args.steps, args.repeats)
  print(f'{jax.device_count()} {jax.devices()[0].platform} devices, width {args.width}, '
        f'{args.image_size}x{args.image_size} images, batch {args.batch_size}, {args.dtype}: '
        f'ms per train step over {args.repeats} x {args.steps} steps')
  for name, seconds in times.items():
    print(f'  {name:24s} median {1e3 * np.median(seconds):8.1f}   min {1e3 * np.min(seconds):8.1f}')


if __name__ == '__main__':
  main()
