"""One full training step on the CPU, fed from a pixel store against fed from JPEGs.

  python -m bench.fed_step                 # paper model, batch 128, --num_images=512, 3 x 3 steps
  python -m bench.fed_step --width=0.25 --image_size=67 --resize_size=72

Writes the input benchmark's JPEGs (bench/input_pipeline.py: 500x375 and 375x500, quality 90) as a
folder dataset and a pixel store of them, then trains the project's step (`parallel.make_parallel`,
jit and shard_map over this machine's JAX devices, the state donated) from each source through the
data interface, as training does: `data.train_batches`, `put_batch`, `train_step`. From JPEGs the
host decodes a region around each crop and the step resizes the crop's window
(`pixels.resize_windows`); from the store the host copies each stored 256x256 square and the step
cuts the crop (`pixels.cut_crops`). Both pipelines make their batches ahead in their own threads,
on the same cores as the step, as in a CPU-only run. Rounds interleave the two; in each, the first
step of a source is not timed (its batch was made while the other source ran). Prints the median
wall time and process CPU time (all threads) per timed step.
"""

import argparse
import os
import resource
import tempfile
import time

import jax
import numpy as np

from alexnet_jax import data
from alexnet_jax import defaults
from alexnet_jax import optim
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import runtime
from alexnet_jax import steps
from bench import input_pipeline


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=512)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--image_size', type=int, default=227)
  parser.add_argument('--resize_size', type=int, default=256)
  parser.add_argument('--steps', type=int, default=3, help='timed steps per source and round')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  runtime.configure()  # the process settings training has, before JAX and TensorFlow start
  with tempfile.TemporaryDirectory() as tmp:
    os.environ['XDG_CACHE_HOME'] = os.path.join(tmp, 'cache')  # this run's decode check only
    folder, store_dir = os.path.join(tmp, 'jpegs'), os.path.join(tmp, 'store')
    input_pipeline.write_images(folder, args.num_images)
    configs = {}
    for name, dataset in (('JPEGs', f'folder:{folder}'), ('store', f'store:{store_dir}')):
      config = defaults.get_config()
      config.dataset, config.eval_split = dataset, 'train'
      config.batch_size, config.model.width = args.batch_size, args.width
      config.image_size, config.resize_size = args.image_size, args.resize_size
      configs[name] = config
    from alexnet_jax.data import store_writer  # pylint: disable=g-import-not-at-top  (TensorFlow)
    store_writer.write(configs['JPEGs'], store_dir, resize_size=args.resize_size, splits=('train',))

    config = configs['JPEGs']
    info = data.get_dataset_info(config)
    model = steps.create_model(config, info.num_classes)
    tx = optim.create_optimizer(config, steps_per_epoch=1000, total_steps=1000)
    parallel = parallel_lib.make_parallel(config, model, tx)
    state = parallel.put_state(steps.create_train_state(config, model, tx))
    batches = {name: data.train_batches(c, start_step=0, local_batch_size=args.batch_size,
                                        process_index=0, process_count=1)
               for name, c in configs.items()}

    def step(name: str) -> tuple[float, float]:
      nonlocal state
      wall, cpu = time.perf_counter(), _cpu_seconds()
      state, metrics = parallel.train_step(state, parallel.put_batch(next(batches[name])))
      jax.block_until_ready(metrics['loss'])
      return time.perf_counter() - wall, _cpu_seconds() - cpu

    for name in batches:  # compile
      step(name)
    samples = {name: [] for name in batches}
    for _ in range(args.rounds):
      for name in batches:
        step(name)  # its batch was made while the other source ran
        samples[name] += [step(name) for _ in range(args.steps)]
  print(f'{jax.default_backend()}, {jax.device_count()} device(s), width {args.width}, '
        f'{args.image_size}x{args.image_size} crops of {args.resize_size}, batch {args.batch_size}, '
        f'{args.rounds} x {args.steps} timed steps per source (medians)')
  for name, values in samples.items():
    wall, cpu = np.median(np.array(values), axis=0)
    print(f'fed from {name:6s} wall {wall:.3f} s   CPU {cpu:.3f} s per step')


if __name__ == '__main__':
  main()
