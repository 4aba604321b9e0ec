"""Small image files for input-pipeline tests: folder datasets of real JPEGs and PNGs; and the check
that a training stream resumed at a step gives the batches of an uninterrupted one."""

from collections.abc import Callable, Iterator
import io
import os

import numpy as np
from PIL import Image

from bench import input_pipeline as input_bench


def image_array(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A photo-like random RGB image: uint8 [height, width, 3]."""
  return input_bench.photo_like_image(rng, height, width)


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


def assert_resumed_streams_match(batches: Callable[[int], Iterator[dict]], steps: int,
                                 starts: tuple[int, ...]) -> None:
  """`batches(start_step)` started at each of `starts` gives, key for key, the batches of the stream
  started at step 0, up to step `steps`."""
  stream = batches(0)
  uninterrupted = [next(stream) for _ in range(steps)]
  for start in starts:
    resumed = batches(start)
    for step in range(start, steps):
      batch = next(resumed)
      assert batch.keys() == uninterrupted[step].keys()
      for key in batch:
        np.testing.assert_array_equal(batch[key], uninterrupted[step][key])
