"""AlexNet in PyTorch, for side-by-side speed runs (bench/train_step.py) and weight conversion tests.

Importing this module needs torch (`pip install torch==2.13.0`, or the `torch` extra); nothing in the
alexnet_jax package imports it.

* `PaperAlexNet`: the same network as `AlexNet(variant='paper')` in alexnet_jax/model.py: groups=2 in
  conv2/conv4/conv5, LRN after conv1/conv2, overlapping 3x3/2 pools, dropout after fc6 and fc7. PyTorch's
  `LocalResponseNorm` divides alpha by the window size, so alpha = 5 * 1e-4 gives the paper's 1e-4 (§3.3).
  torch flattens the 6x6x256 map in (c, h, w) order, ours in (h, w, c): the same architecture and cost,
  a permutation of fc6's rows apart.
* `TorchvisionAlexNet`: `torchvision.models.alexnet`'s layout with its exact module names (`features.0`,
  `features.3`, `features.6`, `features.8`, `features.10`, `classifier.1`, `classifier.4`,
  `classifier.6`), so its state dict has torchvision's keys; `width` narrows it for fast tests.
"""

import torch
from torch import nn

_LRN = dict(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # the paper's n=5, alpha=1e-4, beta=0.75, k=2


def _paper_feature_size(image_size: int) -> int:
  """Side of the map after conv1 (11x11/4) and the three 3x3/2 pools: 6 for 227x227 images."""
  size = (image_size - 11) // 4 + 1
  for _ in range(3):
    size = (size - 3) // 2 + 1
  return size


def _width(channels: int, width: float, groups: int = 1) -> int:
  """`channels * width`, rounded to a positive multiple of `groups` (as alexnet_jax/model.py rounds)."""
  return groups * max(1, round(channels * width / groups))


class PaperAlexNet(nn.Module):
  """The paper's AlexNet (§3.5, Figure 2) on [N, 3, image_size, image_size] images (227 in the paper)."""

  def __init__(self, num_classes: int = 1000, width: float = 1.0, groups: int = 2, lrn: bool = True,
               dropout_rate: float = 0.5, image_size: int = 227):
    super().__init__()
    c1, c2, c3, c4, c5 = (_width(96, width), _width(256, width, groups), _width(384, width),
                          _width(384, width, groups), _width(256, width, groups))
    hidden = max(1, round(4096 * width))
    norm = lambda: nn.LocalResponseNorm(**_LRN) if lrn else nn.Identity()
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4), nn.ReLU(inplace=True), norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups), nn.ReLU(inplace=True), norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.classifier = nn.Sequential(
        nn.Linear(c5 * _paper_feature_size(image_size)**2, hidden), nn.ReLU(inplace=True),
        nn.Dropout(dropout_rate),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout_rate),
        nn.Linear(hidden, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.features(x), 1))


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.alexnet's architecture and module names on [N, 3, 224, 224] images."""

  def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout_rate: float = 0.5):
    super().__init__()
    c1, c2, c3, c4, c5 = (_width(n, width) for n in (64, 192, 384, 256, 256))
    hidden = max(1, round(4096 * width))
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(dropout_rate), nn.Linear(c5 * 6 * 6, hidden), nn.ReLU(inplace=True),
        nn.Dropout(dropout_rate), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))
