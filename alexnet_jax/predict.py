r"""The five most probable classes of images:

  python -m alexnet_jax.predict --workdir=DIR [--checkpoint=latest|best|STEP] IMAGE [IMAGE ...]

Each image is preprocessed exactly as the eval split is (`decode.preprocess_eval` with
DIR/config.json: shorter side resized to `resize_size`, the center `image_size` crop or, with
`--eval_crops=10`, ten crops whose softmax outputs are averaged, then the config's normalization,
`pixels.model_input`), so a converted torchvision model gets torchvision's mean/std inputs and a model
trained here gets its own.

Class names: `data.readable_class_names` (TFDS label names with ImageNet's readable names, class
folder names, or `class k` where they are unknown).
"""

import functools
import os

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from alexnet_jax import cli
from alexnet_jax import data
from alexnet_jax import errors
from alexnet_jax import runtime
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import pixels
from alexnet_jax.model import AlexNet

TOP_K = 5


def preprocess(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval split's preprocessing of one image file, before normalization and mirrors: uint8
  [S, S, 3], or [5, S, S, 3] with `eval_crops=10`."""
  if config.eval_crops not in (1, 10):
    raise errors.InvalidError(f'eval_crops={config.eval_crops}: use 1 (center) or 10 (§4.1).')
  if not os.path.isfile(path):
    raise errors.NotFoundError(f'{path}: cannot be read: no such file.')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only real images need it)
  from alexnet_jax.data import decode  # pylint: disable=g-import-not-at-top
  runtime.hide_gpus_from_tensorflow()
  try:
    image = decode.preprocess_eval(tf.io.read_file(path), config).numpy()
  except tf.errors.InvalidArgumentError:
    # TensorFlow's own message is its op's internals ("{{function_node __wrapped__...}}").
    raise errors.InvalidError(f'{path}: cannot be read as an image: it is not a JPEG, PNG, GIF or '
                              'BMP file that decodes.') from None
  return image


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model: AlexNet, params, crops: jax.Array) -> jax.Array:
  """Softmax over classes, averaged over the crops of one image (§4.1)."""
  return jax.nn.softmax(model.apply({'params': params}, crops, train=False)).mean(axis=0)


def predict(loaded: workdir_lib.Loaded, paths: list[str], top_k: int = TOP_K
            ) -> list[list[tuple[str, float]]]:
  """For each image, its `top_k` (class name, probability) pairs, most probable first."""
  names = data.readable_class_names(loaded.config)
  results = []
  for path in paths:
    batch = {'image': preprocess(path, loaded.config)[None]}
    images = pixels.model_input(batch, loaded.config.augment)
    crops = images.reshape((-1,) + images.shape[-3:])  # 1 or 10
    probs = np.asarray(_probabilities(loaded.model, loaded.params, crops))
    top = np.argsort(-probs)[:top_k]
    results.append([(names[i], float(probs[i])) for i in top])
  return results


def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files after the flags')
  options = flags.FLAGS
  loaded = workdir_lib.load(options.workdir, options.checkpoint, eval_crops=options.eval_crops)
  results = predict(loaded, paths)
  for path, top in zip(paths, results):
    print(path)
    for name, probability in top:
      print(f'  {probability:.4f}  {name}')


def _define_flags() -> None:
  # Defined only when run as a program, as neighbors imports this module.
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or alexnet_jax.convert.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best (lowest eval top-1 error) or a step.')
  flags.DEFINE_integer('eval_crops', None, '1 or 10 crops per image; default: config.json\'s.')
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
