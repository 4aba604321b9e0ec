"""A one-minute run on a laptop CPU: a narrow AlexNet on a small learnable synthetic task, offline.

  python -m alexnet_jax.main --config=configs/smoke.py --workdir=/tmp/alexnet_smoke

Everything else is the paper's recipe (alexnet_jax/defaults.py) at a small scale: 67x67 inputs (the
smallest the paper layout's three overlapping pools accept), a quarter of every layer's width, 10
classes.
"""

import ml_collections

from alexnet_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.dataset = 'synthetic_learnable'
  config.num_classes = 10
  config.synthetic_train_examples = 2048
  config.synthetic_eval_examples = 500
  config.image_size = 67
  config.resize_size = 67
  config.batch_size = 64
  config.num_epochs = 4
  config.learning_rate = 0.01
  config.lr_schedule = 'cosine'
  config.model.width = 0.25
  config.log_every_steps = 8
  config.eval_every_steps = 32
  config.checkpoint_every_steps = 32
  return config
