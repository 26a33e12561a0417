"""Means over seeds with Student-t intervals, and paired differences to a baseline.

Pure functions on numbers: no MLflow, no tables. A sweep has a handful of seeds per configuration, so the
interval uses Student's t with n - 1 degrees of freedom (scipy.stats.t), not the normal 1.96. With one seed
there is no spread to estimate: the half-width is NaN and is printed as "n/a".

Differences are *paired by seed*: configuration and baseline trained with the same seed share the data split
order and initialisation draws, so the per-seed differences vary less than either accuracy does, and their
interval is the honest one for "how much better than KD".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Interval", "mean_interval", "paired_difference"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        """Lower end of the interval (NaN when the half-width is)."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """Upper end of the interval (NaN when the half-width is)."""
        return self.mean + self.half_width

    def format(self, digits: int = 2, signed: bool = False) -> str:
        """``"97.12 ± 0.35"``; ``"97.12 ± n/a"`` for one value; ``"n/a"`` for none. ``signed`` adds a ``+``."""
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        mean = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        spread = "n/a" if math.isnan(self.half_width) else f"{self.half_width:.{digits}f}"
        return f"{mean} ± {spread}"


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with the two-sided Student-t interval at ``confidence``.

    half-width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), with s the sample standard deviation (ddof 1).
    One value gives a NaN half-width; no values give a NaN mean. NaNs in ``values`` are not dropped here:
    choosing which runs count is the caller's job, and a NaN that slips through shows up as NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    array = np.asarray(list(values), dtype=float)
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, 0, confidence)
    mean = float(array.mean())
    if n == 1:
        return Interval(mean, math.nan, 1, confidence)
    quantile = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1))
    half_width = quantile * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, half_width, n, confidence)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> Interval:
    """Mean of ``values[seed] - baseline[seed]`` over the seeds both have, with its t-interval.

    Both arguments map seed -> score. Seeds present on one side only are left out (there is nothing to pair
    them with); ``n`` of the result says how many pairs were used.
    """
    seeds = sorted(set(values) & set(baseline))
    return mean_interval((values[seed] - baseline[seed] for seed in seeds), confidence)
