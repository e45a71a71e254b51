"""The report's statistics against values worked by hand, tabulated, or computed another way."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from src.report.stats import Stat, holm, paired_interval, paired_t, seeds_needed

T_975_2 = 4.302652729749464  # t_{0.975, 2}, as printed in any t table (4.303)


def test_stat_is_mean_min_max_and_nan_stays_nan():
    assert Stat.of([0.2, 0.4, 0.9]) == Stat(pytest.approx(0.5), 0.2, 0.9, 3)
    assert Stat.of([]) is None
    assert math.isnan(Stat.of([0.1, math.nan]).mean)


def test_t_interval_and_p_worked_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) with 2 degrees of freedom.
    interval = paired_interval([1.0, 2.0, 3.0])
    half = T_975_2 / math.sqrt(3)
    assert (interval.low, interval.high, interval.n, interval.method) == (pytest.approx(2 - half), pytest.approx(2 + half), 3, "t")
    assert (interval.low, interval.high) == (pytest.approx(-0.4841, abs=1e-4), pytest.approx(4.4841, abs=1e-4))
    test = paired_t([1.0, 2.0, 3.0])
    assert (test.n, test.mean, test.sd) == (3, 2.0, 1.0)
    assert (test.low, test.high) == (interval.low, interval.high)
    # With 2 degrees of freedom the t distribution has a closed form: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2.
    t = 2 * math.sqrt(3)
    assert test.p == pytest.approx(1 - t / math.sqrt(t * t + 2))  # two-sided: twice the tail
    assert test.p == pytest.approx(0.07418, abs=1e-5)


def test_all_equal_differences_give_a_point_and_no_p():
    test = paired_t([0.01, 0.01, 0.01])
    assert test.low == test.high == 0.01 and test.p is None and test.seeds_needed is None
    interval = paired_interval([0.0, 0.0], bootstrap=True)
    assert (interval.low, interval.high, interval.method) == (0.0, 0.0, "t")
    assert paired_t([0.01]) is None and paired_t([0.01, math.nan]) is None and paired_interval([0.3]) is None


def test_the_bootstrap_only_from_ten_seeds_and_only_when_asked():
    rng = np.random.default_rng(3)
    nine, ten = rng.normal(0.01, 0.02, 9), rng.normal(0.01, 0.02, 10)
    assert paired_interval(nine, bootstrap=True).method == "t"
    assert paired_interval(ten).method == "t"
    bca = paired_interval(ten, bootstrap=True)
    assert bca.method == "BCa" and bca.n == 10
    t = paired_interval(ten)
    # Both cover the mean; a t-interval's half-width is t_{0.975, 9} sd / sqrt(10) (t table: 2.262).
    assert bca.low < ten.mean() < bca.high
    assert (t.high - t.low) / 2 == pytest.approx(2.262 * ten.std(ddof=1) / math.sqrt(10), rel=1e-3)


def test_holm_equals_statsmodels_multipletests():
    rng = np.random.default_rng(0)
    for m in (1, 2, 3, 8, 36, 252):
        p = rng.uniform(0, 0.2, m) ** 2
        p[: m // 3] = p[0]  # ties
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        assert holm(list(p)) == [float(v) for v in expected]  # bit for bit: the committed reports carry these digits
    with_gaps = [0.01, None, 0.04, None, 0.03]
    assert holm(with_gaps)[1::2] == [None, None]
    assert holm(with_gaps)[::2] == [float(v) for v in multipletests([0.01, 0.04, 0.03], method="holm")[1]]


def test_holm_by_hand():
    # Sorted p: 0.01, 0.03, 0.04; times 3, 2, 1: 0.03, 0.06, 0.04; kept non-decreasing: 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    # An untestable comparison (None) stays out of the family: two tests, so times 2, 1.
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 0.6 x 2 capped at 1; 0.9 x 1 raised to keep the order
    assert holm([]) == [] and holm([None]) == [None]


def _power(n: int, effect: float) -> float:
    """Two-sided one-sample t-test power from the noncentral t (SciPy's nct), not statsmodels."""
    critical = stats.t.ppf(0.975, n - 1)
    nc = effect * math.sqrt(n)
    return stats.nct.sf(critical, n - 1, nc) + np.nan_to_num(stats.nct.cdf(-critical, n - 1, nc))  # NaN: ~0 far out


def test_seeds_needed_against_the_table_and_the_noncentral_t():
    # Cohen's tables (and G*Power): a one-sample / paired t-test, d = 0.5, alpha 0.05 two-sided, power 0.8: n = 34.
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(-0.8, 1.0) == 15  # d = 0.8: n = 15; the sign does not matter
    # (0.1436, 0.016878): an effect of 8.5 sd from the budget study, where the root finder failed and old code
    # gave no answer although 3 seeds have the power.
    for mean, sd in ((0.004, 0.01), (0.02, 0.01), (2.0, 1.0), (0.001, 0.02), (0.143605, 0.016878), (0.11, 0.0158)):
        n = seeds_needed(mean, sd)
        assert _power(n, mean / sd) >= 0.8 > _power(n - 1, mean / sd), (mean, sd, n)
    assert seeds_needed(1.0, 0.01) == 2  # any test of two seeds has the power: the smallest n
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(0.01, 0.0) is None
    assert paired_t([1.0, 2.0, 3.0]).seeds_needed == seeds_needed(2.0, 1.0) == 5
