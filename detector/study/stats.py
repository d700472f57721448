"""Statistics of a study (specs/study.md §4), all through ``scipy.stats``.

- ``summarize``: mean, sample standard deviation (divisor n - 1) and the 95 % Student-t
  interval of the mean of one arm's values over seeds.
- ``paired_difference``: an arm minus the baseline over the seeds both ran; the mean
  difference, its 95 % paired-t interval and p-value, and, with at least
  ``BOOTSTRAP_MIN_SEEDS`` pairs, a 95 % bootstrap interval (BCa, fixed random state).
- ``verdict``: "better", "worse" or "no difference detected (95 % CI [lo, hi])" from the
  paired-t interval: better when the whole interval is above 0, worse when it is below.

Inputs are plain sequences of finite floats; results are plain floats (NaN where a
quantity is undefined, e.g. the interval of one value).
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: Confidence level of every interval.
CONFIDENCE = 0.95
#: Bootstrap intervals are reported from this many paired seeds on.
BOOTSTRAP_MIN_SEEDS = 8
#: Resamples and seed of the bootstrap (fixed: the same inputs give the same interval).
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    """One arm's metric over n seeds: mean, sample std, and the t interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """arm - baseline over n paired seeds."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float
    bootstrap_low: float
    bootstrap_high: float

    def as_dict(self):
        return asdict(self)


def summarize(values):
    """``Summary`` of ``values`` (n >= 1): the t interval ``mean +- t_{0.975, n-1} * s / sqrt(n)``."""
    values = _finite(values, "values")
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(np.std(values, ddof=1))
    low, high = _t_interval(mean, std, n)
    return Summary(n, mean, std, low, high)


def paired_difference(values, baseline):
    """``Difference`` of ``values - baseline``, paired element by element (same seeds)."""
    values = _finite(values, "values")
    baseline = _finite(baseline, "baseline")
    if len(values) != len(baseline):
        raise ValueError(f"paired_difference: {len(values)} values but {len(baseline)} baseline values")
    differences = values - baseline
    n = len(differences)
    mean = float(np.mean(differences)) if n else math.nan
    if n < 2:
        return Difference(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    std = float(np.std(differences, ddof=1))
    low, high = _t_interval(mean, std, n)
    p_value = float(stats.ttest_rel(values, baseline).pvalue) if std > 0 else (1.0 if mean == 0 else 0.0)
    boot_low = boot_high = math.nan
    if n >= BOOTSTRAP_MIN_SEEDS and std > 0:
        result = stats.bootstrap((differences,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method="BCa", random_state=np.random.default_rng(BOOTSTRAP_SEED))
        boot_low, boot_high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Difference(n, mean, std, low, high, p_value, boot_low, boot_high)


def verdict(difference, scale=1.0, unit=""):
    """Words for a ``Difference``: "better", "worse", or "no difference detected (95 % CI
    [lo, hi])" (the interval multiplied by ``scale``, e.g. 100 for AP points)."""
    if difference.n < 2 or not math.isfinite(difference.ci_low):
        return f"not resolved (n = {difference.n}: an interval needs at least 2 paired seeds)"
    interval = f"95 % CI [{difference.ci_low * scale:+.2f}, {difference.ci_high * scale:+.2f}]{unit}"
    if difference.ci_low > 0:
        return f"better ({interval})"
    if difference.ci_high < 0:
        return f"worse ({interval})"
    return f"no difference detected ({interval})"


def _t_interval(mean, std, n):
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def _finite(values, name):
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"{name}: expected a sequence of finite numbers, got {list(values)!r}")
    return array
