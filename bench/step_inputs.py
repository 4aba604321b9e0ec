"""What resizing, flipping and normalizing on the device cost a train step: float32 inputs against
uint8 pixels and against uint8 regions to resize the crops from.

  python bench/step_inputs.py                     # paper model, fp32, batch 128, one device
  python bench/step_inputs.py --batch_size=32 --steps=10

The TFDS and folder pipelines deliver uint8 pixels, each image's flip bit and its lighting shift; the
train step mirrors the marked images and computes (x + shift - mean) / std (alexnet_jax/pixels.py).
By default the pixels are 336x336 regions of the source images and the step first resizes each
crop's window in them to 227x227 (`pixels.resize_windows`). This compiles the project's step three
times on one device (`bench.JaxStep`): for a float32 batch that is the network's input already (what
the pipeline delivered first), for a uint8 batch of crops with their flips and shifts (crops
resized on the host, `device_resize_scale=0`), and for a uint8 batch of regions; and times `--steps`
steps of each, interleaved. Prints the median wall time, CPU time (all threads) and minor page
faults per step.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import bench  # pylint: disable=wrong-import-position  (sets XLA flags first)
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
  steps = {'float32 inputs': bench.JaxStep(config, config.num_classes),
           'uint8 crops': bench.JaxStep(config, config.num_classes, inputs='uint8'),
           'uint8 regions': bench.JaxStep(config, config.num_classes, inputs='regions')}

  def run(step: bench.JaxStep) -> tuple[float, float, int]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step.step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu, after.ru_minflt - before.ru_minflt

  for step in steps.values():  # warm up
    run(step)
  samples = {name: [] for name in steps}
  for _ in range(args.steps):
    for name, step in steps.items():
      samples[name].append(run(step))
  print(f'{jax.default_backend()}, batch {args.batch_size}, {args.steps} interleaved steps each '
        '(medians):')
  for name, values in samples.items():
    wall, cpu, faults = np.median(np.array(values), axis=0)
    print(f'{name:15s} wall {wall:.3f} s   CPU {cpu:.3f} s   page faults {faults:.0f}')


if __name__ == '__main__':
  main()
