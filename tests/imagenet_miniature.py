"""A miniature of the two ILSVRC2012 tar files, laid out exactly like the real ones.

ILSVRC2012_img_train.tar holds one tar per synset (n01440764.tar, ...), each holding that synset's
JPEGs (n01440764_10026.JPEG, ...). ILSVRC2012_img_val.tar holds ILSVRC2012_val_00000001.JPEG, ...
TFDS labels validation images by zipping their sorted names with its shipped label list, so the
first N validation names get the real labels of the first N validation images.

As in the real archive, one training image is CMYK and one is a PNG under a .JPEG name (the TFDS
builder converts both by file name, so they keep their real names here).
"""

import io
import os
import tarfile

import numpy as np

import input_images

CMYK_IMAGE = 'n01739381_1309.JPEG'  # on the builder's list of CMYK images
PNG_IMAGE = 'n02105855_2933.JPEG'  # the builder's one PNG
TRAIN_IMAGES = {
    'n01440764': ['n01440764_10026.JPEG', 'n01440764_10027.JPEG', 'n01440764_10029.JPEG'],
    'n01739381': [CMYK_IMAGE, 'n01739381_1000.JPEG', 'n01739381_1001.JPEG'],
    'n02105855': [PNG_IMAGE, 'n02105855_1000.JPEG', 'n02105855_1001.JPEG'],
}
NUM_VAL_IMAGES = 5


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_imagenet_tars(manual_dir: str, seed: int = 0) -> str:
  """Writes ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into `manual_dir`; returns it."""
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as train_tar:
    for synset, names in TRAIN_IMAGES.items():
      synset_tar_bytes = io.BytesIO()
      with tarfile.open(fileobj=synset_tar_bytes, mode='w') as synset_tar:
        for name in names:
          image_format = {CMYK_IMAGE: 'CMYK', PNG_IMAGE: 'PNG'}.get(name, 'JPEG')
          _add(synset_tar, name, input_images.encode(input_images.image_array(rng, 40, 56),
                                                     image_format))
      _add(train_tar, f'{synset}.tar', synset_tar_bytes.getvalue())
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as val_tar:
    for i in range(1, NUM_VAL_IMAGES + 1):
      _add(val_tar, f'ILSVRC2012_val_{i:08d}.JPEG',
           input_images.encode(input_images.image_array(rng, 56, 40)))
  return manual_dir
