"""The paper's design claims as sweep points: the full recipe, then each choice undone alone.

  python -m launch.sweep --config=configs/smoke.py --sweep=configs/sweeps/ablations.py \
      --workdir=/tmp/ablations --launcher=local

| point                        | the paper's claim                                                   |
|------------------------------|---------------------------------------------------------------------|
| baseline                     | ReLU, LRN, 3x3/2 pools, dropout 0.5, augmentation, 2 groups         |
| model.activation=tanh        | ReLUs train several times faster than tanh (§3.1, Figure 1)         |
| model.lrn=False              | LRN lowers top-1/top-5 error by 1.4%/1.2% (§3.3)                    |
| model.overlapping_pool=False | overlapping pools lower top-1/top-5 error by 0.4%/0.3% (§3.4)       |
| model.dropout_rate=0.0       | without dropout the network overfits substantially (§4.2)           |
| augment.*=off                | without augmentation the network overfits substantially (§4.1)      |
| model.groups=1               | the two-GPU split lowers top-1/top-5 error by 1.7%/1.2% (§3.2)      |

Augmentation only acts on TFDS and folder datasets (the tf.data pipeline), not on synthetic ones.
"""

NO_AUGMENTATION = {'augment.random_crop': False, 'augment.flip': False, 'augment.pca_lighting': 0.0}


def get_sweep() -> list[dict]:
  return [
      {},
      {'model.activation': 'tanh'},
      {'model.lrn': False},
      {'model.overlapping_pool': False},
      {'model.dropout_rate': 0.0},
      NO_AUGMENTATION,
      {'model.groups': 1},
  ]
