"""The report's statistics, on paired differences d_s = a_s - b_s (one per seed).

- :class:`Stat`: mean, min and max over seeds (what the tables print).
- :func:`paired_interval`: the 95 % t-interval of mean(d), mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n),
  or, on request and only from 10 seeds on, the BCa bootstrap interval (with fewer seeds its
  coverage falls far short of 95 %: about 87 % at n = 5, 75 % at n = 3). Descriptive: it marks
  nothing significant.
- :func:`paired_t`: the two-sided paired t-test of H0 "mean(d) = 0", t = mean(d) / (sd(d) / sqrt(n)),
  with n - 1 degrees of freedom; :func:`holm` corrects a family of its p-values.
- :func:`seeds_needed`: the n at which a paired t-test detects the observed effect
  |mean(d)| / sd(d) with 80 % power (two-sided alpha 0.05): the power is
  P(|T| > t_{1-alpha/2, n-1}) with T noncentral t, n - 1 degrees of freedom, noncentrality
  sqrt(n) |mean(d)| / sd(d).

When every difference is equal, sd(d) = 0 and t is undefined: the interval is the single value
and no p is given; a zero-width interval is never evidence by itself.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
BOOTSTRAP_MIN_SEEDS = 10  # below this the BCa interval undercovers badly; the t-interval is used instead


@dataclass(frozen=True)
class Stat:
    """Mean, min and max of values over seeds; ``n`` values. NaN in, NaN out."""

    mean: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        if any(math.isnan(v) for v in values):
            return cls(math.nan, math.nan, math.nan, len(values))
        return cls(math.fsum(values) / len(values), min(values), max(values), len(values))


@dataclass(frozen=True)
class Interval:
    """A 95 % interval of mean(d) over ``n`` seeds; ``method``: ``t`` or ``BCa``."""

    low: float
    high: float
    n: int
    method: str


def _usable(differences: Sequence[float]) -> np.ndarray | None:
    d = np.asarray(differences, dtype=np.float64)
    return None if len(d) < 2 or np.isnan(d).any() else d


def t_interval(d: np.ndarray) -> tuple[float, float]:
    """mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n); the single value when sd(d) = 0."""
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(CONFIDENCE)
    return float(low), float(high)


def paired_interval(differences: Sequence[float], bootstrap: bool = False) -> Interval | None:
    """The t-interval of mean(d), or the BCa bootstrap one when ``bootstrap`` and n >= 10.

    None with fewer than two differences or any NaN. The bootstrap resamples whole seeds
    (9,999 times, seeded: the same interval on every run), so each pair stays together.
    """
    d = _usable(differences)
    if d is None:
        return None
    if bootstrap and len(d) >= BOOTSTRAP_MIN_SEEDS and not np.all(d == d[0]):
        ci = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                             method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
        return Interval(float(ci.low), float(ci.high), len(d), "BCa")
    return Interval(*t_interval(d), len(d), "t")


@dataclass(frozen=True)
class PairedT:
    """The paired t-test of one set of differences.

    ``p``: two-sided; None when every difference is equal (t undefined). ``seeds_needed``: see
    :func:`seeds_needed` (None when it cannot be said: no observed difference, or no spread).
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    p: float | None
    seeds_needed: int | None


def paired_t(differences: Sequence[float]) -> PairedT | None:
    """:class:`PairedT` of ``differences``; None with fewer than two or any NaN."""
    d = _usable(differences)
    if d is None:
        return None
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    low, high = t_interval(d)
    p = None if np.all(d == d[0]) else float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedT(len(d), mean, sd, low, high, p, seeds_needed(mean, sd))


def seeds_needed(mean: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> int | None:
    """Smallest n whose two-sided paired t-test has ``power`` against effect |mean| / sd (at least 2).

    None when mean = 0 (no difference to detect) or sd = 0 (no spread to size it from).
    """
    if mean == 0 or sd == 0 or math.isnan(mean) or math.isnan(sd):
        return None
    effect = abs(mean) / sd
    solver = TTestPower()
    # For effects large enough that 2 or 3 seeds suffice, statsmodels' power is NaN (scipy's noncentral
    # t cdf far in the lower tail) and its root finder fails: those n are checked directly, the lower
    # tail P(T < -c) read as P(T > c) at noncentrality -nc, which scipy computes.
    for n in (2, 3):
        critical, nc = stats.t.ppf(1 - alpha / 2, n - 1), effect * math.sqrt(n)
        if stats.nct.sf(critical, n - 1, nc) + stats.nct.sf(critical, n - 1, -nc) >= power:
            return n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        n = solver.solve_power(effect_size=effect, nobs=None, alpha=alpha, power=power, alternative="two-sided")
    return None if n is None or math.isnan(n) else math.ceil(n - 1e-9)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values of one family (Holm 1979); None stays None, out of the family.

    With the m p-values sorted, p_(i) x (m - i + 1), made non-decreasing in that order and capped at 1.
    Written out rather than called from statsmodels' ``multipletests``, which runs a full garbage
    collection on every call (0.2 s each in a report holding many records); the tests check it against
    ``multipletests``.
    """
    tested = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if tested:
        p = np.array([p_values[i] for i in tested], dtype=np.float64)
        order = np.argsort(p)
        corrected = np.minimum(np.maximum.accumulate(p[order] * np.arange(p.size, 0, -1)), 1.0)
        for i, value in zip(np.asarray(tested)[order], corrected):
            adjusted[int(i)] = float(value)
    return adjusted
