"""Where the train step's time goes: a jax.profiler trace of a few steps, summed per layer and op.

  python -m bench.trace_step                      # paper model, fp32, batch 32 (CPU default)
  python -m bench.trace_step --batch_size=128 --dtype=bfloat16 --top=40

Traces `--steps` steps of `bench.train_step.JaxStep` (the project's own compiled step) and sums the
duration of every XLA thunk (one fused kernel each) over them. Each thunk is named after its fusion;
the compiled HLO's `op_name` metadata maps it back to the model: layer (conv1..fc8, 'model' for the
rest of the network: LRN, pools, activations; 'step' for the loss and the optimizer), pass (forward,
or backward for anything under autodiff's transpose) and primitive. A fused kernel goes by the op of
its root (the tap products of a dL/dW show as 'slice', the slice fused into them). Prints
ms per step by that key, largest first. On CPU, XLA's own convolution kernels (not YNNPACK's) emit no
trace events: the gap between the traced sum and the step's wall time is mostly them.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from alexnet_jax import runtime
from bench import train_step


def thunk_milliseconds(trace_dir: str, steps: int) -> collections.Counter:
  """Total ms per step of each complete ('X') trace event name."""
  (path,) = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  totals = collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      totals[event['name']] += event['dur'] / 1000 / steps
  return totals


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata (the JAX call path that made it)."""
  pattern = r'^\s*(?:ROOT )?%([\w.\-]+) = [^\n]*?op_name="([^"]*)"'
  return {m.group(1): m.group(2) for m in re.finditer(pattern, hlo_text, re.M)}


def model_key(op_name: str | None, thunk: str) -> str:
  if op_name is None:
    return f'(no op_name) {re.sub(r"[.][0-9]+$", "", thunk)}'
  layer = re.search(r'/(conv\d|fc\d)/', op_name)
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  where = layer.group(1) if layer else 'model' if 'AlexNet' in op_name else 'step'
  return f'{where:5s} {direction:8s} {op_name.split("/")[-1]}'


def main() -> None:
  runtime.configure()  # the CPU XLA flag training uses, before JAX starts
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch_size', type=int, default=train_step.default_batch_size())
  parser.add_argument('--dtype', default='float32', choices=train_step.DTYPES)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--top', type=int, default=30)
  args = parser.parse_args()

  step = train_step.JaxStep(train_step.bench_config(args.batch_size, args.dtype, 1.0, 227))
  for _ in range(2):
    step.step()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for _ in range(args.steps):
      step.step()
    wall = (time.perf_counter() - start) * 1000 / args.steps
    jax.profiler.stop_trace()
    totals = thunk_milliseconds(trace_dir, args.steps)

  names = op_names(step.compiled.as_text())
  by_key = collections.Counter()
  for thunk, ms in totals.items():
    if not thunk.startswith(('$', 'ThunkExecutor', 'SlinkyThreadPool', 'PjitFunction', 'Python')):
      by_key[model_key(names.get(thunk), thunk)] += ms
  print(f'{jax.default_backend()}, batch {args.batch_size}, {args.dtype}: traced ops '
        f'{sum(by_key.values()):.0f} ms/step of {wall:.0f} ms wall')
  for key, ms in by_key.most_common(args.top):
    print(f'{ms:8.1f}  {key}')


if __name__ == '__main__':
  main()
