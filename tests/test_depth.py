"""model.remove_conv: §7's depth ablation, one middle convolution taken out of the paper layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config_validation
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.model import AlexNet
from test_train import run_steps, tiny_config

FULL = 60_965_224  # the paper layout with groups=2 (README, "The model")


def _conv_params(kernel: int, inputs: int, outputs: int) -> int:
  return kernel * kernel * inputs * outputs + outputs


# The parameters each removal takes out and puts in, by hand: conv2 sees 96/2 channels per group,
# conv3 all 256, conv4 and conv5 192 per group. Without conv2, conv3 sees conv1's 96 channels;
# without conv3, conv4 sees conv2's 256 (128 per group); without conv4, conv5 sees conv3's 384, as
# before.
EXPECTED_PARAMS = {
    2: FULL - _conv_params(5, 48, 256) - _conv_params(3, 256, 384) + _conv_params(3, 96, 384),
    3: FULL - _conv_params(3, 256, 384) - _conv_params(3, 192, 384) + _conv_params(3, 128, 384),
    4: FULL - _conv_params(3, 192, 384),
}
# Each convolution's output map at a 227x227 input, with and without the removed one: the pools
# stay, so no map changes its size.
CONV_OUTPUTS = {'conv1': (55, 55, 96), 'conv2': (27, 27, 256), 'conv3': (13, 13, 384),
                'conv4': (13, 13, 384), 'conv5': (13, 13, 256)}


def _params(model: AlexNet, size: int = 227):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, size, size, 3))))['params']


@pytest.mark.parametrize('removed', [2, 3, 4])
def test_shapes_and_parameter_counts_per_removed_layer(removed):
  model = AlexNet(remove_conv=removed, conv_impl='lax')
  params = _params(model)
  assert sorted(params) == sorted({f'conv{i}' for i in range(1, 6)} - {f'conv{removed}'}
                                  | {'fc6', 'fc7', 'fc8'})
  assert sum(x.size for x in jax.tree.leaves(params)) == EXPECTED_PARAMS[removed]
  assert params['fc6']['kernel'].shape == (6 * 6 * 256, 4096)  # the last map is 6x6x256 still

  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 227, 227, 3)))
  logits, state = model.apply(variables, jnp.zeros((2, 227, 227, 3)), mutable=['intermediates'],
                              capture_intermediates=lambda m, _: m.name in CONV_OUTPUTS)
  shapes = {name: value['__call__'][0].shape[1:] for name, value in state['intermediates'].items()}
  assert shapes == {name: shape for name, shape in CONV_OUTPUTS.items()
                    if name != f'conv{removed}'}
  assert logits.shape == (2, 1000)


@pytest.mark.parametrize('removed', [2, 3, 4])
def test_each_depth_trains_a_step(removed):
  config = tiny_config(**{'model.remove_conv': removed})
  before = run_steps(config, jax.devices()[:1], num_steps=0)
  after = run_steps(config, jax.devices()[:1], num_steps=1)
  assert f'conv{removed}' not in after
  for name in after:
    assert np.all(np.isfinite(after[name]['kernel']))
    assert not np.array_equal(before[name]['kernel'], after[name]['kernel']), name


def test_where_it_cannot_apply_the_config_says_so(tmp_path):
  for overrides, message in (
      ({'model.remove_conv': 5}, r'model.remove_conv=5 is invalid: expected one of 0, 2, 3, 4'),
      ({'model.remove_conv': 3, 'model.variant': 'torchvision', 'model.groups': 1,
        'model.lrn': False}, "variant='torchvision' is fixed to its published weights")):
    with pytest.raises(config_validation.ConfigError, match=message):
      config_validation.validate(tiny_config(**overrides))
  with pytest.raises(config_validation.ConfigError, match='model_parallel=2 runs the paper'):
    config_validation.validate_devices(
        tiny_config(**{'model.remove_conv': 3, 'model_parallel': 2}), 8)
  # A workdir of the full network is another model's.
  workdir_lib.write_config(str(tmp_path), tiny_config())
  with pytest.raises(workdir_lib.CheckpointMismatchError, match='config.model.remove_conv is 0'):
    workdir_lib.check_config_matches(tiny_config(**{'model.remove_conv': 4}), str(tmp_path))
