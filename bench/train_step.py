"""Train-step benchmark: compile time, ms/step, images/s, peak memory and MFU, optionally against PyTorch.

  python -m bench.train_step                                  # fp32 and bf16, batch 128 on GPU / 32 on CPU
  python -m bench.train_step --batch_sizes=128,256,512        # a sweep
  python -m bench.train_step --dtypes=float32 --compare-torch # + the same network in PyTorch (CPU)

Run from the repository root (bench/ is not part of the installed package). What is timed is the
project's own step: `steps.train_step` wrapped by `parallel.make_parallel` (jit +
shard_map over one device, the state buffers donated), on the paper model of the default config with
SGD + momentum + weight decay and a random synthetic batch already on the device. Compile time is
`lower(...).compile()`; steps run the compiled executable. Peak memory is the device allocator's
high-water mark of the process so far where the device reports one (GPU: rows run in order, so a row
after a bigger one shows that one's peak; the JSON also has XLA's own estimate for the step,
arguments + outputs + temporaries), else that XLA estimate (CPU).

MFU (model FLOP utilization) = analytic training FLOPs per image x images/s / peak matmul FLOP/s. FLOPs
per image count only convolutions and dense layers: 2 x multiply-adds of the forward pass (a grouped
convolution counts its groups' work only: kh*kw*C_in/groups*C_out per output pixel), times 3 for forward
+ backward (the two backward products, dX and dW, each cost the forward's; conv1's dX, which no step
computes, is counted too, by convention). That is 4.35 GFLOP per 227x227 image for the paper model.
Peak is measured in the same process: the best of several runs of a big jitted matmul in the
benchmark's dtype.

With --compare-torch, `bench.torch_alexnet.PaperAlexNet` (channels_last, torch.optim.SGD with momentum and
weight decay, cross-entropy) runs on the CPU with `torch.set_num_threads(--torch_threads)`, interleaved
with the JAX steps round by round so both see the same machine load. The last line printed is
`jax/torch speed ratio: X.XX` (float32 images/s of JAX over PyTorch's, at the first batch size).
Timings are medians over all timed steps; the p10-p90 spread shows the noise.
"""

import argparse
from collections.abc import Callable
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import defaults
from alexnet_jax import optim
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import runtime
from alexnet_jax import steps

DTYPES = ('float32', 'bfloat16')


def default_batch_size() -> int:
  return 32 if jax.default_backend() == 'cpu' else 128


def bench_config(batch_size: int, dtype: str, width: float, image_size: int) -> ml_collections.ConfigDict:
  """The default config (the paper model) on synthetic data, one device."""
  config = defaults.get_config()
  config.dataset = 'synthetic'
  config.batch_size = batch_size
  config.image_size = image_size
  config.model.dtype = dtype
  config.model.width = width
  return config


def train_flops_per_image(model: Any, image_size: int) -> float:
  """Analytic training FLOPs per image, conv and dense layers only (see module docstring)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

  def shapes(images):
    variables = model.init(jax.random.PRNGKey(0), images)
    _, state = model.apply(variables, images, capture_intermediates=True)
    return variables['params'], state['intermediates']

  params, outputs = jax.eval_shape(shapes, images)
  macs = 0
  for name, layer in params.items():
    kernel = layer['kernel'].shape
    out = outputs[name]['__call__'][0].shape
    # Conv kernel [kh, kw, C_in/groups, C_out]: that many MACs per output pixel. Dense: [in, out].
    pixels = int(np.prod(out[1:-1])) if len(kernel) == 4 else 1
    macs += pixels * int(np.prod(kernel))
  return 3 * 2 * macs


def peak_matmul_flops(dtype: str, size: int, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` runs of a jitted [size, size] @ [size, size] matmul."""
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = jax.random.normal(key_b, (size, size), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = min(_seconds(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class JaxStep:
  """The project's train step, compiled for one device, stepping on a fixed synthetic batch.

  The batch holds `inputs`: 'float32' images, the network's input as it is; 'uint8' pixels, flips
  and lighting shifts instead, as the TFDS and folder pipelines deliver crops resized on the host
  (applied and normalized in the step); or 'regions': uint8 regions with windows of 70-100% of
  their side, from which the step resizes the crops, as the pipelines deliver them by default.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int = 1000,
               inputs: str = 'float32'):
    self.model = steps.create_model(config, num_classes)
    tx = optim.create_optimizer(config, steps_per_epoch=1000, total_steps=1000)
    parallel = parallel_lib.make_parallel(config, self.model, tx, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch_size, size = config.batch_size, config.image_size
    if inputs == 'float32':
      host_batch = {'image': rng.standard_normal((batch_size, size, size, 3), np.float32)}
    elif inputs == 'uint8':
      host_batch = {'image': rng.integers(0, 256, (batch_size, size, size, 3), np.uint8)}
    elif inputs == 'regions':
      from alexnet_jax.data import geometry  # pylint: disable=g-import-not-at-top  (TensorFlow)
      side = geometry.device_region_size(config)
      window = rng.integers(int(0.7 * side), side + 1, batch_size)
      corner = rng.integers(0, side - window[:, None] + 1, (batch_size, 2))
      host_batch = {'image': rng.integers(0, 256, (batch_size, side, side, 3), np.uint8),
                    'window': np.concatenate([corner, window[:, None]], 1).astype(np.int32)}
    else:
      raise ValueError(f'inputs={inputs!r}: use float32, uint8 or regions')
    if inputs != 'float32':
      host_batch['flip'] = rng.integers(0, 2, batch_size).astype(bool)
      host_batch['rgb_shift'] = rng.normal(size=(batch_size, 3)).astype(np.float32)
    host_batch['label'] = rng.integers(0, num_classes, config.batch_size).astype(np.int32)
    self.batch = parallel.put_batch(host_batch)
    self.state = parallel.put_state(steps.create_train_state(config, self.model, tx))
    start = time.perf_counter()
    self.compiled = parallel.train_step.lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self._memory_analysis = self.compiled.memory_analysis()

  def step(self) -> None:
    self.state, step_metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(step_metrics['loss'])

  def xla_memory_estimate(self) -> float | None:
    """GiB the compiled step needs by XLA's own accounting: arguments + outputs + temporaries."""
    analysis = self._memory_analysis
    if analysis is None:
      return None
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes) / 2**30

  def peak_memory(self) -> tuple[float | None, str]:
    """(GiB, source): the device allocator's high-water mark of this process so far, where the
    device reports one (GPU); else XLA's estimate (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if stats and 'peak_bytes_in_use' in stats:
      return stats['peak_bytes_in_use'] / 2**30, 'device peak'
    return self.xla_memory_estimate(), 'XLA estimate'


class TorchStep:
  """`bench.torch_alexnet.PaperAlexNet` on the CPU: the same step, in PyTorch."""

  def __init__(self, batch_size: int, width: float, image_size: int, threads: int,
               num_classes: int = 1000):
    import torch  # pylint: disable=import-outside-toplevel
    from bench import torch_alexnet  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    self.module = torch_alexnet.PaperAlexNet(num_classes, width=width, image_size=image_size)
    self.module = self.module.to(memory_format=torch.channels_last).train()
    self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, 3, image_size, image_size), np.float32)
    self.images = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
    self.labels = torch.from_numpy(rng.integers(0, num_classes, batch_size))

  def step(self) -> None:
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.torch.nn.functional.cross_entropy(self.module(self.images), self.labels)
    loss.backward()
    self.optimizer.step()


def time_interleaved(steppers: dict[str, Callable[[], None]], rounds: int, steps: int,
                     warmup: int = 2, progress: Callable[[int], None] = lambda done: None
                     ) -> dict[str, list[float]]:
  """Seconds per step of each stepper; each round runs `steps` of each, one after the other.
  `progress(rounds_done)` is called after the warmup (0) and after each round."""
  for step in steppers.values():
    for _ in range(warmup):
      step()
  progress(0)
  times = {name: [] for name in steppers}
  for done in range(1, rounds + 1):
    for name, step in steppers.items():
      times[name].extend(_seconds(step) for _ in range(steps))
    progress(done)
  return times


class Progress:
  """Lines on stderr (stdout is the table) saying where a run is and about how long is left: on 2
  CPU cores the full-size model with --compare-torch runs for minutes. What is left is estimated
  from the rounds timed so far, each later row taken to cost what the rows so far did."""

  def __init__(self, rows: int, rounds: int):
    self.rows, self.rounds, self.row = rows, rounds, 0
    self.started = self.timing_started = time.monotonic()

  def start_row(self, what: str) -> None:
    self.row += 1
    print(f'[{self.row}/{self.rows}] {what}: compiling and warming up', file=sys.stderr, flush=True)

  def __call__(self, rounds_done: int) -> None:
    if rounds_done == 0:
      self.timing_started = time.monotonic()
      return
    now = time.monotonic()
    row_left = (now - self.timing_started) / rounds_done * (self.rounds - rounds_done)
    rows_so_far = now - self.started + row_left  # this one up to its end
    later_rows = rows_so_far / self.row * (self.rows - self.row)
    print(f'[{self.row}/{self.rows}] round {rounds_done}/{self.rounds} timed, '
          f'{_duration(now - self.started)} so far, about {_duration(row_left + later_rows)} left',
          file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 60}:{seconds % 60:02d}'


def summarize(seconds: list[float], batch_size: int, flops_per_image: float,
              peak_flops: float | None) -> dict[str, float | None]:
  median = float(np.median(seconds))
  images_per_second = batch_size / median
  return {
      'ms_per_step': 1e3 * median,
      'ms_p10': 1e3 * float(np.percentile(seconds, 10)),
      'ms_p90': 1e3 * float(np.percentile(seconds, 90)),
      'images_per_sec': images_per_second,
      'mfu': flops_per_image * images_per_second / peak_flops if peak_flops else None,
      'timed_steps': len(seconds),
  }


def machine_description() -> dict[str, Any]:
  device = jax.devices()[0]
  info = {'backend': jax.default_backend(), 'device': device.device_kind,
          'cpu': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
          'jax': jax.__version__}
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    info['cpu'] = names[0] if names else info['cpu']
  except OSError:
    pass
  return info


def _cell(value: float | None, spec: str, width: int) -> str:
  return format('-' if value is None else format(value, spec), f'>{width}')


def _format_row(row: dict[str, Any]) -> str:
  return (f"{row['framework']:<6} {row['dtype']:<9} {row['batch_size']:>5} "
          f"{_cell(row.get('compile_s'), '.1f', 10)} {row['ms_per_step']:9.1f} "
          f"{row['ms_p10']:7.0f}-{row['ms_p90']:<7.0f} {row['images_per_sec']:9.1f} "
          f"{_cell(row.get('peak_mem_gib'), '.2f', 9)} {_cell(row.get('mfu'), '.1%', 6)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
  batch_sizes = args.batch_sizes or [default_batch_size()]
  machine = machine_description()
  if args.compare_torch:
    if jax.default_backend() != 'cpu':
      raise ValueError('--compare-torch times PyTorch on the CPU against JAX on the same CPU; run it '
                       'with JAX_PLATFORMS=cpu, or drop --compare-torch on an accelerator.')
    import torch  # pylint: disable=import-outside-toplevel
    machine['torch'] = torch.__version__
    machine['torch_threads'] = args.torch_threads
  print('machine: ' + ', '.join(f'{k}={v}' for k, v in machine.items()), flush=True)

  matmul_size = args.matmul_size or (2048 if jax.default_backend() == 'cpu' else 8192)
  peaks = {dtype: peak_matmul_flops(dtype, matmul_size) for dtype in args.dtypes}
  for dtype, peak in peaks.items():
    print(f'peak matmul ({matmul_size}x{matmul_size}, {dtype}): {peak / 1e9:.1f} GFLOP/s', flush=True)

  rows, ratios = [], {}
  progress = Progress(len(batch_sizes) * len(args.dtypes), args.rounds)
  header = ('framework dtype   batch  compile_s   ms/step  p10-p90 ms  images/s  peak_GiB    MFU')
  print(header, flush=True)
  for batch_size in batch_sizes:
    for dtype in args.dtypes:
      progress.start_row(f'batch {batch_size}, {dtype}'
                         + (' (and torch)' if args.compare_torch and dtype == 'float32' else ''))
      config = bench_config(batch_size, dtype, args.width, args.image_size)
      jax_step = JaxStep(config)
      flops = train_flops_per_image(jax_step.model, args.image_size)
      steppers = {'jax': jax_step.step}
      torch_step = None
      if args.compare_torch and dtype == 'float32':
        torch_step = TorchStep(batch_size, args.width, args.image_size, args.torch_threads)
        steppers['torch'] = torch_step.step
      times = time_interleaved(steppers, args.rounds, args.steps, progress=progress)
      memory, memory_source = jax_step.peak_memory()
      row = {'framework': 'jax', 'dtype': dtype, 'batch_size': batch_size,
             'compile_s': jax_step.compile_seconds, 'peak_mem_gib': memory,
             'peak_mem_source': memory_source, 'xla_mem_estimate_gib': jax_step.xla_memory_estimate(),
             'train_gflop_per_image': flops / 1e9,
             **summarize(times['jax'], batch_size, flops, peaks[dtype])}
      rows.append(row)
      print(_format_row(row), flush=True)
      if torch_step is not None:
        torch_row = {'framework': 'torch', 'dtype': dtype, 'batch_size': batch_size,
                     'train_gflop_per_image': flops / 1e9,
                     **summarize(times['torch'], batch_size, flops, peaks[dtype])}
        rows.append(torch_row)
        print(_format_row(torch_row), flush=True)
        ratios[batch_size] = row['images_per_sec'] / torch_row['images_per_sec']
      del jax_step, torch_step

  result = {'machine': machine, 'peak_matmul_flops': peaks, 'matmul_size': matmul_size,
            'rounds': args.rounds, 'steps_per_round': args.steps, 'width': args.width,
            'image_size': args.image_size, 'rows': rows,
            'jax_over_torch': {str(b): r for b, r in ratios.items()}}
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(result, f, indent=2)
  if ratios:
    for batch_size, ratio in list(ratios.items())[1:]:
      print(f'jax/torch speed ratio at batch {batch_size}: {ratio:.2f}')
    print(f'jax/torch speed ratio: {ratios[batch_sizes[0]]:.2f}', flush=True)
  return result


def _comma_ints(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(',') if v]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f'expected positive integers separated by commas, e.g. 128,256; got {text!r}')
  return values


def _comma_dtypes(text: str) -> list[str]:
  values = [v for v in text.split(',') if v]
  unknown = [v for v in values if v not in DTYPES]
  if unknown or not values:
    raise argparse.ArgumentTypeError(f'unknown dtype(s) {unknown or text!r}; use {",".join(DTYPES)}')
  return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_sizes', type=_comma_ints, default=None,
                      help='comma-separated batch sizes (default: 128 on GPU/TPU, 32 on CPU)')
  parser.add_argument('--dtypes', type=_comma_dtypes, default=list(DTYPES),
                      help='compute dtypes, comma-separated (default: float32,bfloat16)')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per round and framework')
  parser.add_argument('--rounds', type=int, default=3, help='rounds of interleaved timing')
  parser.add_argument('--compare-torch', dest='compare_torch', action='store_true',
                      help='also time bench.torch_alexnet.PaperAlexNet on the CPU (needs torch)')
  parser.add_argument('--torch_threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--width', type=float, default=1.0, help='model width multiplier (1.0 = the paper)')
  parser.add_argument('--image_size', type=int, default=227, help='image height and width')
  parser.add_argument('--matmul_size', type=int, default=None,
                      help='side of the peak-FLOP/s matmul (default: 2048 on CPU, 8192 elsewhere)')
  parser.add_argument('--json_out', default=None, help='also write the results to this JSON file')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.rounds < 1:
    parser.error(f'--steps and --rounds must be >= 1; got {args.steps} and {args.rounds}')
  return args


def main(argv: list[str] | None = None) -> None:
  runtime.configure()  # the CPU XLA flag training uses, before JAX starts
  run(parse_args(argv))


if __name__ == '__main__':
  main()
