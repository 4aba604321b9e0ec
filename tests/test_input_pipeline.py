"""The paper's augmentation, one function at a time, and the TFDS ImageNet path on `tfds.testing.mock_data`."""

import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import defaults
from alexnet_jax.data import decode
from alexnet_jax.data import draws
from alexnet_jax.data import geometry
from alexnet_jax.data import pipeline
from alexnet_jax.data import pixels
from alexnet_jax.data import sources
from alexnet_jax.data import statistics
import imagenet_mock
import input_images

# Crop positions as training draws them (`training_draws`), uniform in [0, 1)^2.
POSITIONS = [tf.constant(p, tf.float32) for p in draws.example_uniforms(
    7, np.zeros(40), np.arange(40), 2)]


def _jpeg(height: int, width: int, seed: int = 0) -> tf.Tensor:
  return tf.constant(input_images.encode(input_images.image_array(np.random.default_rng(seed),
                                                                  height, width)))


def _image(height: int = 12, width: int = 16) -> tf.Tensor:
  return tf.constant(np.random.default_rng(1).uniform(0, 255, (height, width, 3)), tf.float32)


# Augmentation -------------------------------------------------------------------------------------


@pytest.mark.parametrize('height,width', [(375, 500), (500, 375), (256, 256), (100, 180)])
def test_random_crop_window_lies_inside_the_image(height, width):
  windows = np.array([geometry.random_crop_window(
      position, tf.constant(height), tf.constant(width), resize_size=256, image_size=227).numpy()
                      for position in POSITIONS])
  y, x, h, w = windows.T
  expected_side = round(min(height, width) * 227 / 256)  # 227 resized pixels in source pixels
  np.testing.assert_array_equal(h, expected_side)
  np.testing.assert_array_equal(w, expected_side)
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  # Offsets are spread over the room the longer side leaves, not stuck at one place.
  longer_offsets = x if width > height else y
  if height != width:
    assert len(set(longer_offsets.tolist())) > 10


@pytest.mark.parametrize('height,width', [(375, 500), (500, 375), (256, 256)])
def test_center_square_crop_window_lies_inside_the_central_square(height, width):
  # The paper's crops come from the central 256x256 square of the resized image (§2, §4.1): in
  # source pixels, the central shorter-side square.
  windows = np.array([geometry.random_crop_window(
      position, tf.constant(height), tf.constant(width), resize_size=256, image_size=227,
      center_square=True).numpy() for position in POSITIONS])
  y, x, h, w = windows.T
  shorter = min(height, width)
  top, left = (height - shorter) // 2, (width - shorter) // 2
  np.testing.assert_array_equal(h, round(shorter * 227 / 256))
  np.testing.assert_array_equal(w, h)
  assert (y >= top).all() and (x >= left).all()
  assert (y + h <= top + shorter).all() and (x + w <= left + shorter).all()
  # Both offsets still spread over the square's room (44 source pixels here), and reach its ends.
  for offsets, start in ((y, top), (x, left)):
    assert len(set(offsets.tolist())) > 10
    assert offsets.min() - start <= 3 and start + shorter - h[0] - offsets.max() <= 3
  whole = np.array([geometry.random_crop_window(
      position, tf.constant(height), tf.constant(width), resize_size=256, image_size=227).numpy()
                    for position in POSITIONS])
  if height == width:  # the square is the whole image
    np.testing.assert_array_equal(windows, whole)
  else:  # without the switch, crops reach beyond the square
    longer = whole[:, 1] if width > height else whole[:, 0]
    start = left if width > height else top
    assert ((longer < start) | (longer + h[0] > start + shorter)).any()


def test_center_crop_window_is_centered():
  y, x, h, w = geometry.center_crop_window(
      tf.constant(375), tf.constant(500), resize_size=256, image_size=227).numpy()
  assert h == w == round(375 * 227 / 256)
  assert y == (375 - h) // 2 and x == (500 - w) // 2


@pytest.mark.parametrize('image_format', ['JPEG', 'PNG'])
def test_random_crop_decodes_a_resized_square(image_format):
  array = input_images.image_array(np.random.default_rng(0), 60, 80)
  encoded = tf.constant(input_images.encode(array, image_format))
  crop = decode.random_crop(POSITIONS[0], encoded, resize_size=36, image_size=32).numpy()
  assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
  # The crop is a resized piece of the image, rounded to whole grey levels: an exact match for the
  # PNG, JPEG loss aside otherwise.
  y, x, h, _ = geometry.random_crop_window(POSITIONS[0], tf.constant(60), tf.constant(80),
                                                 resize_size=36, image_size=32).numpy()
  expected = tf.image.resize(array[y:y + h, x:x + h], [32, 32]).numpy()
  error = np.abs(crop - expected)
  if image_format == 'PNG':
    assert error.max() <= 0.5 + 1e-3
  else:
    assert error.mean() < 12


def test_a_crop_already_at_the_training_size_is_not_resampled():
  # A dataset stored at shorter side 256 (the paper's §2 downsampling): the 227 window is the crop.
  array = input_images.image_array(np.random.default_rng(1), 36, 50)
  encoded = tf.constant(input_images.encode(array, 'PNG'))
  crop = decode.random_crop(POSITIONS[3], encoded, resize_size=36, image_size=36).numpy()
  y, x, h, w = geometry.random_crop_window(POSITIONS[3], tf.constant(36), tf.constant(50),
                                                 resize_size=36, image_size=36).numpy()
  assert h == w == 36
  np.testing.assert_array_equal(crop, array[y:y + 36, x:x + 36])


def test_training_draws_are_a_function_of_seed_epoch_and_example():
  config = defaults.get_config()
  epoch, index = np.repeat([0, 1], 2000), np.tile(np.arange(2000), 2)
  drawn = draws.training_draws(config, epoch, index)
  assert drawn['crop_position'].shape == (4000, 2) and drawn['crop_position'].dtype == np.float32
  assert drawn['flip'].dtype == bool and drawn['rgb_shift'].dtype == np.float32
  # Uniform positions (mean 1/2, variance 1/12), fair flips, each example its own draws.
  position = drawn['crop_position']
  assert (position >= 0).all() and (position < 1).all()
  np.testing.assert_allclose(position.mean(0), 0.5, atol=0.02)
  np.testing.assert_allclose(position.var(0), 1 / 12, atol=0.005)
  assert abs(np.corrcoef(position.T)[0, 1]) < 0.05
  assert 0.46 < drawn['flip'].mean() < 0.54
  assert len({tuple(p) for p in position}) == 4000  # fresh in each epoch too
  # The same (seed, epoch, index) gives the same draws, in any order and any company.
  again = draws.training_draws(config, epoch[::-7], index[::-7])
  for name in drawn:
    np.testing.assert_array_equal(again[name], drawn[name][::-7])
  config.seed = 1
  assert not np.array_equal(draws.training_draws(config, epoch, index)['crop_position'],
                            position)
  # Off switches: no flips, no shift.
  config.augment.flip, config.augment.pca_lighting = False, 0.0
  off = draws.training_draws(config, epoch, index)
  assert not off['flip'].any() and not off['rgb_shift'].any()


def test_lighting_shift_is_a_combination_of_the_imagenet_eigenvectors():
  config = defaults.get_config()
  shifts = draws.training_draws(config, np.zeros(4000), np.arange(4000))['rgb_shift']
  assert np.abs(shifts).max() > 0.5  # a few grey levels: 0.1 * 55.5 along the first component
  # The shift is sum_i alpha_i lambda_i p_i: solving for alpha recovers N(0, 0.1^2) coefficients,
  # independent of each other.
  eigenvectors = np.array(statistics.IMAGENET.eigenvectors)
  alphas = np.linalg.solve(eigenvectors, shifts.T.astype(np.float64)).T / np.array(
      statistics.IMAGENET.eigenvalues)
  np.testing.assert_allclose(alphas.mean(0), 0, atol=0.01)
  np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.05)
  assert np.abs(np.corrcoef(alphas.T) - np.eye(3)).max() < 0.06
  # alpha = e_i: lambda_i p_i, the i-th eigenvector (a column) scaled by its eigenvalue.
  np.testing.assert_allclose(draws.lighting_shifts(np.eye(3)),
                             (eigenvectors * np.array(statistics.IMAGENET.eigenvalues)).T,
                             rtol=1e-6)


def test_five_crop_is_the_corners_and_the_center():
  image = _image(12, 16)
  crops = decode.five_crop(image, 8).numpy()
  assert crops.shape == (5, 8, 8, 3)
  array = image.numpy()
  expected = [array[:8, :8], array[:8, 8:], array[4:, :8], array[4:, 8:], array[2:10, 4:12]]
  for crop, want in zip(crops, expected):
    np.testing.assert_array_equal(crop, want)


def test_resize_shorter_side():
  resized = decode.resize_shorter_side(tf.zeros([375, 500, 3], tf.uint8), 256)
  assert resized.shape == (256, 341, 3)


def _host_resize_config() -> ml_collections.ConfigDict:
  """The paper's recipe at 32 of 40, each crop resized on the host: the crops are 'image'."""
  config = defaults.get_config()
  config.resize_size, config.image_size, config.device_resize_scale = 40, 32, 0
  return config


def test_preprocess_train_takes_the_crop_at_its_position_or_the_center():
  config = _host_resize_config()
  encoded = _jpeg(48, 64)
  crops = [decode.preprocess_train(encoded, position, config)['image'].numpy()
           for position in POSITIONS[:8]]
  assert crops[0].dtype == np.uint8 and crops[0].shape == (32, 32, 3)
  assert len({crop.tobytes() for crop in crops}) == 8  # the position moves the crop
  # Without random_crop: the center crop, whatever the position.
  config.augment.random_crop = False
  center = decode.center_crop(encoded, resize_size=40, image_size=32).numpy()
  for position in POSITIONS[:3]:
    np.testing.assert_array_equal(
        decode.preprocess_train(encoded, position, config)['image'], center)


@pytest.mark.parametrize('center_square', [True, False])
def test_training_crops_follow_center_square(center_square):
  # A PNG at shorter side resize_size, so every crop is an exact copy of a 32x32 piece of it.
  array = input_images.image_array(np.random.default_rng(3), 40, 60)
  encoded = tf.constant(input_images.encode(array, 'PNG'))
  config = _host_resize_config()
  config.center_square = center_square
  lefts = set()
  for position in POSITIONS[:12]:
    crop = decode.preprocess_train(encoded, position, config)['image'].numpy()
    lefts |= {x for y in range(9) for x in range(29) if (array[y:y + 32, x:x + 32] == crop).all()}
  # The central square spans columns 10..49, so crops start at columns 10..18; the whole image
  # lets them start anywhere in 0..28.
  assert len(lefts) > 3
  assert lefts <= set(range(10, 19)) if center_square else not lefts <= set(range(10, 19))


# Training crops resized on the device: a region of the image holding the window, and where it lies.


@pytest.mark.parametrize('height,width', [(40, 60), (80, 50), (30, 36), (100, 120)])
@pytest.mark.parametrize('random_crop', [True, False])
def test_crops_resized_on_the_device_are_the_hosts(height, width, random_crop):
  # PNGs, which decode the same whatever the window: the crop resized from its region on the device
  # is the host's crop, pixel for pixel up to a float's last bit (test_pixels.py). 40x60 and 80x50: windows that fit the region (47 pixels
  # square at 32 of 40); 30x36: an image smaller than the region (padded); 100x120: a window larger
  # than the region (resized on the host).
  encoded = tf.constant(input_images.encode(
      input_images.image_array(np.random.default_rng(height), height, width), 'PNG'))
  host = _host_resize_config()
  device = _host_resize_config()
  device.device_resize_scale = 1.48
  host.augment.random_crop = device.augment.random_crop = random_crop
  side = geometry.device_region_size(device)
  assert side == 47
  for position in POSITIONS[:3]:
    crop = decode.preprocess_train(encoded, position, host)['image'].numpy()
    example = decode.preprocess_train(encoded, position, device)
    assert example['image'].shape == (side, side, 3) and example['image'].dtype == tf.uint8
    y, x, size = example['window'].numpy()
    assert 0 <= y and 0 <= x and y + size <= side and x + size <= side
    batch = {'image': example['image'].numpy()[None], 'window': example['window'].numpy()[None]}
    resized = np.asarray(pixels.resize_windows(batch, 32)['image'][0]).astype(int)
    assert np.abs(resized - crop).max() <= 1 and (resized == crop).mean() > 0.98
    if height < side:  # the region's rows below the image are padding
      assert not example['image'].numpy()[height:].any()


def test_crops_resized_on_the_device_from_a_jpeg():
  # A JPEG decodes slightly differently at the border of a window that starts elsewhere (chroma
  # upsampling): the region's crop matches the host's up to that.
  encoded = _jpeg(375, 500)
  host, device = defaults.get_config(), defaults.get_config()
  host.device_resize_scale = 0
  for position in POSITIONS[:4]:
    crop = decode.preprocess_train(encoded, position, host)['image'].numpy().astype(float)
    example = decode.preprocess_train(encoded, position, device)
    assert example['image'].shape == (336, 336, 3)
    batch = {k: example[k].numpy()[None] for k in ('image', 'window')}
    resized = np.asarray(pixels.resize_windows(batch, 227)['image'][0]).astype(float)
    assert np.abs(resized - crop).mean() < 0.5
    np.testing.assert_allclose(resized[2:-2, 2:-2], crop[2:-2, 2:-2], atol=3)


@pytest.mark.parametrize('height,width,window', [(375, 500, (10, 160, 332)), (375, 500, (43, 168, 332)),
                                                 (20, 50, (3, 30, 17)), (500, 400, (0, 0, 336))])
def test_region_around_holds_the_window(height, width, window):
  y, x, h, w = geometry.region_around(tf.constant(window + (window[2],)), tf.constant(height),
                                            tf.constant(width), 336).numpy()
  assert (h, w) == (min(height, 336), min(width, 336))
  assert 0 <= y <= window[0] and window[0] + window[2] <= y + h <= height
  assert 0 <= x <= window[1] and window[1] + window[2] <= x + w <= width


@pytest.mark.parametrize('height,width', [(375, 500), (500, 375)])
def test_eval_center_crop_matches_resize_then_crop(height, width):
  # The window decode and resize of the center crop against the whole image resized to shorter side
  # 256 and then cropped: the same picture, up to the window's rounding to whole source pixels (a
  # shift below half a source pixel) and the interpolation at the crop's border. On smooth content
  # such a shift moves pixels by about a grey level.
  y, x = np.mgrid[0:height, 0:width] / 40.0
  array = np.stack([np.sin(y) * np.cos(x), np.sin(x + y), np.cos(0.7 * y - x)], axis=-1)
  array = np.round(127.5 + 120 * array).astype(np.uint8)
  encoded = tf.constant(input_images.encode(array, 'PNG'))
  config = defaults.get_config()
  crop = decode.preprocess_eval(encoded, config).numpy().astype(np.float32)
  whole = decode.resize_shorter_side(tf.constant(array), 256)
  expected = decode.center_crop_image(whole, 227).numpy().astype(np.float32)
  assert crop.shape == expected.shape == (227, 227, 3)
  error = np.abs(crop - expected)
  assert error.mean() < 2 and np.median(error) <= 1, (error.mean(), np.median(error))


@pytest.mark.parametrize('center_square', [True, False])
def test_ten_crops_come_from_the_central_square_or_the_whole_image(center_square):
  # A PNG already at shorter side resize_size (nothing is resampled): the ten crops are exact copies.
  array = input_images.image_array(np.random.default_rng(2), 40, 60)
  config = defaults.get_config()
  config.resize_size, config.image_size, config.eval_crops = 40, 32, 10
  config.center_square = center_square
  crops = decode.preprocess_eval(tf.constant(input_images.encode(array, 'PNG')), config)
  region = array[:, 10:50] if center_square else array  # the paper's square: 40x40 in the middle
  np.testing.assert_array_equal(crops, decode.five_crop(tf.constant(region), 32))
  top_right = array[:32, 18:50] if center_square else array[:32, 28:60]
  np.testing.assert_array_equal(crops[1], top_right)


@pytest.mark.parametrize('height,width', [(375, 500), (500, 375)])
def test_ten_crop_square_decoded_as_a_window_matches_resize_then_crop(height, width):
  # The JPEG's central square decoded alone and resized to 256x256, against the whole image decoded,
  # resized to shorter side 256 and its central square cut: the same five crops up to a sub-pixel
  # shift and the interpolation at the square's border.
  y, x = np.mgrid[0:height, 0:width] / 40.0
  array = np.stack([np.sin(y) * np.cos(x), np.sin(x + y), np.cos(0.7 * y - x)], axis=-1)
  encoded = tf.constant(input_images.encode(np.round(127.5 + 120 * array).astype(np.uint8)))
  config = defaults.get_config()
  config.eval_crops = 10
  crops = decode.preprocess_eval(encoded, config).numpy().astype(np.float32)
  whole = decode.resize_shorter_side(tf.io.decode_jpeg(encoded, channels=3), 256)
  square = decode.center_crop_image(whole, 256)
  expected = decode.five_crop(square, 227).numpy().astype(np.float32)
  assert crops.shape == expected.shape == (5, 227, 227, 3)
  error = np.abs(crops - expected)
  assert error.mean() < 2 and np.median(error) <= 1, (error.mean(), np.median(error))


def test_preprocess_eval_shapes():
  config = defaults.get_config()
  config.resize_size, config.image_size = 40, 32
  image = decode.preprocess_eval(_jpeg(48, 64), config)
  assert image.shape == (32, 32, 3) and image.dtype == tf.uint8
  config.eval_crops = 10
  assert decode.preprocess_eval(_jpeg(64, 48), config).shape == (5, 32, 32, 3)


# imagenet2012 on mock data --------------------------------------------------------------------------

MOCK_TRAIN_FILES = [13, 13, 12, 12]  # examples per record file
MOCK_VALIDATION_FILES = [11]


def _mock_config(data_dir: str):
  config = defaults.get_config()
  config.data_dir = data_dir  # keys the pipeline's memos apart from other tests
  config.resize_size, config.image_size = 40, 32
  return config


@pytest.fixture
def mock_imagenet(tmp_path):
  """imagenet2012 metadata with tiny splits, and TFDS mocked to make up its examples."""
  with imagenet_mock.mocked(str(tmp_path / 'metadata'), MOCK_TRAIN_FILES,
                            MOCK_VALIDATION_FILES):
    yield str(tmp_path / 'data_dir')


def test_mock_imagenet_info(mock_imagenet):
  info = sources.get_dataset_info(_mock_config(mock_imagenet))
  assert info.num_classes == 1000
  assert info.num_train_examples == sum(MOCK_TRAIN_FILES)
  assert info.num_eval_examples == sum(MOCK_VALIDATION_FILES)
  assert info.class_names[0] == 'n01440764'


def test_mock_imagenet_train_batches(mock_imagenet):
  config = _mock_config(mock_imagenet)
  batches = pipeline.train_batches(config, start_step=0, local_batch_size=8,
                                         process_index=0, process_count=1)
  for _ in range(8):  # more than an epoch of 50
    batch = next(batches)
    # Regions of 47x47 (1.48 x 32) pixels around windows, resized to 32x32 on the device.
    assert batch['image'].shape == (8, 47, 47, 3) and batch['image'].dtype == np.uint8
    assert batch['window'].shape == (8, 3) and batch['window'].dtype == np.int32
    assert batch['flip'].shape == (8,) and batch['flip'].dtype == bool
    assert batch['rgb_shift'].shape == (8, 3) and batch['rgb_shift'].dtype == np.float32
    assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
    assert ((batch['label'] >= 0) & (batch['label'] < 1000)).all()
    assert batch['image'].std() > 10  # real pixels, not a constant
    # Resized and normalized on the device: inputs on a unit scale.
    images = pixels.model_input(pixels.resize_windows(batch, 32), config.augment)
    assert images.shape == (8, 32, 32, 3) and 0.2 < np.asarray(images).std() < 3


def test_mock_imagenet_resume_across_windows(mock_imagenet, monkeypatch):
  # Windows of two record files: an epoch of 50 is two windows, so seeks land in either.
  monkeypatch.setattr(sources, '_WINDOW_EXAMPLES', 20)
  config = _mock_config(mock_imagenet)
  kwargs = dict(local_batch_size=6, process_index=0, process_count=1)
  stream = pipeline.train_batches(config, start_step=0, **kwargs)
  uninterrupted = [next(stream) for _ in range(12)]  # 72 examples: into the second epoch
  for start in (3, 5, 9):
    resumed = pipeline.train_batches(config, start_step=start, **kwargs)
    for step in range(start, start + 3):
      batch = next(resumed)
      for key in ('image', 'flip', 'rgb_shift', 'label'):
        np.testing.assert_array_equal(batch[key], uninterrupted[step][key])


@pytest.mark.parametrize('eval_crops', [1, 10])
def test_mock_imagenet_eval_batches_pad_and_mask(mock_imagenet, eval_crops):
  config = _mock_config(mock_imagenet)
  config.eval_crops = eval_crops
  counts = []
  for process_index in range(3):
    batches = list(pipeline.eval_batches(config, local_batch_size=2,
                                               process_index=process_index, process_count=3))
    assert len(batches) == 2  # the largest shard: ceil(11 / 3) = 4 examples, 2 batches
    for batch in batches:
      expected = (2, 5, 32, 32, 3) if eval_crops == 10 else (2, 32, 32, 3)
      assert batch['image'].shape == expected and batch['image'].dtype == np.uint8
      assert batch['mask'].dtype == bool
      assert not batch['image'][~batch['mask']].any()  # padding is zeros
    counts.append(sum(int(b['mask'].sum()) for b in batches))
  # The shard sizes. That the shards hold every example once is checked on real record files
  # (tests/test_prepare.py): mock_data gives every slice of a split the same examples.
  assert counts == [3, 4, 4]


def test_unprepared_imagenet_names_the_prepare_command(tmp_path):
  config = _mock_config(str(tmp_path / 'empty'))
  with pytest.raises(sources.DatasetNotPreparedError) as error:
    sources.get_dataset_info(config)
  message = str(error.value)
  assert ('python -m alexnet_jax.prepare --dataset=imagenet2012 --manual_dir=DIR '
          f'--data_dir={tmp_path / "empty"}') in message
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert 'Traceback' not in message


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = _mock_config(str(tmp_path))
  config.dataset = 'no_such_dataset_xyz'
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'.*folder:"):
    sources.get_dataset_info(config)


# A script that keeps a training stream of the mock imagenet2012 in a global and exits: the stream
# is reading its next window (several record files, in threads) when the interpreter starts to exit.
_STREAM_ALIVE_AT_EXIT = textwrap.dedent("""
    import os, sys, tempfile
    sys.path.insert(0, 'tests')
    import imagenet_mock
    from alexnet_jax import defaults
    from alexnet_jax.data import pipeline, sources

    tmp = tempfile.mkdtemp()
    MOCK = imagenet_mock.mocked(os.path.join(tmp, 'metadata'), [13, 13, 12, 12] * 4, [11])
    MOCK.__enter__()  # for the rest of the process, which ends with the stream alive
    config = defaults.get_config()
    config.data_dir = os.path.join(tmp, 'data_dir')
    config.resize_size, config.image_size = 40, 32
    sources._WINDOW_EXAMPLES = 30  # windows of 3 record files, read in parallel
    STREAM = pipeline.train_batches(config, start_step=0, local_batch_size=8,
                                    process_index=0, process_count=1)
    next(STREAM)
    print('exiting', flush=True)
""")


def test_a_stream_alive_at_exit_ends_quietly():
  # TensorFlow's own log level as users have it: the traceback is logged as a warning.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0')
  result = subprocess.run([sys.executable, '-c', _STREAM_ALIVE_AT_EXIT], cwd=os.path.dirname(
      os.path.dirname(os.path.abspath(__file__))), env=env, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == 'exiting', result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
