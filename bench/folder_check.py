"""What a folder dataset's start-up costs: the decode check of a split, then the same start with it remembered.

  python -m bench.folder_check [--num_images=4096] [--shorter_side=256]

Writes `--num_images` ImageNet-like JPEGs (500x375 and 375x500, quality 90, as
bench/input_pipeline.py writes them; with --shorter_side, stored at that shorter side as
`prepare --downsample_to` writes them) as a folder dataset, then reads its training split twice
through `folders.images` (the in-process memo cleared in between): the
first time every image is decoded to find the undecodable ones, the second time the record of that
check is found (docs/input_pipeline.md, "Bad images"). Prints wall and CPU seconds and per-image
costs of both, and the CPU time both would take for ImageNet's 1,281,167 training images.
"""

import argparse
import os
import tempfile
import time

from alexnet_jax.data import folders
from bench import input_pipeline

IMAGENET_TRAIN_IMAGES = 1_281_167


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=4096)
  parser.add_argument('--shorter_side', type=int, default=None)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    os.environ['XDG_CACHE_HOME'] = os.path.join(tmp, 'cache')  # a record of this run only
    root = os.path.join(tmp, 'images')
    input_pipeline.write_images(root, args.num_images, args.shorter_side)
    size = f'shorter side {args.shorter_side}' if args.shorter_side else '500x375 / 375x500'
    print(f'{args.num_images} JPEGs ({size}), {len(os.sched_getaffinity(0))} core(s)')
    for name in ('decode check', 'check remembered'):
      folders.images.cache_clear()
      wall, cpu = time.perf_counter(), time.process_time()
      paths, _ = folders.images(root, 'train', False)
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      assert len(paths) == args.num_images
      print(f'{name:17s} {wall:8.3f} s wall {cpu:8.3f} s CPU {cpu / len(paths) * 1e3:8.4f} ms CPU '
            f'per image; ImageNet train: {cpu / len(paths) * IMAGENET_TRAIN_IMAGES / 60:7.2f} CPU-min')


if __name__ == '__main__':
  main()
