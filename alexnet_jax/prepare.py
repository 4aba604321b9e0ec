"""Builds a TFDS dataset once, before training; for ImageNet, from the two ILSVRC2012 tar files.

  python -m alexnet_jax.prepare --dataset=imagenet2012 --manual_dir=DIR [--data_dir=TFDS_DATA_DIR]

DIR holds ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB), downloaded after
registering at https://image-net.org/download-images. The real TFDS `imagenet2012` builder reads them
(no extraction needed), converts the few CMYK and PNG training images to RGB JPEG, labels the
validation images from the label file TFDS ships, and writes record files under --data_dir (TFDS's
default, ~/tensorflow_datasets, if unset): about 150 GB, a few hours on one machine. Training then
reads them with `--config.data_dir` set to the same --data_dir.

Other TFDS datasets (e.g. --dataset=imagenette/320px-v2) are downloaded and built the same way.
Fashion-MNIST builds offline from its four idx files (alexnet_jax/data/fashion_mnist.py):

  python -m alexnet_jax.prepare --dataset=fashion_mnist --manual_dir=/usr/share/datasets/fashion-mnist

  python -m alexnet_jax.prepare --dataset=imagenet2012 --data_dir=... --downsample_to=DIR [--shorter_side=256]

also writes (after building, if needed; a dataset built already needs no --manual_dir) a copy with
every image at shorter side 256, as the paper stored ImageNet (§2), for training with
--config.dataset=folder:DIR: the input pipeline then resizes nothing and decodes smaller files
(alexnet_jax/data/downsample.py). --dataset=folder:/path works too.

  python -m alexnet_jax.prepare --dataset=imagenet2012 --data_dir=... --store_to=DIR [--resize_size=256]

writes a pixel store: every image decoded once, as the central 256x256 square the paper stored
(§2), in memory-mapped NumPy shards, for training with --config.dataset=store:DIR: the host then
decodes nothing, it copies bytes (alexnet_jax/data/store.py). Both copies resume when run again.
"""

import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import cli
from alexnet_jax import defaults
from alexnet_jax import errors
from alexnet_jax import runtime
from alexnet_jax.data import downsample
from alexnet_jax.data import fashion_mnist
from alexnet_jax.data import folders
from alexnet_jax.data import store_writer

IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

_DATASET = flags.DEFINE_string('dataset', 'imagenet2012', 'TFDS name of the dataset to build.')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Folder with the manually downloaded files (ImageNet: the two tar files; '
    f'Fashion-MNIST: the four idx files, by default from {fashion_mnist.DEBIAN_DIR} where Debian '
    'installs them); not needed once the dataset is built.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data dir to write to; the same as config.data_dir when training.')
_DOWNSAMPLE_TO = flags.DEFINE_string(
    'downsample_to', None, 'Also write a folder dataset here with every image at --shorter_side '
    '(the paper\'s §2 storage); train on it with --config.dataset=folder:DIR.')
_SHORTER_SIDE = flags.DEFINE_integer('shorter_side', 256, 'Shorter side of the downsampled copy.')
_STORE_TO = flags.DEFINE_string(
    'store_to', None, 'Also write a pixel store here: every image decoded once as its central '
    '--resize_size square (the paper\'s §2 storage); train on it with --config.dataset=store:DIR.')
_RESIZE_SIZE = flags.DEFINE_integer(
    'resize_size', 256, 'Side of the pixel store\'s squares: the config.resize_size of training.',
    lower_bound=1)
_SPLITS = flags.DEFINE_list('splits', ['train', 'validation'],
                            'Splits the downsampled copy or the pixel store holds.')


def prepare(dataset: str, *, manual_dir: str | None = None, data_dir: str | None = None
            ) -> tfds.core.DatasetBuilder:
  """Builds `dataset` into `data_dir` and returns its builder.

  A dataset built already is left as it is, and needs no `manual_dir`: `--downsample_to` on a
  prepared ImageNet does not ask for the tar files again.
  """
  if dataset.startswith(folders.PREFIX) or dataset.startswith('synthetic'):
    raise errors.InvalidError(f'{dataset!r} is read as it is; there is nothing to prepare.')
  runtime.hide_gpus_from_tensorflow()  # preparing needs no accelerator
  builder = tfds.builder(dataset, data_dir=data_dir)
  if builder.is_prepared():
    logging.info('%s is built already in %s', dataset, builder.data_dir)
  else:
    if dataset.split('/')[0].split(':')[0] == 'imagenet2012':
      _check_imagenet_tars(manual_dir)
    if dataset == fashion_mnist.NAME and (manual_dir or os.path.isdir(fashion_mnist.DEBIAN_DIR)):
      # From idx files on disk, not the web: those given, else Debian's (also offline).
      idx_dir = manual_dir or fashion_mnist.DEBIAN_DIR
      logging.info('building %s from the idx files in %s', dataset, idx_dir)
      builder = fashion_mnist.build(idx_dir, data_dir)
    else:
      download_config = tfds.download.DownloadConfig(
          manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
      builder.download_and_prepare(download_config=download_config)
  for name, split in builder.info.splits.items():
    logging.info('%s %s: %d examples in %d files', dataset, name, split.num_examples,
                 split.num_shards)
  logging.info('%s is ready in %s; train with --config.data_dir=%s', dataset, builder.data_dir,
               data_dir or tfds.core.constants.DATA_DIR)
  return builder


def _check_imagenet_tars(manual_dir: str | None) -> None:
  if not manual_dir:
    raise errors.InvalidError(
        f'ImageNet needs --manual_dir=DIR, the folder holding {" and ".join(IMAGENET_TARS)} (from '
        'https://image-net.org/download-images).')
  manual_dir = os.path.expanduser(manual_dir)
  missing = [name for name in IMAGENET_TARS
             if not tf.io.gfile.exists(os.path.join(manual_dir, name))]
  if missing:
    raise errors.NotFoundError(
        f'{", ".join(missing)} not found in --manual_dir={manual_dir}. Download '
        f'{" and ".join(IMAGENET_TARS)} from https://image-net.org/download-images into that '
        'folder (do not extract them).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  dataset = _DATASET.value
  copies = _DOWNSAMPLE_TO.value or _STORE_TO.value
  if not (copies and dataset.startswith(folders.PREFIX)):
    prepare(dataset, manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value)
  config = defaults.get_config()
  config.dataset, config.data_dir = dataset, _DATA_DIR.value
  if _DOWNSAMPLE_TO.value:
    downsample.downsample(config, _DOWNSAMPLE_TO.value, shorter_side=_SHORTER_SIDE.value,
                          splits=_SPLITS.value)
    logging.info('train on the copy with --config.dataset=folder:%s', _DOWNSAMPLE_TO.value)
  if _STORE_TO.value:
    store_writer.write(config, _STORE_TO.value, resize_size=_RESIZE_SIZE.value,
                       splits=_SPLITS.value)
    logging.info('train on the store with --config.dataset=store:%s --config.resize_size=%d',
                 _STORE_TO.value, _RESIZE_SIZE.value)


if __name__ == '__main__':
  cli.run(main)
