"""The command: python3 -m src.report RESULT_DIR... and its options."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from src.errors import UserError
from src.report import build_report, cli, default_out_dir, main
from tests.report_helpers import ROOT, runs, seeds_with_gaps, write_result  # noqa: F401 (fixture)


def test_cli_prints_tables_and_exits_2_on_bad_input(runs, tmp_path, capsys, entry_point):
    assert main([str(d) for d in runs] + ["--out", str(tmp_path / "cli"), "--config-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy gap between criteria" in printed and "Endpoint tests" in printed
    assert printed.rstrip().endswith(f"figure: {tmp_path / 'cli' / 'accuracy.png'}")
    # One real process for the command's exit status; the option checks run in this one.
    done = subprocess.run([sys.executable, "-m", "src.report", str(tmp_path / "absent")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no such directory" in done.stderr
    for args, message in (([str(runs[0]), "--endpoint", "iteration:0"], "--endpoint iteration:0"),
                          ([str(runs[0]), "--fixed-endpoint", "mean:1"], "--fixed-endpoint mean:1")):
        status, _, stderr = entry_point(cli, *args)
        assert status == 2
        assert stderr.count("\n") == 1 and message in stderr


def test_options_reach_the_report(tmp_path, capsys):
    folders = seeds_with_gaps(tmp_path, [0.01 * s for s in range(10)], iterations=2)
    write_result(tmp_path / "l2", "l2", "l2", 0, 0.9, [], planned=2)
    out = tmp_path / "out"
    assert main([*map(str, folders), str(tmp_path / "l2"), "--out", str(out), "--config-root", str(tmp_path),
                 "--bootstrap", "--all-pairs", "--endpoint", "iteration:2", "--endpoint", "remaining:0.5"]) == 0
    text = (out / "report.md").read_text()
    assert "BCa" in text and "accuracy at iteration 2" in text and "accuracy at <= 50.0% remaining" in text
    assert "| l1 - l2 " in text  # every pair, not only each against the first
    assert main([*map(str, folders), "--out", str(tmp_path / "fixed"), "--fixed-endpoint", "iteration:2"]) == 0
    fixed = (tmp_path / "fixed" / "report.md").read_text()
    assert "The endpoint fixed before the run: the test accuracy at iteration 2." in fixed
    methods = {(row["reference"], row["other"], row["iteration"]): row["gap_retrained_ci_method"]
               for row in csv.DictReader((out / "gap.csv").read_text().splitlines())}
    assert methods["cka", "l1", "1"] == "BCa" and methods["cka", "l2", "0"] == ""  # l2: one seed, no interval


def test_labels_fall_back_to_experiment_names(tmp_path):
    for name in ("a", "b"):
        write_result(tmp_path / name, f"ex/{name}", "cka", 0, 0.9, [])
    report = build_report([tmp_path / "a", tmp_path / "b"], config_root=None)
    assert [exp.label for exp in report.experiments] == ["a", "b"]
    assert default_out_dir(report) == Path("output/report/ex-a_vs_ex-b")
    for name in ("x/a", "y/a"):  # the last parts clash: full names
        write_result(tmp_path / name, name, "cka", 0, 0.9, [])
    report = build_report([tmp_path / "x/a", tmp_path / "y/a", tmp_path / "b"], config_root=None)
    assert [exp.label for exp in report.experiments] == ["x/a", "y/a", "b"]


def test_no_results_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable result files"):
        build_report([tmp_path / "empty"], config_root=None)
    with pytest.raises(UserError, match="no such directory"):
        build_report([tmp_path / "absent"], config_root=None)


def test_importing_does_not_load_matplotlib():
    code = "import sys, src.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
