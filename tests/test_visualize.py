"""Pictures: conv1's kernel grid (Figure 3), image grids, fc7 features, nearest neighbours (Figure 4)."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

import input_images
from alexnet_jax import convert, neighbors, pictures
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.model import AlexNet
from configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalized(kernel: np.ndarray) -> np.ndarray:
  return np.round(255 * (kernel - kernel.min()) / (kernel.max() - kernel.min())).astype(np.uint8)


def test_paper_kernels_form_two_blocks_as_in_figure_3():
  kernels = np.random.default_rng(0).standard_normal((11, 11, 3, 96)).astype(np.float32)
  grid = pictures.conv1_kernel_grid({'conv1': {'kernel': kernels}}, groups=2, scale=1)
  # Each block: 48 kernels in 3 rows of 16 cells of 11 px with 1 px between them (37 x 193);
  # a 5 px white band between the blocks.
  assert grid.shape == (37 + 5 + 37, 193, 3) and grid.dtype == np.uint8
  assert (grid[37:42] == 255).all()
  first_block, second_block = grid[1:12, 1:12], grid[43:54, 1:12]
  np.testing.assert_array_equal(first_block, normalized(kernels[..., 0]))
  np.testing.assert_array_equal(second_block, normalized(kernels[..., 48]))  # the other GPU's first
  np.testing.assert_array_equal(grid[43:54, 13:24], normalized(kernels[..., 49]))

  single = pictures.conv1_kernel_grid({'conv1': {'kernel': kernels}}, groups=1, scale=2)
  assert single.shape == (6 * 22 + 7, 16 * 22 + 17, 3)  # one block of 6 rows, kernels doubled
  with pytest.raises(ValueError, match='do not split into 5 groups'):
    pictures.conv1_kernel_grid({'conv1': {'kernel': kernels}}, groups=5)


def test_kernel_groups_follow_the_layout():
  config = smoke.get_config()
  assert pictures.kernel_groups(config) == 2
  config.model.variant = 'torchvision'  # one tower, whatever `groups` says
  assert pictures.kernel_groups(config) == 1


def test_image_grid_draws_pixels_and_stretches_floats():
  pixels = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3)).astype(np.uint8)
  grid = pictures.image_grid(pixels, columns=3)
  assert grid.shape == (2 * 8 + 3 * 2, 3 * 6 + 4 * 2, 3)  # 2 rows of 3, 2 px apart
  np.testing.assert_array_equal(grid[2:10, 2:8], pixels[0])
  np.testing.assert_array_equal(grid[12:20, 10:16], pixels[4])
  stretched = pictures.image_grid(np.random.default_rng(1).standard_normal((4, 8, 8, 3)))
  assert stretched.shape == (2 * 8 + 6, 2 * 8 + 6, 3)
  assert stretched[2:10, 2:10].min() == 0 and stretched[2:10, 2:10].max() == 255


def test_fc7_features_are_what_fc8_sees():
  model = AlexNet(num_classes=5, width=0.125)
  images = np.random.default_rng(0).standard_normal((3, 67, 67, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  features, logits = jax.jit(lambda p, x: (neighbors.fc7_features(model, p, x),
                                           model.apply({'params': p}, x, train=False)))(params, images)
  assert features.shape == (3, 512) and float(features.min()) >= 0.0  # after the ReLU
  assert float(features.max()) > 0.0 and float((features == 0).mean()) > 0.1  # the ReLU did act
  np.testing.assert_allclose(features @ params['fc8']['kernel'] + params['fc8']['bias'], logits,
                             rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def folder_workdir(tmp_path_factory):
  """A randomly initialized model of a 4-class image-folder dataset, 3 training images per class."""
  root = input_images.write_folder_dataset(str(tmp_path_factory.mktemp('images')), classes=4,
                                           train_per_class=3, val_per_class=1)
  config = smoke.get_config()
  config.dataset = f'folder:{root}'
  config.num_classes = 4
  config.model.width = 0.125
  config.resize_size = 76
  workdir = str(tmp_path_factory.mktemp('folder_model'))
  convert.write_workdir(workdir, config)
  return workdir


def test_each_training_image_is_its_own_nearest_neighbour(folder_workdir):
  loaded = workdir_lib.load(folder_workdir)
  config = loaded.config.copy_and_resolve_references()
  config.eval_split = 'train'  # queries from the training split: each must find itself first
  found = neighbors.nearest_neighbors(dataclasses.replace(loaded, config=config),
                                      num_queries=5, num_neighbors=3, batch_size=8)
  np.testing.assert_array_equal(found.indices[:, 0], np.arange(5))
  np.testing.assert_array_equal(found.labels[:, 0], found.query_labels)
  np.testing.assert_array_equal(found.images[:, 0], found.query_images)
  assert np.all(found.distances[:, 0] < 1e-2 * found.distances[:, 1])
  assert np.all(np.diff(found.distances, axis=1) >= 0)
  # Only the first 4 of the 12 training images searched, in batches of 3.
  limited = neighbors.nearest_neighbors(dataclasses.replace(loaded, config=config),
                                        num_queries=5, num_neighbors=2, num_train=4, batch_size=3)
  assert limited.indices.max() < 4
  with pytest.raises(ValueError, match='Only 4 training images'):
    neighbors.nearest_neighbors(loaded, num_queries=2, num_neighbors=5, num_train=4, batch_size=8)


def test_neighbors_png_and_summary(folder_workdir, tmp_path):
  out = str(tmp_path / 'nn.png')
  found = neighbors.write_neighbors(folder_workdir, out, num_queries=3, num_neighbors=4,
                                    batch_size=8)
  picture = np.asarray(Image.open(out))
  assert picture.shape == (3 * 67 + 4 * 2, 5 * 67 + 6 * 2, 3)  # a query and 4 neighbours per row
  assert picture.std() > 10  # images, not a blank canvas
  # A line per query: its class, then its neighbours' classes and distances.
  rows = neighbors.describe(found, workdir_lib.load_config(folder_workdir)).splitlines()
  assert len(rows) == 3 and all(row.strip().startswith('class_') for row in rows)
  assert all(row.count('class_') == 5 for row in rows)


def test_kernels_command_writes_the_png(folder_workdir, tmp_path):
  out = str(tmp_path / 'conv1.png')
  result = subprocess.run([sys.executable, '-m', 'alexnet_jax.visualize', 'kernels',
                           f'--workdir={folder_workdir}', f'--out={out}', '--scale=2'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # width 0.125: 12 kernels, 6 per group; each block one row of 6 cells of 22 px.
  assert np.asarray(Image.open(out)).shape == (24 + 11 + 24, 6 * 22 + 7, 3)


def test_neighbors_of_a_synthetic_run_come_from_its_training_split(folder_workdir):
  loaded = workdir_lib.load(folder_workdir)
  config = loaded.config.copy_and_resolve_references()
  config.dataset = 'synthetic_learnable'
  config.synthetic_train_examples = 40  # 3 batches of 16, the last half padding
  config.synthetic_eval_examples = 8
  found = neighbors.nearest_neighbors(dataclasses.replace(loaded, config=config),
                                      num_queries=3, num_neighbors=40, batch_size=16)
  assert sorted(found.indices[0]) == list(range(40))  # every training example, none twice
  figure = neighbors.neighbors_figure(found)
  assert figure.shape == (3 * 67 + 4 * 2, 41 * 67 + 42 * 2, 3)
