"""Optimizers and learning-rate schedules (optax).

The paper's update rule (§5) keeps the learning rate inside the momentum buffer:

  v <- 0.9 v - 0.0005 * lr * w - lr * grad
  w <- w + v

`sgd` below is exactly that: decay added to the gradient, scaled by -lr, then accumulated by the momentum
trace. (optax.sgd scales after the trace, which differs from the paper whenever the rate changes.)

The learning rate lives in the optimizer state (`optax.inject_hyperparams`), so it is checkpointed with it:
`learning_rate` follows the step schedule (warmup, step, cosine), and `plateau_scale`, a plain number the
host may change between steps, multiplies it. The `plateau` schedule divides `plateau_scale` by 10 when
validation error stops improving (the paper's "divided the learning rate by 10 when the validation error
rate stopped improving").
"""

import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ('sgd', 'lars', 'adamw')
LR_SCHEDULES = ('plateau', 'step', 'cosine', 'constant')


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`learning_rate`, scaled linearly with the global batch if `scale_lr_with_batch`."""
  if config.scale_lr_with_batch:
    return config.learning_rate * config.batch_size / config.base_batch_size
  return config.learning_rate


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The rate as a function of the step. `plateau` is constant here; the host lowers it after evals."""
  base = base_learning_rate(config)
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule in ('plateau', 'constant'):
    main = optax.constant_schedule(base)
  elif config.lr_schedule == 'step':
    # Each entry divides the rate by 10 from that epoch on (epochs count from the start, warmup
    # included); an entry within the warmup takes effect when it ends, and a repeated one counts twice.
    scales = {}
    for epoch in config.step_epochs:
      boundary = max(int(epoch * steps_per_epoch) - warmup_steps, 0)
      scales[boundary] = scales.get(boundary, 1.0) * 0.1
    main = optax.piecewise_constant_schedule(base * scales.pop(0, 1.0), scales)
  elif config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f'config.lr_schedule={config.lr_schedule!r} is unknown; use one of {LR_SCHEDULES}')
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


def paper_sgd(learning_rate: float, momentum: float, weight_decay: float
              ) -> optax.GradientTransformation:
  """SGD with momentum and weight decay, in the paper's order (see module docstring)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     total_steps: int) -> optax.GradientTransformation:
  schedule = create_learning_rate_schedule(config, steps_per_epoch, total_steps)
  if config.optimizer == 'sgd':
    make = lambda lr: paper_sgd(lr, config.momentum, config.weight_decay)
  elif config.optimizer == 'lars':
    make = lambda lr: optax.lars(lr, weight_decay=config.weight_decay, momentum=config.momentum)
  elif config.optimizer == 'adamw':
    make = lambda lr: optax.adamw(lr, weight_decay=config.weight_decay)
  else:
    raise ValueError(f'config.optimizer={config.optimizer!r} is unknown; use one of {OPTIMIZERS}')
  scaled = lambda learning_rate, plateau_scale: make(learning_rate * plateau_scale)
  return optax.inject_hyperparams(scaled)(learning_rate=schedule, plateau_scale=1.0)


def current_learning_rate(opt_state: optax.OptState):
  """The rate the last update used (an array in the optimizer state)."""
  return opt_state.hyperparams['learning_rate'] * opt_state.hyperparams['plateau_scale']


def with_plateau_scale(opt_state: optax.OptState, scale: float) -> optax.OptState:
  """A copy of `opt_state` whose next updates use the scheduled rate times `scale`."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams['plateau_scale'] = jnp.asarray(scale, hyperparams['plateau_scale'].dtype)
  return opt_state._replace(hyperparams=hyperparams)
