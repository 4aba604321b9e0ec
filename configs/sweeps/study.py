"""The ablation study: every claim of the paper, each in the regime where its measure can show it.

  python -m launch.sweep --config=configs/fashion_mnist.py:upsampled --sweep=configs/sweeps/study.py \
      --workdir=/path/to/study --launcher=local --seeds=3 -- \
      --config.dataset=store:/path/to/store76 --config.num_epochs=2 --config.log_every_steps=10
  python -m alexnet_jax.report /path/to/study

(27 runs, 43 minutes on a 2-core CPU; docs/ablations.md has the store's command, the results and a
verdict per claim.)

Two regimes, one root:
  * full data (the whole training split; `num_epochs` from the command line): the points of
    configs/sweeps/ablations.py but dropout and augmentation; ReLU against tanh by the steps to 25%
    training error (Figure 1), LRN, overlapping pools, the two groups and depth by the test error;
  * small data (a class-balanced SMALL_DATA['train_examples'] of the training split, trained for
    more epochs): dropout and augmentation, which the paper calls remedies for overfitting, by the
    test error and by the train-test gap (the training error measured without augmentation or
    dropout on every training example, `eval_train_examples=-1`).

Each run of a small-data point is a point of its own to launch/sweep.py (its overrides include the
regime's); alexnet_jax/report.py compares it with the small-data baseline, the point whose
overrides it extends.
"""

from configs.sweeps import ablations

# The small-data regime: ~100 images a class, trained until it overfits. The epochs and eval
# interval are sized for Fashion-MNIST at batch 128 (8 steps an epoch): ~1200 steps, 12 evals.
SMALL_DATA = {'train_examples': 1000, 'eval_train_examples': -1, 'num_epochs': 150.0,
              'eval_every_steps': 100}
FULL_DATA_POINTS = [
    {},
    {'model.activation': 'tanh'},
    {'model.lrn': False},
    {'model.overlapping_pool': False},
    {'model.groups': 1},
    ablations.NO_MIDDLE_CONV,
]
SMALL_DATA_CHANGES = [{}, {'model.dropout_rate': 0.0}, ablations.NO_AUGMENTATION]


def get_sweep() -> list[dict]:
  return FULL_DATA_POINTS + [{**SMALL_DATA, **change} for change in SMALL_DATA_CHANGES]


def get_claims() -> list[dict]:
  return ablations.claims({}, 'full data', [
      ({'model.activation': 'tanh'}, ('steps_to_train_err',)),
      ({'model.lrn': False}, ('eval_top1_err',)),
      ({'model.overlapping_pool': False}, ('eval_top1_err',)),
      ({'model.groups': 1}, ('eval_top1_err',)),
      (ablations.NO_MIDDLE_CONV, ('eval_top1_err',)),
  ]) + ablations.claims(SMALL_DATA, 'small data', [
      ({'model.dropout_rate': 0.0}, ('eval_top1_err', 'train_test_gap')),
      (ablations.NO_AUGMENTATION, ('eval_top1_err', 'train_test_gap')),
  ])
