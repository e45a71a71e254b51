"""Per-seed endpoints, their paired t-tests and Holm correction: the only source of significance marks."""

import csv
import math

import pytest
from scipy import stats

from src.errors import UserError
from src.report import ReportOptions, build_report, gap_table
from src.report.csvs import endpoint_csv
from src.report.endpoints import MEAN, Endpoint, parse_endpoint, parse_fixed_endpoint, seed_value
from src.report.tables import endpoint_table
from src.results import SeedResult
from tests.report_helpers import seeds_with_gaps, simple, write_result


def test_parse_endpoint():
    assert parse_endpoint("iteration:3") == Endpoint("iteration", 3)
    assert parse_endpoint("remaining:0.25") == Endpoint("remaining", 0.25)
    for bad in ("iteration:0", "iteration:1.5", "iteration:x", "remaining:0", "remaining:1.5", "mean", "auc:3"):
        with pytest.raises(UserError, match=f"--endpoint {bad}: give iteration:K"):
            parse_endpoint(bad)


def _seed(tmp_path, iterations, name="s") -> SeedResult:
    return write_result(tmp_path / name, name, "cka", 0, 0.9, iterations, planned=len(iterations))


def test_seed_values(tmp_path):
    seed = _seed(tmp_path, [simple(1, 0.80, 0.85), simple(2, 0.70, 0.80), simple(3, 0.60, 0.70)])
    assert seed_value(seed, Endpoint("mean"), 2) == (pytest.approx((0.85 + 0.80) / 2), 2)
    assert seed_value(seed, Endpoint("mean"), 3) == (pytest.approx((0.85 + 0.80 + 0.70) / 3), 3)
    assert seed_value(seed, Endpoint("mean"), 4) is None
    assert seed_value(seed, Endpoint("iteration", 3), 2) == (0.70, 3)
    assert seed_value(seed, Endpoint("iteration", 4), 2) is None
    # Fractions remaining after iterations 1, 2, 3: 16/18, 14/18, 12/18; the first at or below 0.8 is iteration 2.
    assert seed_value(seed, Endpoint("remaining", 0.8), 2) == (0.80, 2)
    assert seed_value(seed, Endpoint("remaining", 14 / 18), 2) == (0.80, 2)
    assert seed_value(seed, Endpoint("remaining", 0.5), 2) is None
    unretrained = _seed(tmp_path, [simple(1, 0.80, None), simple(2, 0.70, None)], "u")
    assert seed_value(unretrained, Endpoint("mean"), 2) == (pytest.approx(0.75), 2)  # after pruning, then


def test_a_clear_difference_is_significant_and_says_n(tmp_path):
    gaps = [0.02, 0.03, 0.025, 0.035, 0.028]
    report = build_report(list(seeds_with_gaps(tmp_path, gaps, iterations=3)), config_root=None,
                          options=ReportOptions(endpoints=(Endpoint("iteration", 2), Endpoint("remaining", 0.8))))
    mean, at_two, remaining = report.endpoints
    assert mean.name == "mean accuracy over iterations 1-3" and at_two.name == "accuracy at iteration 2"
    assert remaining.name == "accuracy at <= 80.0% remaining (iteration 2)"
    m, sd = sum(gaps) / 5, stats.tstd(gaps)
    t = m / (sd / math.sqrt(5))
    p = 2 * stats.t.sf(t, 4)  # the t distribution's tail, not the test function
    assert mean.test.mean == pytest.approx(m) and mean.test.sd == pytest.approx(sd)
    assert mean.test.p == pytest.approx(p) and mean.p_holm == pytest.approx(p)  # one pair: nothing to correct
    assert mean.significant and mean.seeds == (0, 1, 2, 3, 4)
    table = endpoint_table(report)
    assert table.rows[0][:3] == ("cka - l1", "mean accuracy over iterations 1-3", "5") and table.rows[0][6].endswith("*")
    sentence = next(n for n in table.notes if n.startswith("cka - l1, mean accuracy"))
    assert "over n = 5 paired seeds" in sentence and "cka is better" in sentence and "Holm" in sentence


def test_holm_across_pairs_and_no_mark_from_an_uncorrected_interval(tmp_path):
    """Two pairs with p = 0.03 each: each t-interval excludes 0, but Holm-adjusted p = 0.06: no mark, no claim.
    Old code printed * beside every interval that excluded 0."""
    gaps = [0.01, 0.02, 0.03, 0.04]
    folders = []
    for name, offset in (("cka", None), ("l1", 0.0), ("l2", 0.0)):
        folders.append(tmp_path / name)
        for seed, gap in enumerate(gaps):
            acc = 0.8 + gap if offset is None else 0.8
            write_result(folders[-1], name, name, seed, 0.9, [simple(1, 0.7, acc)], planned=1)
    report = build_report(folders, config_root=None)
    assert "*" not in "\n".join(" ".join(row) for row in gap_table(report).rows)
    p = 2 * stats.t.sf(0.025 / (stats.tstd(gaps) / 2), 3)
    assert 0.025 < p < 0.05
    assert [t.test.p for t in report.endpoints] == [pytest.approx(p)] * 2
    assert [t.p_holm for t in report.endpoints] == [pytest.approx(2 * p)] * 2  # both: min(1, 2p), then monotone
    assert not any(t.significant for t in report.endpoints)
    gap = next(g for g in report.gaps if g.iteration == 1)
    assert gap.ci_retrain.low > 0  # the descriptive interval excludes 0 ...
    rendered = "\n".join(" ".join(row) for t in (gap_table(report), endpoint_table(report)) for row in t.rows)
    assert "*" not in rendered  # ... and marks nothing
    notes = "\n".join(endpoint_table(report).notes)
    assert "cka - l1, mean accuracy over iteration 1: mean difference +2.50 pp" in notes
    assert "no significant difference" in notes and "over n = 4 paired seeds" in notes
    assert "seeds would detect a difference this large with 80% power" in notes
    assert "DESCRIPTIVE" in "\n".join(gap_table(report).notes)


def test_equal_differences_are_no_evidence(tmp_path):
    """Every seed 1 pp apart: a zero-width interval, which old code counted as excluding 0."""
    report = build_report(list(seeds_with_gaps(tmp_path, [0.01, 0.01, 0.01])), config_root=None)
    assert "*" not in "\n".join(" ".join(row) for row in gap_table(report).rows)
    (test,) = report.endpoints
    assert test.test.low == test.test.high and test.test.p is None and not test.significant
    assert "every seed's difference equal: no t-test" in "\n".join(endpoint_table(report).notes)


def test_n_is_the_iterations_every_paired_seed_completed(tmp_path):
    cka, l1 = seeds_with_gaps(tmp_path, [0.01, 0.02], iterations=3)
    write_result(l1, "l1", "l1", 1, 0.9, [simple(1, 0.7, 0.8), simple(2, 0.7, 0.8)], planned=3)  # still running
    (test,) = build_report([cka, l1], config_root=None).endpoints
    assert test.name == "mean accuracy over iterations 1-2" and test.seeds == (0, 1)
    one = build_report([cka, l1], config_root=None, options=ReportOptions(endpoints=(Endpoint("iteration", 3),)))
    assert one.endpoints[1].seeds == (0,) and one.endpoints[1].test is None  # one pair: too few for a test


def test_only_the_endpoint_fixed_before_the_run_is_marked_and_the_rest_is_called_descriptive(tmp_path):
    """A one-shot study fixes the accuracy at one point; its mean over the sweep is descriptive, however small its p."""
    gaps = [0.02, 0.03, 0.025, 0.035, 0.028]
    folders = list(seeds_with_gaps(tmp_path, gaps, iterations=3))
    report = build_report(folders, config_root=None, options=ReportOptions(fixed=Endpoint("iteration", 2)))
    at_two, mean = report.endpoints
    assert (at_two.endpoint, at_two.fixed, mean.endpoint, mean.fixed) == (Endpoint("iteration", 2), True, MEAN, False)
    assert at_two.p_holm < 0.05 and mean.p_holm < 0.05  # both clear, ...
    assert at_two.significant and not mean.significant  # ... but only the fixed one is a finding
    table = endpoint_table(report)
    assert [row[6].endswith("*") for row in table.rows] == [True, False]
    note = table.notes[0]
    assert "The endpoint fixed before the run: the test accuracy at iteration 2." in note
    assert "Descriptive, not findings (no mark, whatever their p): the mean test accuracy over iterations 1-N" in note
    assert "fixed before looking" not in note and "an uncorrected alpha 0.05" in note
    sentence = next(n for n in table.notes if n.startswith("cka - l1, mean accuracy"))
    assert "descriptive (not the endpoint fixed before the run)" in sentence and "better" not in sentence
    rows = list(csv.DictReader(endpoint_csv(report).splitlines()))
    assert [(r["endpoint"], r["fixed"], r["significant"]) for r in rows] == [
        ("iteration:2", "True", "True"), ("mean", "False", "False")]


def test_by_default_the_mean_is_fixed_and_an_asked_endpoint_is_descriptive(tmp_path):
    folders = list(seeds_with_gaps(tmp_path, [0.02, 0.03, 0.025, 0.035, 0.028], iterations=3))
    report = build_report(folders, config_root=None, options=ReportOptions(endpoints=(Endpoint("iteration", 2),)))
    assert [(t.endpoint, t.significant) for t in report.endpoints] == [(MEAN, True), (Endpoint("iteration", 2), False)]
    assert endpoint_table(report).notes[0].startswith(
        "One number per seed, after retraining where the run retrains, else after pruning. The endpoint fixed before "
        "the run: the mean test accuracy over iterations 1-N (the area under the accuracy-vs-iteration curve; N: the "
        "iterations every paired seed completed). Descriptive, not findings (no mark, whatever their p): the test "
        "accuracy at iteration 2.")


def test_parse_fixed_endpoint():
    assert parse_fixed_endpoint("mean") == MEAN
    assert parse_fixed_endpoint("remaining:0.1") == Endpoint("remaining", 0.1)
    with pytest.raises(UserError, match="--fixed-endpoint iteration:0: give iteration:K"):
        parse_fixed_endpoint("iteration:0")
