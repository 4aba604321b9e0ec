"""What normalizing on the device costs a train step: float32 inputs against uint8 pixels.

  python bench/step_inputs.py                     # paper model, fp32, batch 128, one device
  python bench/step_inputs.py --batch_size=32 --steps=10

The TFDS and folder pipelines deliver uint8 pixels and each image's lighting shift; the train step
turns them into (x + shift - mean) / std (alexnet_jax/pixels.py). This compiles the project's step
twice on one device, once for a float32 batch that is the network's input already (what the pipeline
delivered before) and once for a uint8 batch with its shifts, and times `--steps` steps of each,
interleaved. Prints the median wall time, CPU time (all threads) and minor page faults per step.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import optim  # pylint: disable=wrong-import-position  (sets XLA flags first)
from alexnet_jax import train  # pylint: disable=wrong-import-position
from configs import default  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=6)
  args = parser.parse_args()

  config = default.get_config()
  config.batch_size = args.batch_size
  model = train.create_model(config, config.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch=1000, total_steps=1000)
  parallel = train.make_parallel(config, model, tx, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  shape = (args.batch_size, config.image_size, config.image_size, 3)
  labels = rng.integers(0, config.num_classes, args.batch_size).astype(np.int32)
  batches = {
      'float32 inputs': {'image': rng.standard_normal(shape, np.float32), 'label': labels},
      'uint8 pixels': {'image': rng.integers(0, 256, shape).astype(np.uint8),
                       'rgb_shift': rng.normal(size=(args.batch_size, 3)).astype(np.float32),
                       'label': labels},
  }
  batches = {name: parallel.put_batch(batch) for name, batch in batches.items()}
  host_state = train.create_train_state(config, model, tx)
  states = {name: parallel.put_state(host_state) for name in batches}
  steps = {name: parallel.train_step.lower(states[name], batch).compile()
           for name, batch in batches.items()}

  def run(name: str) -> tuple[float, float, int]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    states[name], metrics = steps[name](states[name], batches[name])
    jax.block_until_ready(metrics['loss'])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu, after.ru_minflt - before.ru_minflt

  for name in batches:  # warm up
    run(name)
  samples = {name: [] for name in batches}
  for _ in range(args.steps):
    for name in batches:
      samples[name].append(run(name))
  print(f'{jax.default_backend()}, batch {args.batch_size}, {args.steps} interleaved steps each '
        '(medians):')
  for name, values in samples.items():
    wall, cpu, faults = np.median(np.array(values), axis=0)
    print(f'{name:15s} wall {wall:.3f} s   CPU {cpu:.3f} s   page faults {faults:.0f}')


if __name__ == '__main__':
  main()
