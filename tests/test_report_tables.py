"""The report's tables, as printed and as report.md, and the files write_outputs writes."""

import csv
import re

import pytest

from src.report import build_report, write_report
from src.report.tables import report_text
from tests.report_helpers import runs, simple, write_result  # noqa: F401 (fixture)


def _csv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_write_report_files(runs, tmp_path):
    out = tmp_path / "report"
    paths = write_report(list(runs), out, config_root=None)
    assert paths.accuracy_figure == out / "accuracy.png"
    assert [p.name for p in paths.figures] == ["accuracy.png", "cka.png", "overlap.png"]
    for figure in paths.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    markdown = paths.markdown.read_text()
    assert re.search(r"\| cka +\| +1 \|", markdown) and "![accuracy](accuracy.png)" in markdown
    assert "## Endpoint tests" in markdown
    row = next(r for r in _csv_rows(out / "iterations.csv") if (r["criterion"], r["iteration"]) == ("cka", "1"))
    assert float(row["test_acc_pruned_mean"]) == pytest.approx(0.83) and row["test_acc_pruned_n"] == "2"
    assert float(row["retrain_epochs_mean"]) == 2
    assert {p.name for p in paths.csv} == {"iterations.csv", "layers.csv", "gap.csv", "endpoints.csv", "overlap.csv"}




def test_single_run_without_retraining(tmp_path):
    run = tmp_path / "solo"
    write_result(run, "solo", "l2", 0, 0.9, [simple(1, 0.8, None)], planned=1)
    paths = write_report([run], None, config_root=None)
    assert paths.directory == run / "report"
    report = build_report([run], config_root=None)
    assert not report.gaps and not report.overlaps and not report.endpoints
    assert paths.accuracy_figure.stat().st_size > 0
    assert not (run / "report" / "gap.csv").exists() and not (run / "report" / "endpoints.csv").exists()




def test_printed_text_names_the_inputs_and_notes(runs):
    text = report_text(build_report(list(runs), config_root=None))
    assert text.startswith("cka: ") and "did not prune the same trained model" in text
    assert "Endpoint tests" in text and "Accuracy gap between criteria" in text


def test_a_folder_whose_every_seed_diverged_still_gets_its_report(tmp_path):
    run = tmp_path / "run"
    write_result(run, "run", "cka", 0, 0.9, [simple(1, 0.8, 0.85), simple(2, 0.7, 0.1, diverged=True)])
    paths = write_report([run], tmp_path / "out", config_root=None)
    assert "seed 0: DIVERGED in the retraining of iteration 2" in paths.markdown.read_text()
    assert paths.accuracy_figure.stat().st_size > 0 and (tmp_path / "out" / "iterations.csv").read_text() == ""
