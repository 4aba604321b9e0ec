"""torchvision weights -> our layout (logits to 1e-4), the convert command, and init_from's loader."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from torch import nn

from alexnet_jax import config_validation, convert, defaults, steps
from alexnet_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.alexnet's architecture and module names; `width` narrows it for fast tests."""

  def __init__(self, num_classes: int = 1000, width: float = 1.0):
    super().__init__()
    c = lambda n: round(n * width)
    self.features = nn.Sequential(
        nn.Conv2d(3, c(64), kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c(64), c(192), kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c(192), c(384), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(384), c(256), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(256), c(256), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(c(256) * 6 * 6, c(4096)), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(c(4096), c(4096)), nn.ReLU(inplace=True),
        nn.Linear(c(4096), num_classes))

  def forward(self, x):
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


def torch_logits(module: nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return module.eval()(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def random_torchvision(num_classes: int, width: float, seed: int = 0) -> nn.Module:
  torch.manual_seed(seed)
  module = TorchvisionAlexNet(num_classes, width)
  with torch.no_grad():  # non-zero biases, so a bias mix-up cannot hide
    for name, p in module.named_parameters():
      if name.endswith('bias'):
        p.uniform_(-0.1, 0.1)
  return module


def test_logits_equal_torchvision_at_full_size():
  module = random_torchvision(num_classes=1000, width=1.0)
  variables = convert.from_torchvision(module.state_dict())
  model = convert.torchvision_model(variables)
  assert (model.num_classes, model.width, model.variant) == (1000, 1.0, 'torchvision')
  # 224: the last pool gives a genuine 6x6 map, so every row of fc6's permutation is exercised.
  images = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
  ours = np.asarray(model.apply(variables, images, train=False))
  theirs = torch_logits(module, images)
  assert np.abs(theirs).max() > 0.1  # the comparison is between non-trivial logits
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_logits_equal_torchvision_at_a_non_square_size():
  # 150x190 ends in a 3x4 map that the adaptive pool stretches to 6x6, unevenly along each axis.
  module = random_torchvision(num_classes=7, width=0.125, seed=1)
  variables = convert.from_torchvision(module.state_dict())
  images = np.random.default_rng(1).standard_normal((1, 150, 190, 3)).astype(np.float32)
  ours = np.asarray(convert.torchvision_model(variables).apply(variables, images, train=False))
  np.testing.assert_allclose(ours, torch_logits(module, images), rtol=1e-4, atol=1e-4)


def test_foreign_state_dicts_are_rejected_with_the_problem_named():
  state = random_torchvision(num_classes=5, width=0.125).state_dict()
  del state['classifier.4.bias']
  with pytest.raises(ValueError, match='missing classifier.4.bias'):
    convert.from_torchvision(state)
  state = random_torchvision(num_classes=5, width=0.125).state_dict()
  state['features.3.weight'] = state['features.3.weight'][:, :-1]  # conv2 sees one input too few
  with pytest.raises(ValueError, match="conv2.*kernel"):
    convert.from_torchvision(state)
  with pytest.raises(ValueError, match='unexpected fc.weight'):
    convert.from_torchvision({'fc.weight': np.zeros((2, 2))})


def random_params(model, image_size: int, seed: int) -> dict:
  """Random arrays in the shapes of `model`'s params (no compile: only shapes are traced)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """(workdir written by the convert command, the torch module it was converted from)."""
  tmp_path = tmp_path_factory.mktemp('convert')
  module = random_torchvision(num_classes=6, width=0.25)
  weights = str(tmp_path / 'alexnet.pth')
  torch.save(module.state_dict(), weights)
  workdir = str(tmp_path / 'converted')
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.convert', '--from=torchvision', f'--weights={weights}',
       f'--workdir={workdir}', f'--config.dataset=folder:{tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, weights, module


def test_convert_command_writes_a_workdir_that_loads(converted):
  workdir, _, module = converted
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  assert config['model']['variant'] == 'torchvision'
  assert (config['image_size'], config['resize_size'], config['num_classes']) == (224, 256, 6)
  assert config['model']['width'] == 0.25
  assert config['dataset'] == f'folder:{os.path.dirname(workdir)}'  # --config.* overrides kept
  assert config['augment']['subtract_mean'] and config['augment']['divide_std']

  loaded = workdir_lib.load(workdir)  # what evaluate, predict and visualize start from
  assert loaded.step == 0 and loaded.model.variant == 'torchvision'
  images = np.random.default_rng(2).standard_normal((1, 224, 224, 3)).astype(np.float32)
  logits = loaded.model.apply({'params': loaded.params}, images, train=False)
  np.testing.assert_allclose(logits, torch_logits(module, images), rtol=1e-4, atol=1e-4)

  # A second conversion into the same workdir is refused rather than mixed in.
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    convert.write_workdir(workdir, loaded.config, loaded.params)


def test_load_pretrained_params_keeps_a_fresh_head_for_new_classes(converted):
  workdir, _, module = converted
  source = convert.from_torchvision(module.state_dict())['params']
  config = workdir_lib.load_config(workdir)

  # Fine-tuning on 10 classes at another size (the adaptive pool keeps fc6's shape).
  fresh = random_params(steps.create_model(config, num_classes=10), image_size=96, seed=3)
  params = workdir_lib.load_pretrained_params(workdir, fresh)
  for layer in ('conv1', 'conv3', 'fc6', 'fc7'):
    np.testing.assert_array_equal(params[layer]['kernel'], source[layer]['kernel'])
    np.testing.assert_array_equal(params[layer]['bias'], source[layer]['bias'])
  np.testing.assert_array_equal(params['fc8']['kernel'], fresh['fc8']['kernel'])
  assert params['fc8']['kernel'].shape == (1024, 10)

  # Below the classifier the models must agree: the paper layout does not.
  config.model.variant = 'paper'
  paper = random_params(steps.create_model(config, num_classes=6), image_size=67, seed=0)
  with pytest.raises(ValueError, match='conv1.*Only fc8 may differ'):
    workdir_lib.load_pretrained_params(workdir, paper)


def test_a_config_json_without_newer_keys_loads_with_their_defaults(tmp_path):
  # A workdir written before a key existed: the key takes configs/default.py's value, the file's
  # values stay, and the result is a valid config (evaluate and predict check it).
  written = defaults.get_config().to_dict()
  del written['center_square'], written['checkpoint_timeout_seconds'], written['model']['dtype']
  written['model']['width'] = 0.5
  (tmp_path / 'config.json').write_text(json.dumps(written))
  config = workdir_lib.load_config(str(tmp_path), eval_crops=10)
  assert config.center_square is True and config.model.dtype == 'float32'
  assert config.model.width == 0.5 and config.eval_crops == 10
  config_validation.validate(config)
