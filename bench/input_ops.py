"""Single TensorFlow ops of the input pipeline, timed alone: ms of CPU per call, one thread.

  python -m bench.input_ops [--calls=300]

Each op runs `--calls` times inside one `tf.function` loop (so Python is out of the measure), on a
random uint8 image; the median of three loops is printed. The rows behind two choices in
alexnet_jax/data/decode.py (docs/benchmarks.md, "Input pipeline"):
  * `_resize` resizes a float32 copy of the crop window: TensorFlow's bilinear kernel is faster on
    float32 than on uint8 input, by more than the cast costs;
  * the 10-crop evaluation mirrored its five crops with `tf.reverse`, not the strided slice
    `crops[:, :, ::-1]` (it now mirrors them on the device, `pixels.with_mirrors`).
"""

import argparse
import time

import numpy as np
import tensorflow as tf

RESIZED = [227, 227]
OPS = {
    # A 332x332 window is what a random 227 crop of a 500x375 image resized to 256 covers.
    'resize 332x332 window, uint8 input, round': (
        (332, 332, 3), lambda x: tf.cast(tf.round(tf.image.resize(x, RESIZED)), tf.uint8)),
    'resize 332x332 window, float32 copy, round': (
        (332, 332, 3),
        lambda x: tf.cast(tf.round(tf.image.resize(tf.cast(x, tf.float32), RESIZED)), tf.uint8)),
    'mirror 5 crops, strided slice [:, :, ::-1]': ((5, 227, 227, 3), lambda x: x[:, :, ::-1]),
    'mirror 5 crops, tf.reverse': ((5, 227, 227, 3), lambda x: tf.reverse(x, axis=[2])),
}


def ms_per_call(shape: tuple[int, ...], op, calls: int) -> float:
  image = tf.constant(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))

  @tf.function
  def loop(x):
    total = tf.constant(0, tf.int64)
    for i in tf.range(calls):
      y = op(x + tf.cast(i % 2, tf.uint8))  # a fresh input each call: nothing is hoisted
      total += tf.cast(tf.reshape(y, [-1])[0], tf.int64)
    return total

  loop(image)  # trace and warm up
  times = []
  for _ in range(3):
    start = time.process_time()
    loop(image)
    times.append((time.process_time() - start) / calls * 1e3)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--calls', type=int, default=300)
  args = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  print(f'TensorFlow {tf.__version__}, one thread, ms of CPU per call (median of 3 x {args.calls})')
  for name, (shape, op) in OPS.items():
    print(f'{name:45s} {ms_per_call(shape, op, args.calls):8.3f}')


if __name__ == '__main__':
  main()
