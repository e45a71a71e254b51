"""The report's CSV files: the long per-seed records, the gap intervals, the endpoint tests."""

import csv
import re

import pytest

from src.report import build_report, layer_records, write_outputs
from tests.report_helpers import runs, seeds_with_gaps, simple, write_result  # noqa: F401 (fixture)


def _csv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_gap_csv_has_the_t_interval(tmp_path):
    report = build_report(list(seeds_with_gaps(tmp_path, [0.01, 0.02, 0.03])), config_root=None)
    write_outputs(report, tmp_path / "out")
    row = next(r for r in _csv_rows(tmp_path / "out" / "gap.csv") if r["iteration"] == "1")
    gap = next(g for g in report.gaps if g.iteration == 1)
    assert float(row["gap_retrained_ci_low"]) == pytest.approx(gap.ci_retrain.low)
    assert float(row["gap_retrained_ci_high"]) == pytest.approx(gap.ci_retrain.high)
    assert row["gap_retrained_ci_method"] == "t" and not any("wilcoxon" in key for key in row)


def test_endpoint_csv_one_row_per_pair_and_endpoint(tmp_path):
    from src.report import Endpoint, ReportOptions

    report = build_report(list(seeds_with_gaps(tmp_path, [0.01, 0.02, 0.03], iterations=2)), config_root=None,
                          options=ReportOptions(endpoints=(Endpoint("iteration", 2),)))
    write_outputs(report, tmp_path / "out")
    rows = _csv_rows(tmp_path / "out" / "endpoints.csv")
    assert [(r["reference"], r["other"], r["endpoint"]) for r in rows] == [("cka", "l1", "mean"),
                                                                          ("cka", "l1", "iteration:2")]
    first = rows[0]
    assert first["description"] == "mean accuracy over iterations 1-2" and first["n"] == "3"
    assert float(first["mean_difference"]) == pytest.approx(0.02) and float(first["sd_difference"]) == pytest.approx(0.01)
    assert float(first["p"]) == pytest.approx(float(first["p_holm"]))
    assert first["significant"] == "False" and first["seeds_for_80pct_power"] == "5"
    assert {"ci_low", "ci_high", "seeds", "iterations"} <= set(first)


def test_long_csv_has_one_row_per_seed_criterion_iteration_and_layer(runs, tmp_path):
    import pandas as pd

    report = build_report(list(runs), config_root=None)
    write_outputs(report, tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "layers.csv")
    # cka: seed 0 has iterations 0-2, seed 1 0-1; l1: seeds 0 and 1 have 0-2, seed 2 only 0. Two layers each.
    assert len(frame) == len(layer_records(report)) == 2 * (3 + 2 + 3 + 3 + 1)
    assert not frame.duplicated(["criterion", "seed", "iteration", "layer"]).any()
    mean = frame.groupby(["criterion", "iteration", "layer"])["alive_after"].mean()
    assert mean["cka", 1, 0] == 8 and mean["cka", 2, 1] == 5
    row = frame.query("criterion == 'cka' and seed == 0 and iteration == 2 and layer == 0").iloc[0]
    assert (row.alive_before, row.alive_after, row.width) == (8, 6, 10)
    assert row.fraction_remaining_layer == pytest.approx(0.6) and row.fraction_remaining == pytest.approx(11 / 18)
    assert (row.min_cka, row.last_cka) == (0.93, 0.93) and row.test_acc_pruned == 0.70 and row.test_acc_retrained == 0.85
    assert row.retrain_epochs == 2
    unpruned = frame.query("iteration == 0")
    assert (unpruned.alive_after == unpruned.width).all() and unpruned.min_cka.isna().all()
    assert unpruned.retrain_epochs.isna().all()
    by_seed = frame.groupby(["criterion", "iteration"])["test_acc_retrained"].mean()
    assert by_seed["cka", 1] == pytest.approx(0.90)


def test_long_csv_keeps_diverged_seeds_and_skipped_layers_marked(tmp_path):
    run = tmp_path / "run"
    write_result(run, "run", "cka", 0, 0.9, [simple(1, 0.8, 0.85, skipped={1: "no channel index"})])
    write_result(run, "run", "cka", 1, 0.9, [simple(1, 0.8, 0.85), simple(2, 0.7, 0.1, diverged=True)])
    records = layer_records(build_report([run], config_root=None))
    assert {r["diverged_at"] for r in records if r["seed"] == 1} == {2}
    assert {r["diverged_at"] for r in records if r["seed"] == 0} == {None}
    assert [r["skipped"] for r in records if (r["seed"], r["iteration"]) == (0, 1)] == [None, "no channel index"]


def test_long_csv_carries_the_network_size_after_each_iteration(tmp_path):
    from dataclasses import replace

    from src import results

    run = tmp_path / "run"
    written = write_result(run, "run", "cka", 0, 0.9, [simple(1, 0.8, 0.85), simple(2, 0.7, 0.8)])
    sized = replace(written, baseline_parameters=1000, baseline_macs=900,
                    iterations=tuple(replace(it, parameters=1000 - 100 * it.iteration, macs=900 - 90 * it.iteration)
                                     for it in written.iterations))
    results.save(sized, run)
    records = layer_records(build_report([run], config_root=None))
    sizes = {r["iteration"]: (r["parameters"], r["macs"]) for r in records}
    assert sizes == {0: (1000, 900), 1: (900, 810), 2: (800, 720)}


def test_a_sweep_is_reported_per_rate_from_the_trained_model(tmp_path):
    """Point 2 (rate 0.5) of a sweep pruned the trained model: 5 of 10 and 4 of 8 remain, whatever point 1 removed."""
    import dataclasses

    from tests.report_helpers import iteration

    folders = []
    for criterion, shift in (("cka", 0), ("l1", 1)):
        points = [dataclasses.replace(iteration(1, [[1 + shift, 2], [0, 1]], [10, 8], [[0.99, 0.97], [0.98]], 0.8, 0.88),
                                      rate=0.2),
                  dataclasses.replace(iteration(2, [[1, 2, 3, 4, 5 + shift], [0, 1, 2, 3]], [10, 8], [[0.9], [0.9]],
                                                0.6, 0.8), rate=0.5)]
        folder = tmp_path / criterion
        write_result(folder, criterion, criterion, 0, 0.9, points)
        folders.append(folder)
    report = build_report(folders, config_root=None)
    paths = write_outputs(report, tmp_path / "out")
    rows = {(r["criterion"], r["iteration"]): r for r in _csv_rows(tmp_path / "out" / "iterations.csv")}
    assert rows[("cka", "2")]["rate"] == "0.5" and rows[("cka", "1")]["rate"] == "0.2" and rows[("cka", "0")]["rate"] == ""
    assert float(rows[("cka", "2")]["fraction_remaining"]) == pytest.approx(9 / 18)
    assert float(rows[("cka", "2")]["L0_remaining"]) == 5 and float(rows[("cka", "1")]["L0_remaining"]) == 8
    long = [r for r in layer_records(report) if r["criterion"] == "cka" and r["iteration"] == 2]
    assert [(r["rate"], r["alive_before"], r["alive_after"]) for r in long] == [(0.5, 10, 5), (0.5, 8, 4)]
    assert all(r["fraction_remaining"] == pytest.approx(0.5) for r in long)
    gap = next(g for g in report.gaps if g.iteration == 2)
    assert gap.fraction_reference == pytest.approx(0.5)
    overlap = next(o for o in report.overlaps if o.iteration == 2 and o.layer == 0)
    assert overlap.rate == 0.5 and overlap.cumulative.mean == overlap.common.mean == pytest.approx(4 / 5)
    assert [p.name for p in paths.figures] == ["accuracy.png", "cka.png", "overlap.png"]
    assert re.search(r"\| cka +\| 2 \(rate 0\.5\) \| +5 \(50\.0%\)", paths.markdown.read_text())
