"""Aggregation over seeds: accuracy per iteration, gaps over paired seeds, shared removals."""

import math

import pytest

from src import results
from src.cli import apply_threads
from src.report import build_report, overlap_fraction
from tests.report_helpers import runs, seeds_with_gaps, simple, write_result  # noqa: F401 (fixture)


def rows_of(report, label):
    return {row.iteration: row for row in report.rows if row.label == label}


def test_mean_min_max_over_seeds_per_iteration(runs):
    report = build_report(list(runs), config_root=None)
    cka = rows_of(report, "cka")
    assert sorted(cka) == [0, 1, 2]
    assert cka[0].after_prune.mean == pytest.approx((0.90 + 0.94) / 2)
    one = cka[1]
    assert one.seeds == (0, 1)
    assert (one.after_prune.mean, one.after_prune.min, one.after_prune.max, one.after_prune.n) == \
        (pytest.approx(0.83), 0.80, 0.86, 2)
    assert (one.after_retrain.mean, one.after_retrain.min, one.after_retrain.max) == (pytest.approx(0.90), 0.88, 0.92)
    assert one.remaining[0].mean == 8 and one.remaining[1].mean == 6
    assert one.layer_fraction[0].mean == pytest.approx(0.8)
    assert one.fraction.mean == pytest.approx(14 / 18)
    assert one.min_cka == 0.95
    assert one.cka[0].mean == pytest.approx((0.97 + 0.96) / 2)  # the last removal's CKA
    assert one.retrain_epochs.mean == 2
    # Only seed 0 reached iteration 2.
    two = cka[2]
    assert two.seeds == (0,) and two.after_prune.n == 1 and two.after_prune.mean == 0.70
    assert two.fraction.mean == pytest.approx(11 / 18)


def test_retraining_epochs_per_iteration(tmp_path):
    run = tmp_path / "run"
    write_result(run, "run", "cka", 0, 0.9, [simple(1, 0.8, 0.85, epochs=3), simple(2, 0.7, 0.8, epochs=7)])
    write_result(run, "run", "cka", 1, 0.9, [simple(1, 0.8, 0.85, epochs=5), simple(2, 0.7, 0.8, epochs=2)])
    rows = rows_of(build_report([run], config_root=None), "cka")
    assert (rows[1].retrain_epochs.mean, rows[1].retrain_epochs.min, rows[1].retrain_epochs.max) == (4, 3, 5)
    assert rows[2].retrain_epochs.mean == 4.5 and rows[0].retrain_epochs is None


def test_gaps_are_paired_and_carry_the_t_interval(tmp_path):
    gaps = [0.01, 0.02, 0.03]
    report = build_report(list(seeds_with_gaps(tmp_path, gaps)), config_root=None)
    rows = {g.iteration: g for g in report.gaps}
    assert all((g.reference, g.other) == ("cka", "l1") for g in report.gaps)
    assert rows[0].after_prune.mean == 0 and rows[0].after_prune.n == 3
    one = rows[1]
    assert one.after_retrain.mean == pytest.approx(0.02) and one.after_prune.mean == pytest.approx(0)
    # mean 0.02, sd 0.01: 0.02 +- t_{0.975, 2} 0.01 / sqrt(3) (t table: 4.303).
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    assert (one.ci_retrain.low, one.ci_retrain.high) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    assert one.ci_prune.low == one.ci_prune.high == 0  # equal on every seed: a point, not evidence
    assert one.fraction_reference == pytest.approx(16 / 18)


def test_overlap_fraction():
    assert overlap_fraction([1, 2, 3, 4], [4, 3, 9, 8]) == 0.5
    assert overlap_fraction([1, 2], [2, 3, 4, 5]) == 0.25
    assert overlap_fraction([0, 1], [1, 0]) == 1.0
    assert overlap_fraction([], []) is None


def test_overlap_only_for_seeds_with_the_same_trained_model(runs):
    report = build_report(list(runs), config_root=None)
    rows = {(o.iteration, o.layer): o for o in report.overlaps}
    # Seed 1 pruned different models, so only seed 0 counts.
    assert all(o.common.n == 1 for o in report.overlaps)
    assert rows[1, 0].common.mean == 0.5  # {1, 2} vs {2, 5}
    assert rows[1, 1].common.mean == 1.0  # {0, 1} vs {1, 0}
    assert rows[1, 0].chance.mean == pytest.approx(2 / 10)
    assert rows[2, 0].common.mean == 0.5  # {3, 4} vs {1, 3}
    assert rows[2, 0].cumulative.mean == 0.75  # {1, 2, 3, 4} vs {2, 5, 1, 3}
    assert rows[2, 0].chance_cumulative.mean == pytest.approx(4 / 10)
    assert rows[2, 1].common.mean == 1.0


def test_all_pairs(tmp_path):
    folders = []
    for name, acc in (("cka", 0.85), ("l1", 0.83), ("l2", 0.80)):
        folders.append(tmp_path / name)
        for seed in (0, 1):
            write_result(folders[-1], name, name, seed, 0.9, [simple(1, 0.8, acc + seed / 100)], planned=1)
    from src.report import ReportOptions
    default = build_report(folders, config_root=None)
    every = build_report(folders, config_root=None, options=ReportOptions(all_pairs=True))
    assert sorted({(g.reference, g.other) for g in default.gaps}) == [("cka", "l1"), ("cka", "l2")]
    assert sorted({(g.reference, g.other) for g in every.gaps}) == [("cka", "l1"), ("cka", "l2"), ("l1", "l2")]
    assert next(g for g in every.gaps if (g.other, g.iteration) == ("l2", 1) and g.reference == "l1"
                ).after_retrain.mean == pytest.approx(0.03)


def test_nan_accuracy_stays_nan(tmp_path):
    run = tmp_path / "nan"
    write_result(run, "nan", "cka", 0, 0.9, [simple(1, math.nan, 0.5)], planned=1)
    write_result(run, "nan", "cka", 1, 0.9, [simple(1, 0.4, 0.5)], planned=1)
    row = rows_of(build_report([run], config_root=None), "cka")[1]
    assert math.isnan(row.after_prune.mean) and row.after_retrain.mean == pytest.approx(0.5)


@pytest.fixture
def one_thread():
    """``--threads 1`` for the entry points: on networks this small more threads only contend for a
    shared machine's cores (ten times the CPU). Afterwards the default threads, as any other run leaves them."""
    yield "1"
    apply_threads(None)


def test_report_on_results_the_pruner_wrote(write_config, tmp_path, one_thread):
    import main_prune
    import main_train

    dirs = []
    for criterion in ("cka", "l1"):
        config = write_config(criterion, prune={"params": {"type": criterion, "iterations": 2, "rate": 0.3}},
                              seeds=[0, 1])
        common = [str(config), "--models-dir", str(tmp_path / "models"), "--threads", one_thread]
        assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / "out")]) == 0
        dirs.append(tmp_path / "out" / criterion)
    report = build_report(dirs, config_root=None)
    written = {(d.name, seed): results.load(d / f"{seed}.json") for d in dirs for seed in (0, 1)}
    cka = rows_of(report, "cka")
    assert sorted(cka) == [0, 1, 2] and cka[2].seeds == (0, 1)
    assert cka[2].after_retrain.mean == pytest.approx(
        sum(written["cka", s].iterations[1].after_retrain["test_acc"] for s in (0, 1)) / 2)
    assert cka[2].remaining[0].mean == written["cka", 0].alive()[0] == 48 - 14 - 10
    assert cka[2].retrain_epochs.mean == pytest.approx(
        sum(written["cka", s].iterations[1].retrain.epochs for s in (0, 1)) / 2)
    # Both criteria pruned the same trained models, so every seed counts in the overlap.
    assert report.overlaps and all(o.common.n == 2 for o in report.overlaps)
    first = next(o for o in report.overlaps if (o.iteration, o.layer) == (1, 0))
    expected = [overlap_fraction(written["cka", s].iterations[0].layers[0].removed,
                                 written["l1", s].iterations[0].layers[0].removed) for s in (0, 1)]
    assert first.common.mean == pytest.approx(sum(expected) / 2)
    gap = next(g for g in report.gaps if g.iteration == 1)
    assert gap.after_prune.n == 2
    assert [len(t.seeds) for t in report.endpoints] == [2]
