r"""Pictures of a trained AlexNet: conv1's kernels (the paper's Figure 3), grids of input images, and
the command that draws them and Figure 4.

  python -m alexnet_jax.visualize kernels --workdir=DIR --out=conv1.png [--scale=4]
  python -m alexnet_jax.visualize neighbors --workdir=DIR --out=nn.png [--num_queries=8]
      [--num_neighbors=6] [--num_train=-1]        (alexnet_jax/neighbors.py)

The pictures themselves are pure functions of alexnet_jax/pictures.py, which the training loop also
sends to TensorBoard.
"""

from absl import app
from absl import flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import neighbors
from alexnet_jax import pictures
from alexnet_jax import workdir as workdir_lib

COMMANDS = ('kernels', 'neighbors')


def write_kernels(workdir: str, out: str, checkpoint: str = 'latest', scale: int = 4) -> np.ndarray:
  """conv1's kernel grid of a workdir's checkpoint, saved as a PNG at `out`; returns it."""
  config = workdir_lib.load_config(workdir)
  params, _ = workdir_lib.restore_params(workdir, checkpoint)
  grid = pictures.conv1_kernel_grid(params, pictures.kernel_groups(config), scale=scale)
  pictures.save_png(grid, out)
  return grid


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {" or ".join(COMMANDS)}')
  options = flags.FLAGS
  if argv[1] == 'kernels':
    grid = write_kernels(options.workdir, options.out, options.checkpoint, options.scale)
    print(f'wrote {options.out}: conv1 kernels, {grid.shape[1]}x{grid.shape[0]} pixels')
  else:
    found = neighbors.write_neighbors(
        options.workdir, options.out, options.checkpoint, num_queries=options.num_queries,
        num_neighbors=options.num_neighbors, num_train=options.num_train,
        batch_size=options.batch_size)
    print(f'wrote {options.out}: each row a query image, then its nearest training images')
    print(neighbors.describe(found, workdir_lib.load_config(options.workdir)))


def _define_flags() -> None:
  # Defined only when run as a program: tests import this module with other commands.
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or alexnet_jax.convert.')
  flags.DEFINE_string('out', None, 'The PNG file to write.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best (lowest eval top-1 error) or a step.')
  flags.DEFINE_integer('scale', 4, 'kernels: each kernel pixel becomes scale x scale pixels.')
  flags.DEFINE_integer('num_queries', 8, 'neighbors: query images, the first of the eval split.')
  flags.DEFINE_integer('num_neighbors', 6, 'neighbors: training images shown per query.')
  flags.DEFINE_integer('num_train', -1, 'neighbors: training images searched, from the first; -1: all.')
  flags.DEFINE_integer('batch_size', 64, 'neighbors: images per forward pass.')
  flags.mark_flags_as_required(['workdir', 'out'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
