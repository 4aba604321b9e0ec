"""A copy of a dataset with every image at shorter side 256, as the paper stored ImageNet (§2).

  python -m alexnet_jax.prepare --dataset=imagenet2012 --data_dir=D --downsample_to=DIR
  python -m alexnet_jax.main --config=configs/default.py --workdir=W --config.dataset=folder:DIR

The paper down-sampled every image to shorter side 256 once, before training. The training pipeline
can resize on the fly instead, from the original files, but that resize is most of what it spends
beyond the JPEG decode (docs/benchmarks.md, "Input pipeline"). From a copy at shorter side 256 a 227
training window is the crop itself, nothing is resized, and the smaller files decode ~2.3x faster:
per core the pipeline feeds 1.6-2x the images.

The copy is a folder dataset (docs/input_pipeline.md): DIR/train/<class>/<index>.JPEG and
DIR/val/<class>/..., every class folder present in both. Class folders carry the dataset's class
names (ImageNet's synset ids), prefixed with the label (`0007_name`) where sorting the names would not
give back the label order, so labels keep their numbers. Images whose shorter side is larger than
`shorter_side` are resized (bilinear with antialiasing: offline, quality is cheap) and stored as JPEG
at `quality`; smaller JPEGs and PNGs are copied byte for byte (a PNG stays a .png), other formats
become PNGs. The whole image is kept, not the paper's central 256x256 square: the pipeline takes that
square itself (`config.center_square`), so training crops are drawn from the same region as from the
original files, with either setting; training on the copy changes where the pixels come from, not the
recipe.

Writing the copy takes hours for ImageNet (~7 ms of CPU per image), so it resumes
(alexnet_jax/data/resumable.py).
"""

from collections.abc import Sequence
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import decode
from alexnet_jax.data import resumable
from alexnet_jax.data import sources

# The folder each split is written to; the folder reader reads 'validation' from val/.
_SPLIT_DIRS = {'train': 'train', 'validation': 'val', 'val': 'val', 'test': 'test'}


def class_dirs(names: Sequence[str]) -> list[str]:
  """Folder names for classes `names` (in label order) that sort back into label order."""
  safe = [name.replace(os.sep, '_') for name in names]
  if safe == sorted(safe) and len(set(safe)) == len(safe):
    return safe
  width = len(str(len(safe) - 1))
  return [f'{label:0{width}d}_{name}' for label, name in enumerate(safe)]


def downsampled(encoded: tf.Tensor, shorter_side: int, quality: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(file bytes, whether they are a JPEG, else a PNG) of the image at shorter side <= `shorter_side`.

  Larger images are resized and stored as JPEG; smaller JPEGs and PNGs keep their bytes; smaller
  images in other formats (BMP, GIF) become PNGs, losslessly.
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)

  def resized():
    pixels = decode.resize_shorter_side(image, shorter_side, antialias=True)
    return tf.io.encode_jpeg(pixels, quality=quality), tf.constant(True)

  def kept():
    is_jpeg = tf.io.is_jpeg(encoded)
    is_png = tf.strings.substr(encoded, 0, 8) == b'\x89PNG\r\n\x1a\n'
    return tf.cond(is_jpeg | is_png, lambda: (encoded, is_jpeg),
                   lambda: (tf.io.encode_png(image), tf.constant(False)))

  return tf.cond(tf.reduce_min(tf.shape(image)[:2]) > shorter_side, resized, kept)


RECORD = 'downsample.json'  # in the copy's root: how each split was made, and whether it is complete


def _settings(config: ml_collections.ConfigDict, split: str, shorter_side: int, quality: int
              ) -> dict[str, Any]:
  return {'dataset': config.dataset, 'data_dir': config.data_dir, 'split': split,
          'shorter_side': shorter_side, 'quality': quality}


def _index(name: str) -> int | None:
  """The example index of a file the copy holds (`00000042.JPEG`), None for anything else."""
  stem, extension = os.path.splitext(name)
  return int(stem) if stem.isdigit() and extension in ('.JPEG', '.png') else None


def downsample(config: ml_collections.ConfigDict, out_dir: str, *, shorter_side: int = 256,
               quality: int = 95, splits: Sequence[str] = ('train', 'validation')) -> dict[str, int]:
  """Writes `splits` of `config.dataset` to `out_dir` as a folder dataset at `shorter_side`.

  Returns the number of images per split. Folder datasets lose the images that cannot be decoded
  (as training would skip them).

  Resumable: a split is written to `<split dir>.partial` and renamed when complete, so an
  interrupted copy is never mistaken for a dataset; running the same command again writes only the
  images that are missing, and skips the splits that are complete. `out_dir/downsample.json` records
  each split's source and settings; a split folder made otherwise, or with other settings, is
  refused rather than mixed with.
  """
  dirs = resumable.SplitDirs(out_dir, RECORD, 'copy')
  for split in splits:
    if split not in _SPLIT_DIRS:
      raise errors.InvalidError(f'Cannot downsample split {split!r}: whole splits only, one of '
                                f'{sorted(_SPLIT_DIRS)}.')
    dirs.check(_SPLIT_DIRS[split], _settings(config, split, shorter_side, quality),
               elsewhere='downsample to another folder')
  folders = class_dirs(sources.class_names(config))
  counts = {}
  for split in splits:
    if made := dirs.complete(_SPLIT_DIRS[split]):
      logging.info('%s: complete already, %d images in %s', split, made['images'],
                   dirs.path(_SPLIT_DIRS[split]))
      counts[split] = made['images']
      continue
    # Sized first, which checks the split (prepared, decodable) before anything is written.
    written = np.zeros([int(sources.split_examples(config, split).cardinality())], bool)
    partial_dir = dirs.start(_SPLIT_DIRS[split], _settings(config, split, shorter_side, quality))
    for folder in folders:  # every class in every split: the folder reader takes classes from train/
      os.makedirs(os.path.join(partial_dir, folder), exist_ok=True)
      for name in os.listdir(os.path.join(partial_dir, folder)):
        if (index := _index(name)) is not None:
          written[index] = True
    if written.any():
      logging.info('%s: resuming, %d of %d images written before', split, written.sum(),
                   len(written))
    # Left out before their files are read: a copy resumed near its end reads only what it writes.
    images = sources.split_examples(config, split, skip=written).map(
        lambda ex: (ex['label'], ex['index'], *downsampled(ex['encoded'], shorter_side, quality)),
        num_parallel_calls=tf.data.AUTOTUNE)
    count = int(written.sum())
    for label, index, data, is_jpeg in tfds.as_numpy(images.prefetch(tf.data.AUTOTUNE)):
      name = f'{index:08d}.JPEG' if is_jpeg else f'{index:08d}.png'
      resumable.write_atomically(os.path.join(partial_dir, folders[label], name), data)
      count += 1
      if count % 10000 == 0:
        logging.info('%s: %d of %d images written', split, count, len(written))
    dirs.finish(_SPLIT_DIRS[split], images=count)
    counts[split] = count
    logging.info('%s: %d images in %s', split, count, dirs.path(_SPLIT_DIRS[split]))
  return counts
