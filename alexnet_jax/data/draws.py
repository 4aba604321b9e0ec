"""The random choices of §4.1 for training examples, drawn on the host with numpy.

Where each random crop lies, whether the image is mirrored, and its PCA lighting shift are a
function of (seed, epoch, example index) alone: counter-based random numbers (SplitMix64 of a key
hashed from the three), drawn for a whole window of examples at once. So the batch of step s is a
function of s, a resumed run draws exactly what an uninterrupted one did, and no TensorFlow random
op runs per image (each small op in a tf.data map costs about a microsecond; drawing these there
cost ~4% of a decode, docs/benchmarks.md, "Input pipeline"). The flip and the shift are applied on
the device (alexnet_jax/data/pixels.py).
"""

import ml_collections
import numpy as np

from alexnet_jax.data import statistics


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finalizer: a bijection of uint64 arrays whose outputs for nearby inputs look
  independent (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's counter increment


def example_uniforms(seed: int, epoch: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
  """float64 [n, count], uniform in (0, 1): `count` random numbers for each example `index` [n] of
  `epoch` [n], a function of (seed, epoch, index) alone (counter-based: SplitMix64 of a key hashed
  from the three)."""
  key = np.full(len(index), seed % 2**64, np.uint64)
  for part in (epoch, index):
    key = _mix64(_mix64(key + _GOLDEN_GAMMA) ^ np.asarray(part).astype(np.uint64))
  counters = key[:, None] + _GOLDEN_GAMMA * np.arange(1, count + 1, dtype=np.uint64)
  return ((_mix64(counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def lighting_shifts(alpha: np.ndarray, pca: statistics.Statistics = statistics.IMAGENET
                    ) -> np.ndarray:
  """sum_i alpha_i lambda_i p_i for each row of `alpha` [n, 3], with the eigenvalues lambda_i and
  eigenvectors p_i of `pca` (ImageNet's, or the training split's): the RGB shifts of §4.1, float32
  [n, 3]. Each is added to every pixel of its image on the device (`pixels.model_input`)."""
  eigenvectors = np.asarray(pca.eigenvectors)  # [rgb, component]
  return ((alpha * np.asarray(pca.eigenvalues)) @ eigenvectors.T).astype(np.float32)


def training_draws(config: ml_collections.ConfigDict, epoch: np.ndarray, index: np.ndarray
                   ) -> dict[str, np.ndarray]:
  """The random choices of §4.1 for training examples `index` [n] in `epoch` [n], from
  (config.seed, epoch, index) alone: 'crop_position' float32 [n, 2] in [0, 1), where the random
  crop lies (`geometry.random_crop_window`); 'flip' bool [n], whether to mirror the image, True with
  probability 1/2 (False without `augment.flip`); 'rgb_shift' float32 [n, 3], the lighting shift
  with alpha_i ~ N(0, pca_lighting^2) along the eigenvectors `augment.statistics` chooses (zeros
  without `augment.pca_lighting`).

  The flip and the shift are applied on the device (`pixels.model_input`).
  """
  uniform = example_uniforms(int(config.seed), epoch, index, 9)
  augment = config.augment
  flip = uniform[:, 2] < 0.5 if augment.flip else np.zeros(len(index), bool)
  # Box-Muller: three standard normals from six uniforms.
  normal = np.sqrt(-2 * np.log(uniform[:, 3:6])) * np.cos(2 * np.pi * uniform[:, 6:9])
  return {'crop_position': np.minimum(uniform[:, :2], 1 - 2.0**-24).astype(np.float32),
          'flip': flip,
          'rgb_shift': lighting_shifts(normal * augment.pca_lighting, statistics.of(augment))}
