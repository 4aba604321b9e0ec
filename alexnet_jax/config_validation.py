"""Checks a config before anything compiles; each problem is one line naming the key and what it allows.

`validate(config)` covers everything knowable from the config alone; `validate_devices(config, n)` what
also depends on the device count, which is known only after `jax.distributed.initialize` (batch
splits, and all of `model_parallel=2`'s requirements, checked together).
"""

from collections.abc import Callable
import dataclasses
import os
from typing import Any

from etils import epath
import ml_collections

from alexnet_jax import data
from alexnet_jax import errors
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax.data import statistics
from alexnet_jax.data import store


class ConfigError(errors.InvalidError):
  """An invalid config value; the message names the key and the allowed values."""


@dataclasses.dataclass(frozen=True)
class _Rule:
  types: tuple[type, ...]
  check: Callable[[Any], bool]
  allowed: str  # what the key accepts, for the message


def _one_of(*values) -> _Rule:
  return _Rule((type(values[0]),), lambda v: v in values, 'one of ' + ', '.join(map(repr, values)))


_INT, _NUMBER = (int,), (int, float)
_POSITIVE_INT = _Rule(_INT, lambda v: v > 0, 'an integer > 0')
_BOOL = _Rule((bool,), lambda v: True, 'True or False')

RULES: dict[str, _Rule] = {
    'dataset': _Rule((str,), bool, 'a TFDS name, "folder:/path", "store:/path", "synthetic" or '
                    '"synthetic_learnable"'),
    'data_dir': _Rule((str, type(None)), lambda v: True, 'a directory, or None for the TFDS default'),
    'train_split': _Rule((str,), bool, 'a split name'),
    'eval_split': _Rule((str,), bool, 'a split name'),
    'num_classes': _POSITIVE_INT,
    'image_size': _POSITIVE_INT,
    'resize_size': _POSITIVE_INT,
    'center_square': _BOOL,
    'device_resize_scale': _Rule(_NUMBER, lambda v: v == 0 or v >= 1, '0, or a number >= 1'),
    'eval_crops': _Rule(_INT, lambda v: v in (1, 10), '1 or 10'),
    'cache': _BOOL,
    'strict_data': _BOOL,
    'synthetic_train_examples': _POSITIVE_INT,
    'synthetic_eval_examples': _POSITIVE_INT,
    'train_examples': _Rule(_INT, lambda v: v > 0 or v == -1, 'an integer > 0, or -1 for the whole split'),
    'eval_train_examples': _Rule(_INT, lambda v: v >= -1,
                                 'an integer > 0, -1 for every training example, or 0 for none'),
    'augment.random_crop': _BOOL,
    'augment.flip': _BOOL,
    'augment.pca_lighting': _Rule(_NUMBER, lambda v: v >= 0, 'a number >= 0'),
    'augment.subtract_mean': _BOOL,
    'augment.divide_std': _BOOL,
    'augment.statistics': _one_of(*statistics.CHOICES),
    'augment.mean_rgb': _Rule((tuple, list, type(None)), lambda v: v is None or _floats(v, 3),
                              'three numbers (R, G, B), or None'),
    'augment.std_rgb': _Rule((tuple, list, type(None)), lambda v: v is None or (
        _floats(v, 3) and min(v) > 0), 'three numbers > 0 (R, G, B), or None'),
    'augment.pca_eigenvalues': _Rule((tuple, list, type(None)), lambda v: v is None or _floats(v, 3),
                                     'three numbers, or None'),
    'augment.pca_eigenvectors': _Rule((tuple, list, type(None)), lambda v: v is None or (
        isinstance(v, (tuple, list)) and len(v) == 3 and all(_floats(row, 3) for row in v)),
        'three rows (R, G, B) of three numbers, or None'),
    'batch_size': _POSITIVE_INT,
    'eval_batch_size': _Rule(_INT, lambda v: v > 0 or v == -1, 'an integer > 0, or -1 for batch_size'),
    'num_epochs': _Rule(_NUMBER, lambda v: v > 0, 'a number > 0'),
    'num_train_steps': _Rule(_INT, lambda v: True, 'an integer (> 0 overrides num_epochs)'),
    'optimizer': _one_of(*optim.OPTIMIZERS),
    'learning_rate': _Rule(_NUMBER, lambda v: v > 0, 'a number > 0'),
    'momentum': _Rule(_NUMBER, lambda v: 0 <= v < 1, 'a number in [0, 1)'),
    'weight_decay': _Rule(_NUMBER, lambda v: v >= 0, 'a number >= 0'),
    'lr_schedule': _one_of(*optim.LR_SCHEDULES),
    'step_epochs': _Rule((tuple, list), lambda v: all(
        isinstance(e, _NUMBER) and not isinstance(e, bool) and e > 0 for e in v),
        'a tuple of epochs > 0, e.g. (30, 60, 80)'),
    'plateau_patience_epochs': _Rule(_NUMBER, lambda v: v > 0, 'a number > 0'),
    'plateau_factor': _Rule(_NUMBER, lambda v: 0 < v < 1, 'a number in (0, 1)'),
    'plateau_max_reductions': _Rule(_INT, lambda v: v >= 0, 'an integer >= 0'),
    'warmup_epochs': _Rule(_NUMBER, lambda v: v >= 0, 'a number >= 0'),
    'scale_lr_with_batch': _BOOL,
    'base_batch_size': _POSITIVE_INT,
    'model.variant': _one_of(*model_lib.VARIANTS),
    'model.groups': _Rule(_INT, lambda v: v in (1, 2), '1 or 2'),
    'model.lrn': _BOOL,
    'model.activation': _one_of(*model_lib.ACTIVATIONS),
    'model.overlapping_pool': _BOOL,
    'model.dropout_rate': _Rule(_NUMBER, lambda v: 0 <= v < 1, 'a number in [0, 1)'),
    'model.width': _Rule(_NUMBER, lambda v: v > 0, 'a number > 0'),
    'model.init_scheme': _one_of(*model_lib.INIT_SCHEMES),
    'model.dtype': _one_of(*model_lib.DTYPES),
    'model.conv_impl': _one_of(*model_lib.CONV_IMPLS),
    'model.conv1_kernel': _Rule(_INT, lambda v: v >= 0, "an integer >= 1, or 0 for the layout's 11"),
    'model.conv1_stride': _Rule(_INT, lambda v: v >= 0, "an integer >= 1, or 0 for the layout's 4"),
    'model.remove_conv': _one_of(0, *model_lib.REMOVABLE_CONVS),
    'init_from': _Rule((str,), lambda v: not v or os.path.isdir(os.path.join(v, 'checkpoints')),
                       'a workdir holding checkpoints/ (e.g. of alexnet_jax.convert), or ""'),
    'seed': _Rule(_INT, lambda v: v >= 0, 'an integer >= 0'),
    'skip_nonfinite_steps': _BOOL,
    'parallelism': _one_of('shard_map', 'pmap'),  # parallel.PARALLELISMS (parallel imports JAX)
    'model_parallel': _Rule(_INT, lambda v: v in (1, 2), '1 or 2'),
    'log_every_steps': _POSITIVE_INT,
    'eval_every_steps': _Rule(_INT, lambda v: v > 0 or v == -1, 'an integer > 0, or -1 for every epoch'),
    'checkpoint_every_steps': _POSITIVE_INT,
    'keep_checkpoints': _POSITIVE_INT,
    'checkpoint_timeout_seconds': _POSITIVE_INT,
}


def _floats(value: Any, count: int) -> bool:
  return isinstance(value, (tuple, list)) and len(value) == count and all(
      isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value)


def _lookup(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split('.'):
    if part not in value:
      raise ConfigError(f'config.{key} is missing; start from alexnet_jax.defaults.get_config() '
                        '(configs/default.py), which sets every key')
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid value (device-independent checks)."""
  for key, rule in RULES.items():
    value = _lookup(config, key)
    type_ok = isinstance(value, rule.types) and not (bool not in rule.types and isinstance(value, bool))
    if not type_ok or not rule.check(value):
      raise ConfigError(f'config.{key}={value!r} is invalid: expected {rule.allowed}')
  if config.resize_size < config.image_size:
    raise ConfigError(f'config.resize_size={config.resize_size} is smaller than config.image_size='
                      f'{config.image_size}: the crop must fit inside the resized image')
  if config.model.remove_conv and config.model.variant != 'paper':
    raise ConfigError(f'config.model.remove_conv={config.model.remove_conv} removes a layer of the '
                      f'paper layout; model.variant={config.model.variant!r} is fixed to its '
                      'published weights: use variant \'paper\' or remove_conv=0')
  model = config.model
  smallest = model_lib.min_input_size(model.variant, model.overlapping_pool, model.conv1_kernel,
                                      model.conv1_stride)
  if config.image_size < smallest:
    conv1 = model_lib.conv_layers(model.variant, model.conv1_kernel, model.conv1_stride)[0]
    raise ConfigError(f'config.image_size={config.image_size} is too small for model.variant='
                      f'{model.variant!r} with overlapping_pool={model.overlapping_pool} and a '
                      f'{conv1.kernel}x{conv1.kernel} stride {conv1.stride} conv1: the three max-pools '
                      f'need at least {smallest} (model.conv1_kernel=5, conv1_stride=1 take 19)')
  _validate_data_choices(config)
  _validate_dataset(config)


def _validate_data_choices(config: ml_collections.ConfigDict) -> None:
  """The subset, training-set evaluation and pixel statistics keys, against each other and the
  dataset."""
  synthetic = config.dataset in data.SYNTHETIC_DATASETS
  if synthetic and config.train_examples != -1:
    raise ConfigError(f'config.train_examples={config.train_examples} picks a subset of a TFDS or '
                      f'folder dataset; {config.dataset!r} is sized by synthetic_train_examples')
  if 0 < config.train_examples < config.eval_train_examples:
    raise ConfigError(f'config.eval_train_examples={config.eval_train_examples} is more than the '
                      f'config.train_examples={config.train_examples} the run trains on: use at most '
                      'that, or -1 for all of them')
  augment = config.augment
  if synthetic and augment.statistics == 'dataset':
    raise ConfigError(f"config.augment.statistics='dataset' measures a dataset's pixels; "
                      f'{config.dataset!r} images are network inputs already: use \'imagenet\'')
  given = [key for key in statistics.KEYS if augment[key] is not None]
  if given and augment.statistics != 'dataset':
    raise ConfigError(f'config.augment.{given[0]} is set, but augment.statistics='
                      f"{augment.statistics!r}: a run with statistics='dataset' records these "
                      'itself; leave them unset')
  if given and len(given) != len(statistics.KEYS):
    missing = [key for key in statistics.KEYS if key not in given]
    raise ConfigError(f'config.augment.{given[0]} is set but augment.{missing[0]} is not: a run '
                      'records all four statistics together; leave them unset')


def _validate_dataset(config: ml_collections.ConfigDict) -> None:
  """The dataset must be synthetic, an existing folder, a pixel store that holds the config's splits
  at its resize_size, or a TFDS builder (registered, or prepared in data_dir). TFDS is imported
  only for TFDS names, so synthetic and store runs stay free of it."""
  dataset, data_dir = config.dataset, config.data_dir
  if dataset in data.SYNTHETIC_DATASETS:
    return
  if dataset.startswith(data.STORE_PREFIX):
    try:
      store.check_config(config)
    except store.StoreError as e:
      raise ConfigError(str(e)) from None
    return
  if dataset.startswith(data.FOLDER_PREFIX):
    root = dataset[len(data.FOLDER_PREFIX):]
    if not os.path.isdir(root):
      raise ConfigError(f'config.dataset={dataset!r}: {root!r} is not a directory; a folder dataset '
                        f'is "folder:/path" with /path/train/<class>/*.jpg (see README)')
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (2 s; TensorFlow stays out)
  name, _ = tfds.core.naming.parse_builder_name_kwargs(dataset)
  if name.namespace or name.name in tfds.list_builders(with_community_datasets=False):
    return  # community namespaces are resolved by TFDS itself
  data_dirs = tfds.core.utils.file_utils.list_data_dirs(given_data_dir=data_dir)
  if any((epath.Path(d) / name.name).is_dir() for d in data_dirs):  # epath: also gs://
    return  # prepared without registered code: TFDS loads it from its files
  raise ConfigError(
      f'config.dataset={dataset!r} is invalid: expected a TFDS name (e.g. \'imagenet2012\'; no builder '
      f'{name.name!r} is registered or prepared in {", ".join(map(str, data_dirs))}), '
      f'"{data.FOLDER_PREFIX}/path", "{data.STORE_PREFIX}/path", '
      f'{" or ".join(map(repr, data.SYNTHETIC_DATASETS))}')


def validate_devices(config: ml_collections.ConfigDict, device_count: int,
                     process_count: int = 1) -> None:
  """Raises ConfigError unless the global batches split evenly over the data-parallel replicas
  (every device, or every pair of devices with `model_parallel=2`) and the processes, and
  `model_parallel=2` can pair up these devices for this model."""
  replicas, what_replicas = device_count, 'devices'
  if config.model_parallel == 2:
    from alexnet_jax import towers  # pylint: disable=g-import-not-at-top  (JAX; only here)
    try:
      towers.check_config(config, device_count, process_count)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    replicas, what_replicas = device_count // 2, 'device pairs (model_parallel=2)'
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key] if config[key] > 0 else config.batch_size
    for count, what in ((replicas, what_replicas), (process_count, 'processes')):
      if value % count:
        fits = [n for n in (value - value % count, value - value % count + count) if n > 0]
        raise ConfigError(
            f'config.{key}={value} does not split evenly over {count} {what}: use a multiple of '
            f'{count} (e.g. {" or ".join(map(str, fits))})')
