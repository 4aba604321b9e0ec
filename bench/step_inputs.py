"""What resizing, flipping and normalizing on the device cost a train step: float32 inputs against
uint8 pixels and against uint8 regions to resize the crops from.

  python -m bench.step_inputs                     # paper model, fp32, batch 128, one device
  python -m bench.step_inputs --batch_size=32 --steps=10

The TFDS and folder pipelines deliver uint8 pixels, each image's flip bit and its lighting shift; the
train step mirrors the marked images and computes (x + shift - mean) / std (alexnet_jax/data/pixels.py).
By default the pixels are 336x336 regions of the source images and the step first resizes each
crop's window in them to 227x227 (`pixels.resize_windows`). This compiles the project's step three
times on one device (`train_step.JaxStep`): for a float32 batch that is the network's input already (what
the pipeline delivered first), for a uint8 batch of crops with their flips and shifts (crops
resized on the host, `device_resize_scale=0`), and for a uint8 batch of regions; and times `--steps`
steps of each, interleaved. Prints the median wall time, CPU time (all threads) and minor page
faults per step.
"""

import argparse
import resource
import time

import jax
import numpy as np

from alexnet_jax import defaults
from alexnet_jax import runtime
from bench import train_step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=6)
  args = parser.parse_args()

  runtime.configure()  # the CPU XLA flag training uses, before JAX starts
  config = defaults.get_config()
  config.batch_size = args.batch_size
  steps = {'float32 inputs': train_step.JaxStep(config, config.num_classes),
           'uint8 crops': train_step.JaxStep(config, config.num_classes, inputs='uint8'),
           'uint8 regions': train_step.JaxStep(config, config.num_classes, inputs='regions')}

  def run(step: train_step.JaxStep) -> tuple[float, float, int]:
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
