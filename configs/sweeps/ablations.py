"""The paper's design claims as sweep points: the full recipe, then each choice undone alone.

  python -m launch.sweep --config=configs/smoke.py --sweep=configs/sweeps/ablations.py \
      --workdir=/tmp/ablations --launcher=local --seeds=3
  python -m alexnet_jax.report /tmp/ablations

| point                        | the paper's claim                                                   |
|------------------------------|---------------------------------------------------------------------|
| baseline                     | ReLU, LRN, 3x3/2 pools, dropout 0.5, augmentation, 2 groups, 5 convs |
| model.activation=tanh        | ReLUs train several times faster than tanh (§3.1, Figure 1)         |
| model.lrn=False              | LRN lowers top-1/top-5 error by 1.4%/1.2% (§3.3)                    |
| model.overlapping_pool=False | overlapping pools lower top-1/top-5 error by 0.4%/0.3% (§3.4)       |
| model.dropout_rate=0.0       | without dropout the network overfits substantially (§4.2)           |
| augment.*=off                | without augmentation the network overfits substantially (§4.1)      |
| model.groups=1               | the two-GPU split lowers top-1/top-5 error by 1.7%/1.2% (§3.2)      |
| model.remove_conv=4          | removing a middle layer costs about 2% top-1 (§7)                   |

`get_claims()` says which point tests which claim, and by which measure (alexnet_jax/report.py
judges each over the seeds). Dropout and augmentation are judged here by test error only: their
claims are about overfitting, which the small-data regime of configs/sweeps/study.py reaches.
Augmentation only acts on TFDS and folder datasets (the tf.data pipeline), not on synthetic ones.
"""

NO_AUGMENTATION = {'augment.random_crop': False, 'augment.flip': False, 'augment.pca_lighting': 0.0}
# §7's "middle layers": conv4, whose removal leaves every other layer's shape as it was (removing
# conv3 would also cut the only link between the two groups below fc6).
NO_MIDDLE_CONV = {'model.remove_conv': 4}


def get_sweep() -> list[dict]:
  return [
      {},
      {'model.activation': 'tanh'},
      {'model.lrn': False},
      {'model.overlapping_pool': False},
      {'model.dropout_rate': 0.0},
      NO_AUGMENTATION,
      {'model.groups': 1},
      NO_MIDDLE_CONV,
  ]


# What the paper says of each choice, by the first key of the point that undoes it.
PAPER = {
    'model.activation': ('ReLUs train several times faster than tanh units', '§3.1, Figure 1',
                         '6x fewer epochs to 25% training error (CIFAR-10)'),
    'model.lrn': ('local response normalization aids generalization', '§3.3', 'top-1 error -1.4%'),
    'model.overlapping_pool': ('overlapping pooling lowers the error', '§3.4', 'top-1 error -0.4%'),
    'model.dropout_rate': ('dropout prevents substantial overfitting', '§4.2', 'substantial'),
    'augment.random_crop': ('data augmentation prevents substantial overfitting', '§4.1',
                            'substantial'),
    'model.groups': ('the two-GPU split lowers the error', '§3.2', 'top-1 error -1.7%'),
    'model.remove_conv': ('removing a middle convolution costs accuracy', '§7', 'top-1 error +2%'),
}


def claims(baseline: dict, regime: str, tested: list[tuple[dict, tuple[str, ...]]]) -> list[dict]:
  """launch/sweep.py's get_claims() entries: for each (change, measures) of `tested`, the paper's
  claim about the point `baseline` + change, judged against `baseline` by each measure."""
  listed = []
  for change, measures in tested:
    claim, section, paper = PAPER[next(iter(change))]
    for measure in measures:
      listed.append({'claim': claim, 'section': section, 'paper': paper, 'regime': regime,
                     'baseline': baseline, 'point': {**baseline, **change}, 'measure': measure})
  return listed


def get_claims() -> list[dict]:
  return claims({}, 'full data', [
      ({'model.activation': 'tanh'}, ('steps_to_train_err',)),
      ({'model.lrn': False}, ('eval_top1_err',)),
      ({'model.overlapping_pool': False}, ('eval_top1_err',)),
      ({'model.dropout_rate': 0.0}, ('eval_top1_err',)),
      (NO_AUGMENTATION, ('eval_top1_err',)),
      ({'model.groups': 1}, ('eval_top1_err',)),
      (NO_MIDDLE_CONV, ('eval_top1_err',)),
  ])
