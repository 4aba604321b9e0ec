"""The paper's recipe: AlexNet on ImageNet (Krizhevsky, Sutskever, Hinton, 2012).

Run it with:

  python -m alexnet_jax.main --config=configs/default.py --workdir=/path/to/workdir

ImageNet must be prepared first (see README, "ImageNet"):

  python -m alexnet_jax.prepare --dataset=imagenet2012 --manual_dir=/path/to/tars

Every key and its default, each with the paper section it follows, is in alexnet_jax/defaults.py:
this config is those defaults. Any key can be overridden on the command line, e.g.
`--config.model.groups=1`.
"""

import ml_collections

from alexnet_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  return defaults.get_config()
