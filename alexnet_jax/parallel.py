"""Running the per-device steps on many devices: one interface, `Parallel`, and its two implementations.

The steps of alexnet_jax/steps.py are per-device code. A `Parallel` runs them on every device:

- `ShardMapParallel` (default, `config.parallelism='shard_map'`): `jax.jit(jax.shard_map(...))` over
  a mesh of every device of every process. With a 1-D ("data",) mesh the state is replicated and
  the batch split along its first axis: data parallelism. With `config.model_parallel=2` the mesh
  is ("data", "model") of n/2 x 2 and the state is split over "model" as `towers.state_specs` says:
  the paper's two-GPU split of every layer (alexnet_jax/towers.py), data parallel across pairs.
- `PmapParallel` (`config.parallelism='pmap'`): the classic `jax.pmap` of the same function, state
  replicated with a leading device axis.

All give the same numbers (tests/test_train.py, tests/test_model_parallel.py).
"""

import abc
from collections.abc import Callable
import functools
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from alexnet_jax import steps
from alexnet_jax import towers
from alexnet_jax.model import AlexNet

DATA_AXIS = steps.DATA_AXIS
PARALLELISMS = ('shard_map', 'pmap')


class Parallel(abc.ABC):
  """How the training loop runs the per-device steps: what it calls, and nothing else.

  `train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` are the
  compiled steps; the state passed to `train_step` is donated. The other methods move values
  between the host and the devices in the layout the steps expect.
  """

  train_step: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]]
  eval_step: Callable[[Any, Any], dict[str, jax.Array]]

  @abc.abstractmethod
  def put_state(self, tree: Any) -> Any:
    """Host values (identical on every process) to the devices; device values already laid out
    as the steps need them stay put."""

  @abc.abstractmethod
  def abstract_state(self, host_state: Any) -> Any:
    """What a checkpoint is restored into: shapes, dtypes and, where it helps, shardings."""

  @abc.abstractmethod
  def state_for_checkpoint(self, state: Any) -> Any:
    """The train state as Orbax should save it."""

  @abc.abstractmethod
  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's share of a global batch to its devices."""

  @abc.abstractmethod
  def fetch(self, tree: Any) -> Any:
    """Device values to host NumPy, whole (every process may read its own copy)."""


def put_on(x: Any, sharding: NamedSharding) -> jax.Array:
  """`x` laid out as `sharding`: a host value (identical on every process) is copied to the devices;
  a device array already laid out that way stays put."""
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicated_specs(tree: Any) -> Any:
  """PartitionSpecs that replicate every leaf of `tree` on every device."""
  return jax.tree.map(lambda _: P(), tree)


class ShardMapParallel(Parallel):
  """jit + shard_map over `mesh`, the batch split over its "data" axis and the state laid out as
  `state_specs(state)` says (default: replicated)."""

  def __init__(self, train_fn: Callable, eval_fn: Callable, mesh: Mesh,
               state_specs: Callable[[Any], Any] = replicated_specs):
    self.mesh = mesh
    self.split = NamedSharding(mesh, P(DATA_AXIS))
    self._state_specs = state_specs
    # check_vma=False keeps pmap's semantics, which the per-device code is written for: the
    # gradient of a replicated parameter is this device's own gradient, averaged explicitly by
    # `pmean`. (With varying-manual-axes checking on, autodiff would already psum it.) With the
    # towers' split weights, the transposes of their all_gathers (psum_scatter) deliver each tower
    # the gradient of its half.
    sharded = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)

    def train_step(state, batch):
      specs = state_specs(state)
      return sharded(train_fn, in_specs=(specs, P(DATA_AXIS)), out_specs=(specs, P()))(state, batch)

    def eval_step(state, batch):
      return sharded(eval_fn, in_specs=(state_specs(state), P(DATA_AXIS)), out_specs=P())(
          state, batch)

    self.train_step = jax.jit(train_step, donate_argnums=(0,))
    self.eval_step = jax.jit(eval_step)

  def _shardings(self, tree: Any) -> Any:
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), self._state_specs(tree),
                        is_leaf=lambda x: isinstance(x, P))

  def put_state(self, tree: Any) -> Any:
    return jax.tree.map(put_on, tree, self._shardings(tree))

  def abstract_state(self, host_state: Any) -> Any:
    """Shapes and shardings: a checkpoint (of any layout) is restored straight onto the devices."""
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding),
        host_state, self._shardings(host_state))

  def state_for_checkpoint(self, state: Any) -> Any:
    return state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Split along the batch over "data" (both devices of a model-parallel pair see the same
    examples)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.split, x), local_batch)

  def fetch(self, tree: Any) -> Any:
    """Split values are reassembled from this process's shards (a process holds whole
    model-parallel pairs, so both halves of every split weight)."""
    def fetch_one(x):
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      whole = np.empty(x.shape, x.dtype)
      for shard in x.addressable_shards:
        whole[shard.index] = np.asarray(shard.data)
      return whole
    return jax.tree.map(fetch_one, tree)


class PmapParallel(Parallel):
  """The classic `jax.pmap` over every device of every process (or `devices`); each process holds
  the state and feeds the batch of its own devices, with a leading device axis."""

  def __init__(self, train_fn: Callable, eval_fn: Callable, devices: list[Any] | None = None):
    # pmap needs the same device list on every process: its collectives span that list, so a
    # list of this process's devices alone would average gradients within each process only.
    all_devices = devices or jax.devices()
    self.devices = [d for d in all_devices if d.process_index == jax.process_index()]
    self.local_mesh = Mesh(np.asarray(self.devices), (DATA_AXIS,))
    self.stacked = NamedSharding(self.local_mesh, P(DATA_AXIS))
    self.train_step = jax.pmap(train_fn, axis_name=DATA_AXIS, donate_argnums=(0,),
                               devices=all_devices)
    self.eval_step = jax.pmap(eval_fn, axis_name=DATA_AXIS, devices=all_devices)

  def put_state(self, tree: Any) -> Any:
    """Copies host values to every local device (leading device axis); stacked arrays stay put."""
    count = len(self.devices)

    def put(x):
      if isinstance(x, jax.Array) and x.ndim >= 1 and x.shape[0] == count and len(x.devices()) == count:
        return x
      x = np.asarray(x)
      return jax.device_put(np.broadcast_to(x, (count,) + x.shape), self.stacked)
    return jax.tree.map(put, tree)

  def abstract_state(self, host_state: Any) -> Any:
    # Restored to host NumPy, then replicated by put_state.
    return jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), host_state)

  def state_for_checkpoint(self, state: Any) -> Any:
    return self.fetch(state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    count = len(self.devices)
    return jax.tree.map(
        lambda x: jax.device_put(x.reshape((count, -1) + x.shape[1:]), self.stacked), local_batch)

  def fetch(self, tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0] if x.ndim else np.asarray(x),
                        tree)


def make_parallel(config: ml_collections.ConfigDict, model: AlexNet,
                  tx: optax.GradientTransformation, devices: list[Any] | None = None) -> Parallel:
  """The per-device steps of `model` wrapped as `config.parallelism` and `config.model_parallel`
  say, over all devices unless `devices`."""
  devices = devices or jax.devices()

  def step_functions(network) -> tuple[Callable, Callable]:
    train_fn = functools.partial(steps.train_step, model=network, tx=tx,
                                 dropout_key=steps.dropout_root_key(config), augment=config.augment,
                                 image_size=config.image_size)
    eval_fn = lambda state, batch: steps.eval_step(state.params, batch, model=network,
                                                   augment=config.augment)
    return train_fn, eval_fn

  if config.model_parallel == 2:
    towers.check_config(config, len(devices), jax.process_count())
    mesh = Mesh(np.asarray(devices).reshape(-1, towers.TOWERS), (DATA_AXIS, towers.MODEL_AXIS))
    return ShardMapParallel(*step_functions(towers.TowerPair(model)), mesh, towers.state_specs)
  if config.parallelism == 'shard_map':
    return ShardMapParallel(*step_functions(model), Mesh(np.asarray(devices), (DATA_AXIS,)))
  if config.parallelism == 'pmap':
    return PmapParallel(*step_functions(model), devices)
  raise ValueError(f'config.parallelism={config.parallelism!r} is unknown; use one of {PARALLELISMS}')
