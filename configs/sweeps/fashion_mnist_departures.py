"""What each departure of configs/fashion_mnist.py:upsampled (the study's adaptation) from the
paper's recipe is worth: each point undoes one (the width only halfway; or, as the last, the
statistics and schedule departures together), and two points measure what parts of the paper's
recipe it keeps, dropout and the random crops and flips, cost a short run.

  python -m launch.sweep --config=configs/fashion_mnist.py:upsampled \
      --sweep=configs/sweeps/fashion_mnist_departures.py --workdir=/path/to/departures \
      --launcher=local --seeds=3 -- --config.dataset=store:/path/to/store76 --config.num_epochs=2
  python -m alexnet_jax.report /path/to/departures

docs/ablations.md ("Why the recipe learns slowly here") reports it.
"""

PAPER_SCHEDULE = {'lr_schedule': 'plateau', 'learning_rate': 0.01, 'warmup_epochs': 0.0}
IMAGENET_STATISTICS = {'augment.statistics': 'imagenet'}


def get_sweep() -> list[dict]:
  return [
      {},
      IMAGENET_STATISTICS,  # ImageNet's mean, std and PCA on grey product photos
      PAPER_SCHEDULE,  # lr 0.01, divided by 10 when the test error stalls (§5)
      {'model.init_scheme': 'paper'},  # N(0, 0.01) weights, biases of 1 in conv2, 4, 5 and fc (§5)
      {'model.dropout_rate': 0.0},  # kept in the recipe; what it costs a short run
      {'augment.random_crop': False, 'augment.flip': False},  # kept too: the center crop only
      {'model.width': 0.5},  # what the quarter width, for a CPU, costs
      {**IMAGENET_STATISTICS, **PAPER_SCHEDULE},  # the paper's recipe but for He init
  ]
