r"""Evaluates a workdir's checkpoint on its eval split:

  python -m alexnet_jax.evaluate --workdir=DIR [--checkpoint=latest|best|STEP] [--eval_crops=1|10]

DIR is a workdir of `alexnet_jax.main` or `alexnet_jax.convert`: its config.json says which model and
which data, its checkpoints hold the parameters. The numbers come from the training loop's own eval
(`train.evaluate`: every example once, 10-crop softmax averaging as in §4.1), so a checkpoint evaluated
here reproduces the eval record training wrote for it. The result is printed and appended to
DIR/metrics.jsonl as {"split": "eval", "step": ..., "checkpoint": "latest", "eval_crops": 10, ...}, and
to TensorBoard as a run of its own, DIR/tensorboard/evaluate_<N>crop (training's curves stay
training's). Nothing else in DIR is touched: the checkpoints are opened read-only, so a run may be
writing one meanwhile; in a read-only DIR the result is printed, with a warning that it could not be
recorded.
"""

import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from flax import struct
import jax
import ml_collections

from alexnet_jax import cli
from alexnet_jax import config_validation
from alexnet_jax import data
from alexnet_jax import errors
from alexnet_jax import metrics
from alexnet_jax import optim
from alexnet_jax import parallel as parallel_lib
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib


@struct.dataclass
class _EvalState:
  """The part of a train state the eval step reads (make_parallel's eval function uses `.params`)."""
  params: Any


def _eval_batch_size(config: ml_collections.ConfigDict) -> int:
  """The config's eval batch, rounded down to a multiple of this machine's device count."""
  batch_size = config.eval_batch_size if config.eval_batch_size > 0 else config.batch_size
  devices = jax.device_count()
  fitted = max(devices, batch_size - batch_size % devices)
  if fitted != batch_size:
    logging.info('eval batch %d -> %d, a multiple of the %d devices', batch_size, fitted, devices)
  return fitted


def evaluate_workdir(workdir: str, checkpoint: str = 'latest', **overrides: Any) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir`; appends and returns its metrics.jsonl record.

  `overrides`: eval_crops, eval_batch_size, data_dir, ... (config keys; None keeps config.json's).
  """
  # Data parallel whatever the run used: a model_parallel=2 checkpoint has the same parameter tree and
  # evaluates the same on any device count (training's device pairs may not exist here).
  overrides = {'model_parallel': 1, **overrides}
  config_validation.validate(workdir_lib.load_config(workdir, **overrides))
  loaded = workdir_lib.load(workdir, checkpoint, **overrides)
  config = loaded.config
  names = data.class_names(config)  # not get_dataset_info: it would check the training images too
  if names is not None and len(names) != config.num_classes:
    raise errors.InvalidError(
        f'{config.dataset} has {len(names)} classes but the model in {workdir} has '
        f'{config.num_classes}: its labels do not line up. Fine-tune a model on {config.dataset} '
        '(config.init_from) and evaluate that.')
  parallel = parallel_lib.make_parallel(config, loaded.model, optim.create_optimizer(config, 1, 1))
  state = parallel.put_state(_EvalState(params=loaded.params))
  start = time.time()
  results = train.evaluate(parallel, state, config, _eval_batch_size(config))
  record = {'loss': results['loss'], 'top1_err': results['top1_err'],
            'top5_err': results['top5_err'], 'num_examples': int(results['count']),
            'examples_per_sec': results['count'] / max(time.time() - start, 1e-9),
            'checkpoint': str(checkpoint), 'eval_crops': int(config.eval_crops)}
  try:
    writer = metrics.MetricsWriter(
        workdir, tensorboard_runs={'eval': f'evaluate_{config.eval_crops}crop'})
    try:
      writer.write(loaded.step, 'eval', **record)
    finally:
      writer.close()
  except OSError as e:
    logging.warning('could not record the result in %s (%s): it is printed only', workdir,
                    e.strerror or e)
  return {'step': loaded.step, 'split': 'eval'} | record


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  options = flags.FLAGS
  record = evaluate_workdir(options.workdir, options.checkpoint, eval_crops=options.eval_crops,
                            eval_batch_size=options.eval_batch_size, data_dir=options.data_dir)
  print(f'{options.workdir}: {options.checkpoint} checkpoint (step {record["step"]}), '
        f'{record["num_examples"]} images, {record["eval_crops"]} crop(s): '
        f'top-1 error {record["top1_err"]:.4f}, top-5 error {record["top5_err"]:.4f}, '
        f'loss {record["loss"]:.4f}')


def _define_flags() -> None:
  # Defined only when run as a program, as predict and neighbors import this module.
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or alexnet_jax.convert.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best (lowest eval top-1 error) or a step.')
  flags.DEFINE_integer('eval_crops', None, '1 (center) or 10 (corners, center, mirrors; §4.1); '
                       'default: config.json\'s.')
  flags.DEFINE_integer('eval_batch_size', None, 'Global eval batch; default: config.json\'s.')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir, if not config.json\'s.')
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
