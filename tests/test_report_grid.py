import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from report_helpers import ROOT, iteration, write_result
from src.cli import run
from src.report.cli import main as report_main
from src.report.build import ReportOptions, build_report
from src.report.endpoints import Endpoint, MEAN
from src.report.grid import Cell, compare_group, compared_experiments, decision, main, mean_interval, seconds_spent
from src.report.stats import holm

# Per criterion, per seed: test accuracy after iterations 1 and 2 (retrained).
ACCURACY = {
    "cka": [(0.80, 0.70), (0.82, 0.71), (0.81, 0.69), (0.83, 0.72)],
    "l1": [(0.78, 0.60), (0.80, 0.66), (0.79, 0.62), (0.80, 0.64)],
    "taylor": [(0.85, 0.74), (0.84, 0.73), (0.86, 0.77), (0.85, 0.73)],
}


def write_cell(root, cell, accuracy=ACCURACY):
    for criterion, seeds in accuracy.items():
        for seed, (first, second) in enumerate(seeds):
            write_result(root / cell / criterion, f"grid/{cell}/{criterion}", criterion, seed, 0.9, [
                iteration(1, [[1, 2], [0]], [10, 8], [[0.9, 0.8], [0.9]], 0.5, first),
                iteration(2, [[3, 4], [5]], [8, 7], [[0.9, 0.8], [0.9]], 0.4, second),
            ])


def test_the_decision_is_the_best_cka_option_against_the_best_other_with_the_cells_holm_p(tmp_path):
    write_cell(tmp_path, "e0-none")
    folders = [tmp_path / "e0-none" / c for c in ACCURACY]
    endpoint = Endpoint("iteration", 2)
    cell = Cell("e0-none", build_report(folders, config_root=None,
                                        options=ReportOptions(endpoints=(endpoint,), all_pairs=True)))
    d = decision(cell, endpoint)
    assert (d.cka, d.other, d.n, d.family) == ("cka", "taylor", 4, 3)
    cka = np.array([s[1] for s in ACCURACY["cka"]])
    diff = cka - np.array([s[1] for s in ACCURACY["taylor"]])
    assert d.difference == pytest.approx(diff.mean())
    low, high = stats.ttest_1samp(diff, 0).confidence_interval(0.95)
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    # The family: every pair of the three criteria at iteration 2, corrected together.
    pairs = [("cka", "l1"), ("cka", "taylor"), ("l1", "taylor")]
    p = [stats.ttest_1samp(np.array([s[1] for s in ACCURACY[a]]) - np.array([s[1] for s in ACCURACY[b]]), 0).pvalue
         for a, b in pairs]
    assert d.p_holm == pytest.approx(holm(p)[1])
    assert d.verdict == ("CKA lower" if d.p_holm < 0.05 else "not distinguishable")
    # The mean endpoint reads the per-seed mean over both iterations instead.
    mean = decision(Cell("e0-none", build_report(folders, config_root=None,
                                                 options=ReportOptions(all_pairs=True))), MEAN)
    assert mean.cka_mean == pytest.approx(np.mean([(a + b) / 2 for a, b in ACCURACY["cka"]]))


def test_seconds_spent_adds_up_an_iterative_runs_iterations_and_not_a_sweeps(tmp_path):
    write_cell(tmp_path, "e0-none")
    from src import results
    seed = results.load(tmp_path / "e0-none" / "cka" / "0.json")
    per_iteration = [it.seconds_scoring + it.seconds_retraining for it in seed.iterations]
    assert seconds_spent(seed, 2) == pytest.approx(sum(per_iteration))
    from dataclasses import replace
    assert seconds_spent(replace(seed, strategy="one_shot"), 2) == pytest.approx(per_iteration[1])


def test_mean_interval_is_the_t_interval():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_compare_group_names_committed_records_by_their_study(tmp_path):
    assert compare_group(tmp_path / "study" / "records" / "cka") == "study"
    assert compare_group(tmp_path / "budget" / "iterative-none" / "cka") == "iterative-none"


def test_a_criterion_keeps_its_label_across_compared_groups_and_is_told_apart_within_one(tmp_path):
    for cell in ("iterative-none", "iterative-lstsq"):
        write_cell(tmp_path / "budget", cell, {"cka": ACCURACY["cka"], "l1": ACCURACY["cka"]})
    folders = [tmp_path / "budget" / cell / name for cell in ("iterative-none", "iterative-lstsq") for name in ("cka", "l1")]
    labelled = [(group, exp.label) for group, exp in compared_experiments(folders)]
    assert labelled == [("iterative-none", "cka"), ("iterative-none", "l1"),
                        ("iterative-lstsq", "cka"), ("iterative-lstsq", "l1")]


def test_the_command_writes_the_summary_decisions_and_figures(tmp_path, capsys):
    for cell in ("e0-none", "e0-lstsq", "e1-none", "e1-lstsq"):
        write_cell(tmp_path / "records", cell)
    write_cell(tmp_path / "study" / "records", "x", {"cka": ACCURACY["cka"]})
    out = tmp_path / "out"
    assert main([str(tmp_path / "records"), "--endpoint", "iteration:2", "--cells", "e0-none,e0-lstsq,e1-none,e1-lstsq",
                 "--compare", str(tmp_path / "study" / "records" / "x" / "cka"), "--at", "0.8", "--out", str(out)]) == 0
    for name in ("grid-summary.csv", "decisions.csv", "decisions.md", "accuracy-vs-neurons.png",
                 "accuracy-vs-parameters.png", "accuracy-vs-compute.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "decisions.csv").read_text().count("\n") == 5  # header + one row per cell
    assert "| e1-lstsq | cka" in capsys.readouterr().out


def _refused(argv, capsys) -> str:
    """What the command prints when run as ``python3 -m src.report.grid``: one stderr line, exit status 2."""
    with pytest.raises(SystemExit) as exit_:
        run(main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_a_missing_cell_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "records" / "e0-none").mkdir(parents=True)
    assert "no criterion folders" in _refused([str(tmp_path / "records"), "--out", str(tmp_path / "out")], capsys)


def test_a_missing_compared_folder_is_one_line_and_exit_2_before_anything_is_written(tmp_path):
    """As a command, through the user-error boundary every entry point shares."""
    write_cell(tmp_path / "records", "e0-none")
    absent = tmp_path / "study" / "records" / "cka"
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "src.report.grid", str(tmp_path / "records"),
                           "--compare", str(absent), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (f"error: {absent}: no such directory "
                           "(expected an output/<experiment>/ folder written by main_prune.py)\n")
    assert not (tmp_path / "out").exists()


def test_the_figure_formats_are_the_reports(tmp_path, capsys):
    """Both commands refuse a format matplotlib could write but the report does not offer, in the same words."""
    write_cell(tmp_path / "records", "e0-none")
    grid_error = _refused([str(tmp_path / "records"), "--format", "png,jpg", "--out", str(tmp_path / "out")], capsys)
    with pytest.raises(SystemExit):
        run(report_main, [str(tmp_path / "records" / "e0-none" / "cka"), "--format", "png,jpg",
                          "--out", str(tmp_path / "report")])
    assert "--format: 'jpg' is not a figure format" in grid_error
    assert capsys.readouterr().err == grid_error
    assert not (tmp_path / "out").exists()


def test_a_bad_endpoint_names_the_option(tmp_path, capsys):
    write_cell(tmp_path / "records", "e0-none")
    assert "--endpoint iteration:0: give iteration:K" in _refused(
        [str(tmp_path / "records"), "--endpoint", "iteration:0", "--out", str(tmp_path / "out")], capsys)
