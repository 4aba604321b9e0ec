"""The paper's two-GPU split of every layer, as a parallel mode (`config.model_parallel = 2`).

§3.2: "we spread the net across two GPUs ... The parallelization scheme that we employ essentially puts
half of the kernels (or neurons) on each GPU, with one additional trick: the GPUs communicate only in
certain layers." Here the devices form a ("data", "model") mesh of n/2 x 2. Each "model" pair holds one
copy of the network, split as in Figure 2: device m of the pair holds tower m, i.e. the second half of
every layer's kernels if m = 1 (conv kernels HWIO and dense kernels (in, out) split along their output
axis). For the grouped layers (conv2, conv4, conv5) that half is exactly the group that reads tower m's
own maps, so they run with no communication at all. The towers exchange activations where the paper's
GPUs did:

  conv3      gathers both towers' conv2 maps ("the kernels of the third convolutional layer are
             connected to all kernel maps in the second layer")
  fc6..fc8   gather both towers' outputs of the layer below (the fully connected layers see everything)
  logits     gathered, so the loss (and the metrics) are whole on both devices of a pair

and in one place the paper did not: local response normalization (§3.3) sums squares over 5 adjacent
maps, and the single-device `AlexNet` (and a checkpoint trained with it) sees maps 46, 47 | 48, 49 as
neighbours across the tower boundary. The paper's GPUs normalized within their own maps. To compute the
same function as `AlexNet`, so that checkpoints and results carry over between the layouts, each tower
borrows the 2 maps next to the boundary from the other (a `ppermute` of [B, H, W, 2] after conv1 and
conv2).

The parameter tree is `AlexNet`'s own (variant 'paper', groups 2), so checkpoints are interchangeable
with data parallelism: Orbax reshards on restore. The per-device steps are steps.py's `train_step` and
`eval_step`, unchanged: they are handed `TowerPair`, whose `apply` is AlexNet's forward pass computed
one tower per device, instead of the Flax module; `parallel.ShardMapParallel` runs them over the
("data", "model") mesh with the state split as `state_specs` says (`parallel.make_parallel`). Data
parallelism runs over the "data" axis as before (gradients `pmean`ed over it); the "model" axis holds
distinct shards and is never averaged.

Benchmark (ms per train step, 4x2 model parallel vs 8x1 data parallel; see docs/benchmarks.md):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bench.model_parallel
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from alexnet_jax import cpu_ops
from alexnet_jax import model as alexnet

MODEL_AXIS = 'model'
TOWERS = 2  # the paper's two GPUs
# `local_response_norm`'s default window is n = 5 maps: 2 on either side of each map.
_LRN_RADIUS = 2


def _gather_towers(x: jax.Array) -> jax.Array:
  """Both towers' maps (or neurons) along the last axis, tower 0's first, as in `AlexNet`."""
  return jax.lax.all_gather(x, MODEL_AXIS, axis=x.ndim - 1, tiled=True)


@jax.custom_vjp
def _gather_logits(x: jax.Array) -> jax.Array:
  """`_gather_towers` for the logits, whose cotangent is already whole on each device.

  Both devices of a pair compute the same loss from the same gathered logits, so each holds the full
  cotangent. The transpose of `all_gather` (a `psum_scatter`) would add the two copies and double every
  gradient; this takes the device's own half instead.
  """
  return _gather_towers(x)


def _gather_logits_forward(x):
  return _gather_towers(x), x.shape[-1]


def _gather_logits_backward(half, cotangent):
  start = jax.lax.axis_index(MODEL_AXIS) * half
  return (jax.lax.dynamic_slice_in_dim(cotangent, start, half, axis=-1),)


_gather_logits.defvjp(_gather_logits_forward, _gather_logits_backward)


@jax.custom_vjp
def _share_nonfinite_gradients(params: Any) -> Any:
  """Identity; on the way back, makes every tower's gradients non-finite if either tower's are.

  `steps.train_step` skips a step whose gradients' global norm is not finite, judging from the gradients
  it holds. Each device holds only its tower's, so without this the two halves of one network could
  disagree on whether a step was applied; the towers judge theirs by the same test here. (The data axis
  already agrees: gradients are averaged over it first.)
  """
  return params


def _share_nonfinite_forward(params):
  return params, None


def _share_nonfinite_backward(_, grads):
  finite = jnp.isfinite(optax.tree.norm(grads))
  finite_everywhere = jax.lax.pmin(finite.astype(jnp.int32), MODEL_AXIS) > 0
  return (jax.tree.map(lambda g: jnp.where(finite_everywhere, g, jnp.nan), grads),)


_share_nonfinite_gradients.defvjp(_share_nonfinite_forward, _share_nonfinite_backward)


def _lrn_across_towers(x: jax.Array) -> jax.Array:
  """`local_response_norm` of this tower's maps, with the other tower's maps next to the boundary.

  Tower 0 holds maps [0, C/2) and needs maps C/2, C/2 + 1 from tower 1; tower 1 needs C/2 - 2,
  C/2 - 1 from tower 0. Padding the far side with zero maps reproduces the clipped window at the
  network's real edges, so the result equals `AlexNet`'s on this tower's maps.
  """
  halo = min(_LRN_RADIUS, x.shape[-1])
  is_tower_0 = jax.lax.axis_index(MODEL_AXIS) == 0
  outgoing = jnp.where(is_tower_0, x[..., -halo:], x[..., :halo])
  incoming = jax.lax.ppermute(outgoing, MODEL_AXIS, perm=[(0, 1), (1, 0)])
  zeros = jnp.zeros_like(incoming)
  before = jnp.where(is_tower_0, zeros, incoming)
  after = jnp.where(is_tower_0, incoming, zeros)
  normalized = alexnet.local_response_norm(jnp.concatenate([before, x, after], axis=-1))
  return normalized[..., halo:halo + x.shape[-1]]


class TowerPair:
  """`AlexNet` (variant 'paper', groups 2) computed one tower per device of the "model" mesh axis.

  `apply` has `AlexNet.apply`'s signature and result (the whole float32 logits, on both devices of a
  pair), so steps.py's per-device steps call it unchanged. It must run inside a `shard_map` with a
  "model" axis of size 2, on parameters split as `state_specs` says. Layer widths are read from the
  parameter shapes, so every `width` works.
  """

  def __init__(self, model: alexnet.AlexNet):
    if model.variant != 'paper' or model.groups != TOWERS:
      raise ValueError(
          f'model_parallel=2 splits the paper layout into its two towers; it needs '
          f'model.variant=\'paper\' and model.groups=2, got variant={model.variant!r}, '
          f'groups={model.groups!r}. Set those, or use model_parallel=1.')
    if model.num_classes % TOWERS:
      raise ValueError(
          f'model_parallel=2 puts half of fc8\'s {model.num_classes} outputs on each device, so '
          f'num_classes must be even. Use model_parallel=1 for an odd number of classes.')
    self.model = model

  def apply(self, variables: dict[str, Any], images: jax.Array, train: bool = False,
            rngs: dict[str, jax.Array] | None = None) -> jax.Array:
    model = self.model
    params = _share_nonfinite_gradients(variables['params'])
    dtype = alexnet.compute_dtype(model.dtype)
    activation = alexnet.ACTIVATIONS[model.activation]
    window, stride = alexnet.pool_shape(model.overlapping_pool)
    tower = jax.lax.axis_index(MODEL_AXIS)
    x = images.astype(dtype)

    for index, layer in enumerate(model.layers(), start=1):
      name = f'conv{index}'
      if index > 1 and not layer.grouped:
        x = _gather_towers(x)  # conv3 reads both towers' maps
      kernel = params[name]['kernel']  # [kh, kw, in, out / 2]: this tower's filters
      conv = nn.Conv(kernel.shape[-1], kernel.shape[:2], strides=layer.stride,
                     padding=[(layer.padding, layer.padding)] * 2,
                     conv_general_dilated_cls=cpu_ops.conv_factory(model.conv_impl),
                     dtype=dtype, param_dtype=jnp.float32)
      x = activation(conv.apply({'params': params[name]}, x))
      if layer.lrn and model.lrn:
        x = _lrn_across_towers(x)
      if layer.pool:
        x = cpu_ops.max_pool(x, window, stride, model.conv_impl)

    for number in (6, 7, 8):
      name = f'fc{number}'
      x = _gather_towers(x)  # every neuron of a fully connected layer sees both towers
      if number == 6:
        x = x.reshape(x.shape[0], -1)  # AlexNet's NHWC flatten of the whole map: (h, w, c)
      dense = nn.Dense(params[name]['kernel'].shape[-1], dtype=dtype, param_dtype=jnp.float32)
      x = dense.apply({'params': params[name]}, x)
      if number < 8:
        x = activation(x)
        if train and model.dropout_rate > 0:
          # train_step's key is per (seed, step, data index); each tower and layer draws its own mask.
          key = jax.random.fold_in(jax.random.fold_in(rngs['dropout'], tower), number)
          x = nn.Dropout(model.dropout_rate).apply({}, x, deterministic=False, rng=key)
    return _gather_logits(x).astype(jnp.float32)


def _is_layer_weight(path: tuple[Any, ...]) -> bool:
  """Whether a state leaf is a layer's kernel or bias: in `params`, or in the optimizer's per-parameter
  state (momentum, Adam moments), which optax keeps in trees shaped like `params`."""
  return bool(path) and getattr(path[-1], 'key', None) in ('kernel', 'bias')


def state_specs(tree: Any) -> Any:
  """PartitionSpecs for a train state (or any part of one, e.g. its optimizer hyperparameters).

  Layer weights are split along their last (output) axis over "model": conv kernels
  P(None, None, None, 'model'), dense kernels P(None, 'model'), biases P('model'). For a grouped
  conv's kernel [kh, kw, in / 2, out] the first out / 2 filters are group 0, so each device gets its
  group whole. Everything else (step, learning rate, counters) is replicated.
  """
  def spec(path, leaf):
    if _is_layer_weight(path):
      return P(*(None,) * (np.ndim(leaf) - 1), MODEL_AXIS)
    return P()
  return jax.tree_util.tree_map_with_path(spec, tree)


def check_config(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> None:
  """Raises ValueError if model_parallel=2 cannot run `config` on `device_count` devices shared
  evenly by `process_count` processes (the number of classes is checked by `TowerPair`, as it may
  come from the dataset)."""
  if config.model.variant != 'paper' or config.model.groups != TOWERS:
    raise ValueError(
        f'model_parallel=2 splits the paper layout into its two towers; it needs '
        f'model.variant=\'paper\' and model.groups=2, got variant={config.model.variant!r}, '
        f'groups={config.model.groups!r}. Set those, or use model_parallel=1.')
  if config.model.get('remove_conv', 0):
    raise ValueError(f'model_parallel=2 runs the paper\'s five convolutions in two towers; '
                     f'model.remove_conv={config.model.remove_conv} takes one out. Use '
                     'model_parallel=1 for the depth ablation.')
  if config.optimizer == 'lars':
    raise ValueError('config.optimizer=\'lars\' scales each layer by the norms of its weights and '
                     'gradients, which model_parallel=2 splits over two devices; use \'sgd\' or '
                     '\'adamw\', or model_parallel=1.')
  if device_count % TOWERS:
    raise ValueError(f'model_parallel=2 pairs up devices; {device_count} devices is odd. Use an even '
                     f'number of devices, or model_parallel=1.')
  if (device_count // process_count) % TOWERS:
    raise ValueError(f'model_parallel=2 keeps both towers of a network in one process; each process '
                     f'has {device_count // process_count} devices. Use an even number per process.')
