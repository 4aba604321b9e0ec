"""From a measure's values over seeds to a verdict on one of the paper's claims.

Each point of a sweep trains with several seeds (`launch.sweep --seeds=N`); each run gives one value
of a measure (its final test error, its train-test gap, the steps it took to reach 25% training
error). A point is summarized by the mean and the sample standard deviation of its values, and
compared with its baseline by the difference of the two means with a two-sided 95% confidence
interval: Welch's t interval, which does not assume the two have equal variances,

  d = mean_point - mean_baseline,   se^2 = s_p^2 / n_p + s_b^2 / n_b,
  df = se^4 / ((s_p^2 / n_p)^2 / (n_p - 1) + (s_b^2 / n_b)^2 / (n_b - 1))   (Welch-Satterthwaite),
  d ± t_{0.975, df} se.

The seeds of a point are treated as independent draws of its training (initialization, data order,
augmentation and dropout all change with the seed; the training subset does not). With 3 seeds a
side, df is between 2 and 4 and t between 2.8 and 4.3, so only a difference several times the
seeds' spread counts.

Every claim of the paper says that undoing its choice makes a measure worse (higher). The verdict is
'reproduced' when the whole interval is above 0, 'opposite' when it is below, and 'inconclusive'
when it spans 0 or cannot be computed (fewer than 2 seeds on a side). A value that is only a lower
bound (a run that never reached the training error it was timed to) keeps a verdict that the bound
cannot overturn: 'reproduced' only if the baseline's values are exact, 'opposite' only if the
point's are.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
REPRODUCED, OPPOSITE, INCONCLUSIVE = 'reproduced', 'opposite', 'inconclusive'


@dataclasses.dataclass(frozen=True)
class Summary:
  """A measure over the seeds of a point: their count, mean and sample std (NaN for one seed)."""
  n: int
  mean: float
  std: float


def summarize(values: Sequence[float]) -> Summary:
  values = np.asarray(values, np.float64)
  if not len(values):
    return Summary(0, math.nan, math.nan)
  return Summary(len(values), float(values.mean()),
                 float(values.std(ddof=1)) if len(values) > 1 else math.nan)


@dataclasses.dataclass(frozen=True)
class Interval:
  """The difference of two means, point minus baseline, and its Welch interval (low and high are
  NaN when a side has fewer than 2 seeds; df is infinite when both sides have no spread)."""
  difference: float
  low: float
  high: float
  df: float


def welch_interval(point: Sequence[float], baseline: Sequence[float],
                   confidence: float = CONFIDENCE) -> Interval:
  """Welch's t interval for mean(point) - mean(baseline), at `confidence` (two-sided)."""
  p, b = summarize(point), summarize(baseline)
  difference = p.mean - b.mean
  if p.n < 2 or b.n < 2:
    return Interval(difference, math.nan, math.nan, math.nan)
  var_p, var_b = p.std**2 / p.n, b.std**2 / b.n
  se = math.sqrt(var_p + var_b)
  if se == 0:  # every seed of both gave the same value: the difference is exact
    return Interval(difference, difference, difference, math.inf)
  df = (var_p + var_b)**2 / (var_p**2 / (p.n - 1) + var_b**2 / (b.n - 1))
  half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
  return Interval(difference, difference - half, difference + half, df)


def verdict(interval: Interval, point_is_lower_bound: bool = False,
            baseline_is_lower_bound: bool = False) -> str:
  """'reproduced' (the interval above 0: undoing the paper's choice made the measure higher, as the
  paper says), 'opposite' (below 0) or 'inconclusive' (spans 0, or no interval).

  A side whose values are only lower bounds (runs that never reached a target) can make the true
  difference larger (the point's) or smaller (the baseline's) than measured: a verdict that such
  a bound could overturn is 'inconclusive'.
  """
  if math.isnan(interval.low):
    return INCONCLUSIVE
  if interval.low > 0 and not baseline_is_lower_bound:
    return REPRODUCED
  if interval.high < 0 and not point_is_lower_bound:
    return OPPOSITE
  return INCONCLUSIVE
