r"""The five most probable classes of images:

  python -m alexnet_jax.predict --workdir=DIR [--checkpoint=latest|best|STEP] IMAGE [IMAGE ...]

Each image is preprocessed exactly as the eval split is (`input_pipeline.preprocess_eval` with
DIR/config.json: shorter side resized to `resize_size`, the center `image_size` crop or, with
`--eval_crops=10`, ten crops whose softmax outputs are averaged, then the config's normalization,
`pixels.model_input`), so a converted torchvision model gets torchvision's mean/std inputs and a model
trained here gets its own.

Class names: for TFDS datasets, their label names, with ImageNet's readable name in front of each
that is an ILSVRC2012 synset id (`imagenet2012`, `imagenette`, ...); the class folder names of
`folder:` datasets; `class k` where the names are unknown (a folder dataset no longer on disk) or do
not match the model's outputs.
"""

import functools
import sys

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from alexnet_jax import data
from alexnet_jax import evaluate
from alexnet_jax import pixels
from alexnet_jax.model import AlexNet

TOP_K = 5
_FOLDER_PREFIX = 'folder:'  # image_folders.PREFIX (that module imports TensorFlow)


@functools.cache
def _imagenet_readable_names() -> dict[str, str]:
  """Synset id -> readable name for the 1000 ILSVRC2012 classes, from the lists TFDS ships."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  from tensorflow_datasets.datasets.siscore import labels as imagenet_labels
  with open(imagenet_common.label_names_file(), encoding='utf-8') as f:
    synsets = f.read().split()
  # Both lists are in ILSVRC2012's label order (sorted synset ids), which torchvision also uses.
  return dict(zip(synsets, imagenet_labels.IMAGENET_LABELS_LIST, strict=True))


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """A readable name for each of the model's `config.num_classes` outputs."""
  if config.dataset.startswith(_FOLDER_PREFIX):
    try:
      names = data.class_names(config)
    except FileNotFoundError:  # the folder is gone; the model still predicts, numbering its classes
      names = None
  else:
    names = data.class_names(config)  # TFDS label names need no data; synthetic classes have none
    if names is not None:
      readable = _imagenet_readable_names()
      names = [f'{readable[n]} ({n})' if n in readable else n for n in names]
  if names is None or len(names) != config.num_classes:
    return [f'class {i}' for i in range(config.num_classes)]
  return list(names)


def preprocess(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval split's preprocessing of one image file, before normalization and mirrors: uint8
  [S, S, 3], or [5, S, S, 3] with `eval_crops=10`."""
  if config.eval_crops not in (1, 10):
    raise ValueError(f'eval_crops={config.eval_crops}: use 1 (center) or 10 (§4.1).')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only real images need it)
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    image = input_pipeline.preprocess_eval(tf.io.read_file(path), config).numpy()
  except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
    raise ValueError(f'{path}: cannot be read as an image ({e.message.splitlines()[0]}).') from e
  return image


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model: AlexNet, params, crops: jax.Array) -> jax.Array:
  """Softmax over classes, averaged over the crops of one image (§4.1)."""
  return jax.nn.softmax(model.apply({'params': params}, crops, train=False)).mean(axis=0)


def predict(loaded: evaluate.Loaded, paths: list[str], top_k: int = TOP_K
            ) -> list[list[tuple[str, float]]]:
  """For each image, its `top_k` (class name, probability) pairs, most probable first."""
  names = class_names(loaded.config)
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
  try:
    loaded = evaluate.load(options.workdir, options.checkpoint, eval_crops=options.eval_crops)
    results = predict(loaded, paths)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
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
  app.run(main)
