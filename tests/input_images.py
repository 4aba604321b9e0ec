"""Small image files for input-pipeline tests: folder datasets of real JPEGs and PNGs."""

import io
import os

import numpy as np
from PIL import Image


def image_array(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth random RGB image (natural images are mostly low-frequency): uint8 [height, width, 3]."""
  coarse = rng.uniform(0, 255, size=(max(2, height // 16), max(2, width // 16), 3))
  image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
  noise = rng.normal(0, 8, size=(height, width, 3))
  return np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, image_format: str = 'JPEG', quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  image = Image.fromarray(array)
  if image_format == 'CMYK':
    image.convert('CMYK').save(buffer, 'JPEG', quality=quality)
  elif image_format == 'JPEG':
    image.save(buffer, 'JPEG', quality=quality)
  else:
    image.save(buffer, image_format)
  return buffer.getvalue()


def write_folder_dataset(root: str, *, classes: int = 3, train_per_class: int = 6,
                         val_per_class: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0,
                         val_dir: str = 'val') -> str:
  """ROOT/train/class_k/*.jpg (one PNG per class) and ROOT/<val_dir>/class_k/*.jpg; returns ROOT."""
  rng = np.random.default_rng(seed)
  for split, count in (('train', train_per_class), (val_dir, val_per_class)):
    for k in range(classes):
      directory = os.path.join(root, split, f'class_{k}')
      os.makedirs(directory, exist_ok=True)
      for i in range(count):
        height, width = size if i % 2 == 0 else size[::-1]  # portrait and landscape
        is_png = split == 'train' and i == 1
        name = f'{k}_{i}.png' if is_png else f'{k}_{i}.jpg'
        with open(os.path.join(directory, name), 'wb') as f:
          f.write(encode(image_array(rng, height, width), 'PNG' if is_png else 'JPEG'))
  return root
