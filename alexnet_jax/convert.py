r"""Pretrained weights: torchvision's AlexNet in, and any workdir's parameters out.

Converting torchvision's published AlexNet (the `variant='torchvision'` layout of alexnet_jax/model.py):

  python -m alexnet_jax.convert --from=torchvision --weights=alexnet-owt-7be5be79.pth --workdir=DIR

writes DIR/config.json (the default config with the torchvision model, 224 crops of 256 resizes, the
class count of the weights) and DIR/checkpoints/0, a full train state at step 0, so `alexnet_jax.main`,
`alexnet_jax.evaluate`, `alexnet_jax.predict` and `alexnet_jax.visualize` all load DIR like a trained
workdir. Any config key can be set with `--config.KEY=VALUE` (e.g. `--config.data_dir=...`), as for main.

The layout differences handled by `from_torchvision`:
  * conv kernels: PyTorch OIHW -> Flax HWIO;
  * dense kernels: PyTorch (out, in) -> Flax (in, out);
  * fc6's input: torchvision flattens the 6x6 pooled map as (c, h, w), model.py as (h, w, c), so fc6's
    rows are permuted.

Preprocessing: torchvision's models expect `(x / 255 - mean) / std` with mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225). Multiplied by 255 these are exactly statistics.IMAGENET.mean and
statistics.IMAGENET.std, so the converted config keeps `augment.subtract_mean` and `augment.divide_std` on, and
evaluation and prediction feed the network what it was trained on (docs/pretrained.md).

Fine-tuning from any workdir (a converted one, or a finished run) with `--config.init_from=DIR`,
keeping the new model's freshly initialized fc8 when the class counts differ, is `workdir.load_pretrained_params`.
"""

from collections.abc import Mapping
import os
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from alexnet_jax import cli
from alexnet_jax import defaults
from alexnet_jax import errors
from alexnet_jax import optim
from alexnet_jax import steps
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import statistics
from alexnet_jax.model import AlexNet

# Our layer name -> torchvision.models.alexnet's module path.
TORCHVISION_LAYERS = {
    'conv1': 'features.0',
    'conv2': 'features.3',
    'conv3': 'features.6',
    'conv4': 'features.8',
    'conv5': 'features.10',
    'fc6': 'classifier.1',
    'fc7': 'classifier.4',
    'fc8': 'classifier.6',
}
TORCHVISION_CONV1_FILTERS = 64  # conv1's width at width=1.0; narrower state dicts set model.width
TORCHVISION_IMAGE_SIZE = 224
TORCHVISION_RESIZE_SIZE = 256
_POOLED_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6)) before fc6


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _fc6_kernel(weight: np.ndarray, channels: int) -> np.ndarray:
  """torchvision's fc6 weight [out, (c, h, w)] as our kernel [(h, w, c), out]."""
  out = weight.shape[0]
  if weight.shape[1] != channels * _POOLED_SIZE * _POOLED_SIZE:
    raise errors.InvalidError(
        f'classifier.1.weight has {weight.shape[1]} inputs; the {channels} channels of features.10 '
        f'pooled to {_POOLED_SIZE}x{_POOLED_SIZE} give {channels * _POOLED_SIZE ** 2}.')
  kernel = weight.reshape(out, channels, _POOLED_SIZE, _POOLED_SIZE).transpose(2, 3, 1, 0)
  return kernel.reshape(_POOLED_SIZE * _POOLED_SIZE * channels, out)


def torchvision_model(variables: Mapping[str, Any]) -> AlexNet:
  """The `variant='torchvision'` AlexNet whose shapes `variables` (our layout) have."""
  params = variables['params']
  return AlexNet(num_classes=int(params['fc8']['kernel'].shape[1]), variant='torchvision',
                 groups=1, lrn=False,
                 width=params['conv1']['kernel'].shape[3] / TORCHVISION_CONV1_FILTERS)


def from_torchvision(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """torchvision AlexNet parameters (name -> tensor or array) as Flax variables {'params': ...}.

  `torchvision_model(variables)` is the model they belong to; its logits equal torchvision's on the
  same NHWC input (tests/test_convert.py checks this to 1e-4).
  """
  arrays = {name: _to_numpy(value) for name, value in state_dict.items()}
  expected = {f'{module}.{kind}' for module in TORCHVISION_LAYERS.values()
              for kind in ('weight', 'bias')}
  missing, unexpected = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
  if missing or unexpected:
    raise errors.InvalidError(
        'Not a torchvision AlexNet state dict: '
        + (f'missing {", ".join(missing)}; ' if missing else '')
        + (f'unexpected {", ".join(unexpected[:8])}{" ..." if len(unexpected) > 8 else ""}; '
           if unexpected else '')
        + 'expected the parameters of torchvision.models.alexnet(), saved with '
        'torch.save(model.state_dict(), path).')

  params = {}
  for layer, module in TORCHVISION_LAYERS.items():
    weight = arrays[f'{module}.weight']
    if layer.startswith('conv'):
      kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif layer == 'fc6':
      kernel = _fc6_kernel(weight, channels=arrays['features.10.weight'].shape[0])
    else:
      kernel = weight.T  # (out, in) -> (in, out)
    params[layer] = {'kernel': np.ascontiguousarray(kernel), 'bias': arrays[f'{module}.bias']}
  variables = {'params': params}
  workdir_lib.check_params_match(params, torchvision_model(variables), TORCHVISION_IMAGE_SIZE,
                     'the torchvision state dict')
  return variables


def load_torchvision_file(path: str) -> dict[str, np.ndarray]:
  """A `torch.save(model.state_dict(), path)` file as NumPy arrays. Needs PyTorch (CPU is enough)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (only this path needs PyTorch)
  except ImportError as e:
    raise errors.InputError('Reading .pth files needs PyTorch: pip install torch (the CPU build is '
                            'enough).') from e
  if not os.path.isfile(path):
    raise errors.NotFoundError(f'--weights={path}: no such file.')
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise errors.InvalidError(f'{path} holds a {type(state_dict).__name__}, not a state dict; save '
                              'one with torch.save(model.state_dict(), path).')
  return {name: _to_numpy(value) for name, value in state_dict.items()}


def torchvision_config(base: ml_collections.ConfigDict, variables: Mapping[str, Any]
                       ) -> ml_collections.ConfigDict:
  """`base` with the model, sizes and class count of converted torchvision `variables`."""
  model = torchvision_model(variables)
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.model.variant = 'torchvision'
    config.model.groups = 1  # torchvision's layout has neither groups nor LRN
    config.model.lrn = False
    config.model.activation = 'relu'
    config.model.overlapping_pool = True
    config.model.remove_conv = 0
    config.model.width = model.width
    config.num_classes = model.num_classes
    config.image_size = TORCHVISION_IMAGE_SIZE
    config.resize_size = TORCHVISION_RESIZE_SIZE
    # torchvision's Normalize(mean, std) on 0..1 pixels, which is the pipeline's (x - mean) / std
    # with ImageNet's statistics.
    config.augment.subtract_mean = True
    config.augment.divide_std = True
    config.augment.statistics = 'imagenet'
    for key in statistics.KEYS:
      config.augment[key] = None
  return config


def write_workdir(workdir: str, config: ml_collections.ConfigDict, params: Any | None = None) -> None:
  """DIR/config.json and DIR/checkpoints/0: a train state of `config` at step 0 holding `params`
  (None: the fresh initialization of `config`'s model)."""
  checkpointer = workdir_lib.Checkpointer(workdir, config.keep_checkpoints, async_save=False)
  if checkpointer.latest_step() is not None:
    checkpointer.close()
    raise errors.ExistsError(f'{checkpointer.directory} already holds checkpoints (latest step '
                             f'{checkpointer.latest_step()}); convert into a new --workdir.')
  model = steps.create_model(config, config.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch=1, total_steps=1)
  state = steps.create_train_state(config, model, tx)
  if params is not None:
    workdir_lib.check_params_match(params, model, config.image_size, 'the weights to write')
    state = state.replace(params=jax.tree.map(np.asarray, params))
  try:
    checkpointer.save(0, state)
    checkpointer.wait()
  finally:
    checkpointer.close()
  workdir_lib.write_config(workdir, config)


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  options = flags.FLAGS
  variables = from_torchvision(load_torchvision_file(options.weights))
  config = torchvision_config(options.config, variables)
  workdir_lib.make_workdir(options.workdir)
  write_workdir(options.workdir, config, variables['params'])
  model = torchvision_model(variables)
  print(f'wrote {options.workdir}: torchvision AlexNet, {model.num_classes} classes, width '
        f'{model.width:g}, step 0 (config.json and checkpoints/0)')


def _define_flags() -> None:
  # Defined only when run as a program: tests import this module with main's, whose flags (--workdir,
  # --config) must not meet a second definition.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum('from', 'torchvision', ['torchvision'], 'Where the weights come from.')
  flags.DEFINE_string('weights', None, 'A .pth file: torch.save(alexnet.state_dict(), path).')
  flags.DEFINE_string('workdir', None, 'The new workdir to write.')
  config_flags.DEFINE_config_file('config', defaults.__file__,
                                  'The base config (default: alexnet_jax/defaults.py, the paper\'s '
                                  'recipe); model, sizes and classes come from the weights.')
  flags.mark_flags_as_required(['weights', 'workdir'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
