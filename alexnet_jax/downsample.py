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
"""

from collections.abc import Sequence
import os

from absl import logging
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline

# The folder each split is written to; input_pipeline reads 'validation' from val/.
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
    pixels = input_pipeline.resize_shorter_side(image, shorter_side, antialias=True)
    return tf.io.encode_jpeg(pixels, quality=quality), tf.constant(True)

  def kept():
    is_jpeg = tf.io.is_jpeg(encoded)
    is_png = tf.strings.substr(encoded, 0, 8) == b'\x89PNG\r\n\x1a\n'
    return tf.cond(is_jpeg | is_png, lambda: (encoded, is_jpeg),
                   lambda: (tf.io.encode_png(image), tf.constant(False)))

  return tf.cond(tf.reduce_min(tf.shape(image)[:2]) > shorter_side, resized, kept)


def downsample(config: ml_collections.ConfigDict, out_dir: str, *, shorter_side: int = 256,
               quality: int = 95, splits: Sequence[str] = ('train', 'validation')) -> dict[str, int]:
  """Writes `splits` of `config.dataset` to `out_dir` as a folder dataset at `shorter_side`.

  Returns the number of images written per split. Folder datasets lose the images that cannot be
  decoded (as training would skip them).
  """
  for split in splits:
    if split not in _SPLIT_DIRS:
      raise ValueError(f'Cannot downsample split {split!r}: whole splits only, one of '
                       f'{sorted(_SPLIT_DIRS)}.')
    split_dir = os.path.join(out_dir, _SPLIT_DIRS[split])
    if os.path.isdir(split_dir) and os.listdir(split_dir):
      raise FileExistsError(f'{split_dir} is not empty: remove it, or downsample to another folder.')
  # Class names belong to the dataset, not a split: read them through the training split alone.
  info_config = config.copy_and_resolve_references()
  info_config.eval_split = config.train_split
  folders = class_dirs(input_pipeline.get_dataset_info(info_config).class_names)
  counts = {}
  for split in splits:
    split_dir = os.path.join(out_dir, _SPLIT_DIRS[split])
    for folder in folders:  # every class in every split: the folder reader takes classes from train/
      os.makedirs(os.path.join(split_dir, folder), exist_ok=True)
    images = input_pipeline.split_examples(config, split).map(
        lambda ex: (ex['label'], ex['index'], *downsampled(ex['encoded'], shorter_side, quality)),
        num_parallel_calls=tf.data.AUTOTUNE)
    count = 0
    for label, index, data, is_jpeg in tfds.as_numpy(images.prefetch(tf.data.AUTOTUNE)):
      name = f'{index:08d}.JPEG' if is_jpeg else f'{index:08d}.png'
      with open(os.path.join(split_dir, folders[label], name), 'wb') as f:
        f.write(data)
      count += 1
      if count % 10000 == 0:
        logging.info('%s: %d images written', split, count)
    counts[split] = count
    logging.info('%s: %d images in %s', split, count, split_dir)
  return counts

