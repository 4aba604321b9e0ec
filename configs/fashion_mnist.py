"""The paper's network and recipe on Fashion-MNIST (28x28 grey product photos, 10 classes), on a CPU.

  python -m alexnet_jax.prepare --dataset=fashion_mnist --data_dir=D      # from Debian's idx files
  python -m alexnet_jax.main --config=configs/fashion_mnist.py --workdir=W --config.data_dir=D
  # faster: a pixel store of the squares, read without decoding (README, "Pixel store")
  python -m alexnet_jax.prepare --dataset=fashion_mnist --data_dir=D --store_to=S --resize_size=76
  python -m alexnet_jax.main --config=configs/fashion_mnist.py --workdir=W --config.dataset=store:S

Everything not listed here is the paper's (alexnet_jax/defaults.py): the layout with LRN,
overlapping pools and the two groups, ReLU, dropout 0.5 on fc6 and fc7, SGD with momentum 0.9 and
weight decay 5e-4, batch 128, random crops, flips and PCA lighting. The departures, each undone by
a point of configs/sweeps/fashion_mnist_departures.py (docs/ablations.md, "Why the recipe learns
slowly here": 3 seeds, 2 epochs, the change in test top-1 error with its 95% interval):

  * 28x28 images resized to 76 and cropped to 67: 67 is the smallest input the paper layout's three
    overlapping pools accept, and 67/76 keeps the paper's crop-to-image ratio (227/256).
  * model.width 0.25: a quarter of every layer, for a CPU. Width 0.5: -1.3 [-2.4, -0.1] points, for
    1.7x the time.
  * augment.statistics 'dataset': inputs normalized with Fashion-MNIST's own mean and std, and PCA
    lighting along its own (grey) principal component, as §4.1 measured ImageNet's on ImageNet.
    ImageNet's cost nothing measurable here (+0.1 [-1.1, +1.2]); the right ones are as cheap.
  * model.init_scheme 'he' (the default here too): with the paper's N(0, 0.01) init the run stays
    at chance (90.0% error, every seed).
  * A cosine schedule at learning rate 0.02 after half an epoch of warmup, for a run of 15 epochs,
    not 90: the paper's rule (0.01, divided by 10 when the validation error stalls) never fires in a
    short run and leaves it un-annealed: +1.4 [+0.3, +2.5] points.

15 epochs: 89.72 ± 0.07% test accuracy over seeds 0-2, in 14-16 CPU-minutes (8-9 minutes on 2
cores, from a pixel store). Not reached: the 93% of the best published CNNs. The run is not
overfitting (without dropout: 89.95%, seed 0), and width 0.5 would take ~25 CPU-minutes
(docs/ablations.md, "The 93% target: not reached").
"""

import ml_collections

from alexnet_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.dataset = 'fashion_mnist'
  config.eval_split = 'test'  # Fashion-MNIST's 10,000 held-out images
  config.num_classes = 10
  config.resize_size = 76
  config.image_size = 67
  config.model.width = 0.25
  config.augment.statistics = 'dataset'
  config.lr_schedule = 'cosine'
  config.learning_rate = 0.02
  config.warmup_epochs = 0.5
  config.num_epochs = 15.0
  config.log_every_steps = 50
  return config
