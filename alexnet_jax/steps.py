"""The train state and the per-device train and eval steps: pure functions of (state, batch).

The steps are written once, as code that runs on one device and talks to the others only through
collectives over the `"data"` axis (gradients and metrics averaged with `pmean`, eval counts summed
with `psum`), much as the paper's two GPUs exchanged only what they had to. alexnet_jax/parallel.py
runs that same function on every device (shard_map, pmap, or the two-tower model-parallel layout).

A run is a pure function of its config: the dropout key of step s is `fold_in(seed key, s)` (and the
device index), and the learning-rate state is part of the optimizer state in `TrainState`.
"""

import functools
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax import optim
from alexnet_jax.data import pixels
from alexnet_jax.model import AlexNet

DATA_AXIS = 'data'


@struct.dataclass
class TrainState:
  step: jax.Array  # int32: number of steps taken, skipped non-finite ones included
  params: Any
  opt_state: Any
  # Non-finite steps are never applied (see train_step); these record them for the host to act on.
  nonfinite_steps: jax.Array  # int32
  first_nonfinite_step: jax.Array  # int32, the 0-based index of the first such update, or -1
  # The plateau schedule's bookkeeping (updated on the host after each eval).
  plateau_best_err: jax.Array  # float32, best eval top-1 error so far
  plateau_bad_evals: jax.Array  # int32, evals since it last improved
  plateau_reductions: jax.Array  # int32, how often the rate was divided


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> AlexNet:
  """The `AlexNet` of `config.model` (its keys are the module's fields) with `num_classes` outputs."""
  return AlexNet(num_classes=num_classes, **config.model.to_dict())


def create_train_state(config: ml_collections.ConfigDict, model: AlexNet,
                       tx: optax.GradientTransformation) -> TrainState:
  """A fresh state on the host (NumPy leaves), initialized from `config.seed`."""
  params_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  params = jax.jit(functools.partial(model.init, train=False))(params_key, dummy)['params']
  state = TrainState(
      step=np.int32(0), params=params, opt_state=tx.init(params),
      nonfinite_steps=np.int32(0), first_nonfinite_step=np.int32(-1),
      plateau_best_err=np.float32(np.inf), plateau_bad_evals=np.int32(0),
      plateau_reductions=np.int32(0))
  return jax.tree.map(np.asarray, state)


def dropout_root_key(config: ml_collections.ConfigDict) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)


def cross_entropy(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood of the true label."""
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def top_k_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example top-1 and top-5 errors (1.0 = wrong) from any scores ordered like the logits."""
  k = min(5, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  top1_err = (top[:, 0] != labels).astype(jnp.float32)
  top5_err = 1.0 - jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return top1_err, top5_err


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: AlexNet,
               tx: optax.GradientTransformation, dropout_key: jax.Array,
               augment: ml_collections.ConfigDict, image_size: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's share of the batch; gradients averaged over the `data` axis.

  The batch's uint8 pixels are normalized here, on the device (`pixels.model_input`, as `augment`
  sets it), after its crops are cut or resized to `image_size` from the images or regions it
  carries, if it does (`pixels.training_crops`).

  A step whose loss or gradients are not finite is not applied: params and optimizer state stay as
  they were, and the step is recorded in `nonfinite_steps` / `first_nonfinite_step` for the host to act
  on. Gradients are judged by their global norm (`optax.tree.norm`: the root of one sum of squares,
  which any NaN or Inf reaches, as does a norm beyond ~1e19 by overflowing: as good as infinite). The
  update itself is not checked here: checking it element by element cost 8% of a CPU step
  (docs/profiling.md); an update that overflows the params from finite gradients is caught on the
  host (`train.check_finite`) before anything is saved.
  """
  device_key = jax.random.fold_in(jax.random.fold_in(dropout_key, state.step),
                                  jax.lax.axis_index(DATA_AXIS))

  images = pixels.model_input(pixels.training_crops(batch, image_size), augment)

  def loss_fn(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': device_key})
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return cross_entropy(log_probs, batch['label']).mean(), log_probs

  (loss, log_probs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  top1_err, top5_err = top_k_errors(log_probs, batch['label'])
  step_metrics = {'loss': loss, 'top1_err': top1_err.mean(), 'top5_err': top5_err.mean()}
  if jax.lax.axis_size(DATA_AXIS) > 1:  # on one device the mean is the identity, and not free
    grads, step_metrics = jax.lax.pmean((grads, step_metrics), DATA_AXIS)
  finite = jnp.isfinite(step_metrics['loss']) & jnp.isfinite(optax.tree.norm(grads))

  def apply_update():
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), new_opt_state

  # A conditional, not a `where` over every parameter: the skipped branch costs nothing, and the
  # update stays one fused pass over the parameters.
  params, opt_state = jax.lax.cond(finite, apply_update, lambda: (state.params, state.opt_state))
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite,
                                     state.step, state.first_nonfinite_step))
  step_metrics['learning_rate'] = optim.current_learning_rate(opt_state)
  return new_state, step_metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: AlexNet,
              augment: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Sums of loss and errors over the unmasked examples of the whole (all-device) batch.

  With 10 crops (five per image in the batch, [B, 10, H, W, 3] once `pixels.model_input` has added
  their mirrors) the softmax predictions of the crops are averaged, as in §4.1 of the
  paper ("averaging the predictions made by the network's softmax layer on the ten patches").
  The average is taken in log space, log(mean(softmax)) = logsumexp(log_softmax) - log(10): a
  class whose probability underflows to 0 in every crop keeps a finite log-probability, where the
  log of the averaged probabilities would make that image's loss, and the eval's, infinite.
  """
  images = pixels.model_input(batch, augment)
  if images.ndim == 5:
    batch_size, crops = images.shape[:2]
    logits = model.apply({'params': params}, images.reshape((-1,) + images.shape[2:]), train=False)
    crop_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, crops, -1)
    log_probs = jax.nn.logsumexp(crop_log_probs, axis=1) - jnp.log(crops)
  else:
    logits = model.apply({'params': params}, images, train=False)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  top1_err, top5_err = top_k_errors(log_probs, batch['label'])
  mask = batch['mask'].astype(jnp.float32)
  sums = {'loss': jnp.sum(cross_entropy(log_probs, batch['label']) * mask),
          'top1_err': jnp.sum(top1_err * mask), 'top5_err': jnp.sum(top5_err * mask),
          'count': jnp.sum(mask)}
  return jax.lax.psum(sums, DATA_AXIS)
