"""The on-device end of the preprocessing: uint8 pixels (or regions to resize crops from), flips and
lighting shifts to the network's input."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import defaults
from alexnet_jax.data import pixels
from alexnet_jax.data import statistics


def _pixels(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_mean_subtracted_and_std_divided_per_channel():
  augment = defaults.get_config().augment
  images = _pixels((2, 5, 4, 3))
  inputs = np.asarray(pixels.model_input({'image': images}, augment))
  assert inputs.dtype == np.float32
  expected = (images.astype(np.float64) - statistics.IMAGENET.mean) / statistics.IMAGENET.std
  np.testing.assert_allclose(inputs, expected, rtol=1e-5, atol=1e-5)


def test_switches_off_leave_the_pixel_scale():
  augment = defaults.get_config().augment
  augment.subtract_mean = False
  augment.divide_std = False
  images = _pixels((2, 3, 3, 3))
  np.testing.assert_array_equal(pixels.model_input({'image': images}, augment),
                                images.astype(np.float32))
  augment.subtract_mean = True  # the paper's scale: 0..255 minus the mean
  np.testing.assert_allclose(pixels.model_input({'image': images}, augment),
                             images - np.float32(statistics.IMAGENET.mean), atol=1e-4)


def test_lighting_shifts_every_pixel_of_an_image_by_its_own_rgb_vector():
  augment = defaults.get_config().augment
  images = _pixels((3, 6, 5, 3))
  shifts = np.array([[4.0, -2.0, 1.5], [0.0, 0.0, 0.0], [-7.0, 3.0, 0.5]], np.float32)
  shifted = np.asarray(pixels.model_input({'image': images, 'rgb_shift': shifts}, augment))
  plain = np.asarray(pixels.model_input({'image': images}, augment))
  moved = (shifted - plain) * np.float32(statistics.IMAGENET.std)  # back on the pixel scale
  for image, shift in zip(moved, shifts):
    np.testing.assert_allclose(image, np.broadcast_to(shift, image.shape), atol=1e-3)


def test_flip_mirrors_exactly_the_marked_images():
  augment = defaults.get_config().augment
  images = _pixels((4, 3, 5, 3))
  flip = np.array([True, False, False, True])
  mirrored = np.asarray(pixels.flipped({'image': images, 'flip': flip}))
  for image, out, mirror in zip(images, mirrored, flip):
    np.testing.assert_array_equal(out, image[:, ::-1] if mirror else image)
  np.testing.assert_array_equal(pixels.flipped({'image': images}), images)
  np.testing.assert_allclose(pixels.model_input({'image': images, 'flip': flip}, augment),
                             pixels.model_input({'image': mirrored}, augment), rtol=1e-6)


def test_five_crops_become_the_ten_with_their_mirrors_and_float_inputs_pass():
  augment = defaults.get_config().augment
  crops = _pixels((2, 5, 4, 6, 3))
  inputs = np.asarray(pixels.model_input({'image': crops}, augment))
  assert inputs.shape == (2, 10, 4, 6, 3) and inputs.dtype == np.float32
  normalized = np.asarray(pixels.model_input({'image': crops.reshape(10, 4, 6, 3)}, augment))
  normalized = normalized.reshape(crops.shape)
  np.testing.assert_allclose(inputs[:, :5], normalized, atol=1e-6)
  np.testing.assert_allclose(inputs[:, 5:], normalized[:, :, :, ::-1], atol=1e-6)
  # Synthetic sources deliver model inputs already: passed through untouched, but mirrored as crops.
  floats = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
  assert pixels.model_input({'image': floats}, augment) is floats
  five = np.stack([floats] * 5, axis=1)
  np.testing.assert_array_equal(pixels.model_input({'image': five}, augment)[:, 7],
                                floats[:, :, ::-1])


def test_model_input_jits():
  augment = defaults.get_config().augment
  batch = {'image': _pixels((2, 4, 4, 3)), 'flip': np.array([True, False]),
           'rgb_shift': np.ones((2, 3), np.float32)}
  np.testing.assert_allclose(jax.jit(lambda b: pixels.model_input(b, augment))(batch),
                             pixels.model_input(batch, augment), rtol=1e-6)


@pytest.mark.parametrize('size', [5, 9, 12, 17])
def test_resize_windows_is_tensorflows_bilinear_resize(size):
  # Windows of several sizes (shrunk, kept, enlarged to 9) at several places in 20x20 regions: each
  # crop is TensorFlow's bilinear resize of its window, rounded, as the pipeline makes it on the host,
  # up to the last bit of a float (a value within a rounding error of .5 may round the other way).
  rng = np.random.default_rng(size)
  regions = rng.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
  window = np.array([[0, 0, size], [20 - size, 20 - size, size], [1, 3, size], [2, 0, size]], np.int32)
  crops = np.asarray(jax.jit(lambda b: pixels.resize_windows(b, 9))(
      {'image': regions, 'window': window, 'label': np.arange(4)})['image'])
  assert crops.shape == (4, 9, 9, 3) and crops.dtype == np.uint8
  for region, (y, x, side), crop in zip(regions, window, crops):
    expected = tf.round(tf.image.resize(tf.constant(region[y:y + side, x:x + side], tf.float32),
                                        [9, 9], method='bilinear'))
    difference = np.abs(crop.astype(int) - expected.numpy())
    assert difference.max() <= 1 and (difference == 0).mean() > 0.98


def test_resize_windows_leaves_a_batch_of_crops_as_it_is():
  batch = {'image': np.zeros((2, 9, 9, 3), np.uint8), 'label': np.arange(2)}
  resized = pixels.resize_windows(batch, 9)
  assert resized.keys() == batch.keys() and resized['image'] is batch['image']


def test_training_crops_cuts_a_stores_squares_at_their_offsets():
  images = _pixels((3, 12, 12, 3))
  offset = np.array([[0, 0], [5, 2], [1, 5]], np.int32)
  batch = {'image': images, 'crop_offset': offset, 'label': np.arange(3)}
  cut = jax.jit(lambda b: pixels.training_crops(b, 7))(batch)
  assert cut.keys() == {'image', 'label'} and cut['image'].dtype == np.uint8
  for image, (y, x), crop in zip(images, offset, np.asarray(cut['image'])):
    np.testing.assert_array_equal(crop, image[y:y + 7, x:x + 7])
  # Regions with windows are resized, crops pass as they are.
  window = np.array([[0, 0, 12]] * 3, np.int32)
  resized = pixels.training_crops({'image': images, 'window': window}, 6)['image']
  assert resized.shape == (3, 6, 6, 3)
  assert pixels.training_crops({'image': images}, 12)['image'] is images
