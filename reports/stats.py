"""Seed statistics behind every "mean +- std" and every "better than full" in a report.

Pure functions of plain numbers; no MLflow, no pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class MeanStd:
    mean: float  # nan when n == 0
    std: float  # sample std (ddof=1); nan when n < 2
    n: int


@dataclass(frozen=True)
class PairedDiff:
    """variant - baseline, paired by seed; a t-interval on the mean difference (nan when n < 2)."""

    n: int  # number of seeds present in both
    mean: float
    std: float  # sample std of the per-seed differences (ddof=1); nan when n < 2
    low: float  # lower end of the `level` confidence interval
    high: float
    level: float
    seeds: tuple[int, ...]

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low)


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof=1) of finite values; NaNs are not allowed."""
    xs = [float(v) for v in values]
    if any(math.isnan(v) for v in xs):
        raise ValueError(f"mean_std: NaN among values {xs}")
    n = len(xs)
    if n == 0:
        return MeanStd(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return MeanStd(mean, math.nan, 1)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return MeanStd(mean, math.sqrt(var), n)


def paired_difference(
    variant: Mapping[int, float], baseline: Mapping[int, float], *, level: float = 0.95
) -> PairedDiff:
    """Mean of d_s = variant[s] - baseline[s] over the seeds s in both, with a Student-t interval.

    CI = mean(d) +- t_{(1+level)/2, n-1} * std(d) / sqrt(n). With n < 2 there is no interval
    (low = high = nan); with std(d) = 0 the interval is the single point mean(d).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_difference: level must be in (0, 1), got {level}")
    seeds = tuple(sorted(set(variant) & set(baseline)))
    diffs = [float(variant[s]) - float(baseline[s]) for s in seeds]
    ms = mean_std(diffs)
    if ms.n < 2:
        return PairedDiff(ms.n, ms.mean, ms.std, math.nan, math.nan, level, seeds)
    half = _scipy_stats.t.ppf((1.0 + level) / 2.0, ms.n - 1) * ms.std / math.sqrt(ms.n)
    return PairedDiff(ms.n, ms.mean, ms.std, ms.mean - half, ms.mean + half, level, seeds)
