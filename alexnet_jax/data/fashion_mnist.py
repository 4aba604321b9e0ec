"""Fashion-MNIST as the TFDS dataset `fashion_mnist`, built from its idx files on disk.

TFDS's own `fashion_mnist` builder downloads the four idx files from the dataset's web site. Where
they are already on disk (Debian's `dataset-fashion-mnist` installs them in
/usr/share/datasets/fashion-mnist; any copy of the originals, gzipped or not, will do), `build`
writes the same dataset from them, offline:

  python -m alexnet_jax.prepare --dataset=fashion_mnist --manual_dir=/usr/share/datasets/fashion-mnist

(without --manual_dir, prepare looks in DEBIAN_DIR before it tries the web).

It uses TFDS's registered builder class for everything but finding the files: the same name,
version, features (28x28x1 PNG images, the ten ClassLabel names), splits ('train', 60,000; 'test',
10,000) and record files. Training then reads it with `--config.dataset=fashion_mnist` exactly as
it would a copy TFDS downloaded (`tfds.builder('fashion_mnist')`). The idx files' own headers give
the image counts, so smaller files (tests) build smaller splits.
"""

import os
import struct

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from alexnet_jax import errors

NAME = 'fashion_mnist'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'  # where dataset-fashion-mnist installs the files
# The four files, as the dataset's site names them; each may also be gzipped (NAME.gz).
FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # idx headers: uint8 data, 3 and 1 dimensions
_IMAGE_SIDE = 28


class IdxFileError(errors.InvalidError):
  """An idx file is missing, is not an idx file of the expected kind, or disagrees with its pair."""


def find_files(directory: str) -> dict[str, str]:
  """The path of each of the four idx files in `directory` (plain or .gz), by their role."""
  found, missing = {}, []
  for role, name in FILES.items():
    paths = [os.path.join(directory, name + suffix) for suffix in ('', '.gz')]
    existing = [p for p in paths if os.path.isfile(p)]
    if existing:
      found[role] = existing[0]
    else:
      missing.append(name)
  if missing:
    raise IdxFileError(
        f'{directory} lacks {", ".join(missing)} (or their .gz). Fashion-MNIST\'s four idx files '
        'come with Debian\'s dataset-fashion-mnist (in /usr/share/datasets/fashion-mnist) or from '
        'https://github.com/zalandoresearch/fashion-mnist.')
  return found


def idx_count(path: str, magic: int) -> int:
  """The number of items an (uncompressed) idx file holds, checked against its kind and size."""
  with open(path, 'rb') as f:
    header = f.read(16 if magic == _IMAGES_MAGIC else 8)
  size = os.path.getsize(path)
  if len(header) < 8 or struct.unpack('>I', header[:4])[0] != magic:
    kind = 'images (magic 2051)' if magic == _IMAGES_MAGIC else 'labels (magic 2049)'
    raise IdxFileError(f'{path} is not an idx file of {kind}.')
  count = struct.unpack('>I', header[4:8])[0]
  if magic == _IMAGES_MAGIC:
    rows, columns = struct.unpack('>II', header[8:16])
    if (rows, columns) != (_IMAGE_SIDE, _IMAGE_SIDE) or size != 16 + count * rows * columns:
      raise IdxFileError(f'{path}: {count} images of {rows}x{columns} in {size} bytes; Fashion-MNIST '
                         f'images are {_IMAGE_SIDE}x{_IMAGE_SIDE}, one byte a pixel.')
  elif size != 8 + count:
    raise IdxFileError(f'{path}: {count} labels in {size} bytes; expected one byte a label.')
  return count


class _LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
  """TFDS's `fashion_mnist` builder, reading the idx files from the manual dir, not the web."""

  name = NAME
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put Fashion-MNIST\'s four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, '
      't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzipped or not) in the manual dir.')

  def _split_generators(self, dl_manager):
    files = dl_manager.extract(find_files(os.fspath(dl_manager.manual_dir)))  # .gz: unpacked
    generators = []
    for split, prefix in ((tfds.Split.TRAIN, 'train'), (tfds.Split.TEST, 'test')):
      images, labels = os.fspath(files[f'{prefix}_images']), os.fspath(files[f'{prefix}_labels'])
      count = idx_count(images, _IMAGES_MAGIC)
      if idx_count(labels, _LABELS_MAGIC) != count:
        raise IdxFileError(f'{images} holds {count} images but {labels} holds '
                           f'{idx_count(labels, _LABELS_MAGIC)} labels.')
      generators.append(tfds.core.SplitGenerator(
          name=split, gen_kwargs=dict(num_examples=count, data_path=images, label_path=labels)))
    return generators


def build(manual_dir: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Writes `fashion_mnist` into `data_dir` (TFDS's default if None) from the idx files in
  `manual_dir`; returns the registered builder that reads it back."""
  manual_dir = os.path.expanduser(manual_dir)
  find_files(manual_dir)  # a clear error before TFDS starts
  builder = _LocalFashionMNIST(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return tfds.builder(NAME, data_dir=data_dir)
