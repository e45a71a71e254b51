import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from src import results
from src.errors import UserError
from src.results import IterationRecord, LayerInfo, LayerStep, RetrainSummary, RunIdentity, SeedResult
from src.report import (CRITERION_COLORS, build_report, default_out_dir, label_color, layer_records, main,
                        overlap_fraction, paired_test, smallest_wilcoxon_p, write_outputs, write_report)

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (10, 8)


def metrics(test_acc: float) -> dict:
    return {"train_loss": 0.1, "train_acc": 0.99, "val_loss": 0.2, "val_acc": 0.97, "test_loss": 0.2, "test_acc": test_acc}


def iteration(number: int, removed: list[list[int]], alive_before: list[int], cka: list[list[float]],
              pruned: float, retrained: float | None) -> IterationRecord:
    """One iteration; layer j loses removed[j] out of alive_before[j]."""
    layers = tuple(LayerStep(index=j, alive_before=alive_before[j], alive_after=alive_before[j] - len(removed[j]),
                             removed=tuple(removed[j]), scores=tuple(cka[j]), cka=tuple(cka[j]), seconds=0.01,
                             engine="fast") for j in range(len(WIDTHS)))
    return IterationRecord(iteration=number, layers=layers, after_prune=metrics(pruned),
                           after_retrain=None if retrained is None else metrics(retrained),
                           retrain=RetrainSummary(epochs=2, best_epoch=1, diverged=False, seconds=0.5))


def write_result(folder: Path, experiment: str, criterion: str, seed: int, baseline: float,
                 iterations: list[IterationRecord], planned: int = 2, model_file: str | None = None,
                 rate: float = 0.2) -> None:
    """A result as main_prune.py writes it; results of one folder share a run unless ``rate`` differs."""
    model_file = model_file or f"models/mlp_seed{seed}.pt"
    run = RunIdentity.of({"model_sha256": model_file, "prune": {"type": criterion, "rate": rate}})
    results.save(SeedResult(
        run=run, experiment=experiment, seed=seed, criterion=criterion, strategy="iterative", model_file=model_file,
        layers=tuple(LayerInfo(j, f"hidden.{j}.layer", "linear", w) for j, w in enumerate(WIDTHS)),
        baseline=metrics(baseline), planned_iterations=planned, iterations=tuple(iterations)), folder)


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """cka: seed 0 complete, seed 1 stopped after iteration 1, seed 2 missing.
    l1: seeds 0-2; seed 1 pruned a different trained model."""
    cka, l1 = tmp_path / "output" / "demo" / "cka", tmp_path / "output" / "demo" / "l1"
    write_result(cka, "demo/cka", "cka", 0, 0.90, [
        iteration(1, [[1, 2], [0, 1]], [10, 8], [[0.99, 0.97], [0.98, 0.95]], 0.80, 0.88),
        iteration(2, [[3, 4], [5]], [8, 6], [[0.96, 0.93], [0.94]], 0.70, 0.85),
    ])
    write_result(cka, "demo/cka", "cka", 1, 0.94, [
        iteration(1, [[6, 7], [2, 3]], [10, 8], [[0.995, 0.96], [0.97, 0.96]], 0.86, 0.92),
    ])
    write_result(l1, "demo/l1", "l1", 0, 0.90, [
        iteration(1, [[2, 5], [1, 0]], [10, 8], [[0.9, 0.8], [0.9, 0.85]], 0.70, 0.86),
        iteration(2, [[1, 3], [5]], [8, 6], [[0.9, 0.7], [0.8]], 0.50, 0.80),
    ])
    write_result(l1, "demo/l1", "l1", 1, 0.94, [
        iteration(1, [[6, 7], [2, 3]], [10, 8], [[0.9, 0.8], [0.9, 0.8]], 0.86, 0.90),
        iteration(2, [[0, 1], [4]], [8, 6], [[0.9, 0.8], [0.9]], 0.60, 0.84),
    ], model_file="models/other_seed1.pt")
    write_result(l1, "demo/l1", "l1", 2, 0.92, [])
    return cka, l1


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
    # Only seed 0 reached iteration 2.
    two = cka[2]
    assert two.seeds == (0,) and two.after_prune.n == 1 and two.after_prune.mean == 0.70
    assert two.fraction.mean == pytest.approx(11 / 18)


def test_gap_is_paired_by_seed(runs):
    report = build_report(list(runs), config_root=None)
    gaps = {g.iteration: g for g in report.gaps}
    assert all((g.reference, g.other) == ("cka", "l1") for g in report.gaps)
    assert gaps[0].after_prune.mean == pytest.approx(0) and gaps[0].after_prune.n == 2
    # Iteration 1: cka - l1 = 0.10 (seed 0) and 0.00 (seed 1) after pruning; 0.02 and 0.02 after retraining.
    assert (gaps[1].after_prune.mean, gaps[1].after_prune.min, gaps[1].after_prune.max) == \
        (pytest.approx(0.05), pytest.approx(0.0), pytest.approx(0.10))
    assert gaps[1].after_retrain.mean == pytest.approx(0.02)
    # Iteration 2: only seed 0 has it in both.
    assert gaps[2].after_prune.n == 1 and gaps[2].after_prune.mean == pytest.approx(0.20)
    assert gaps[2].fraction_reference == pytest.approx(11 / 18)


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
    assert any("seed(s) 1 did not prune the same trained model" in note for note in report.notes)


def test_partial_and_missing_seeds_are_reported_not_fatal(runs, tmp_path):
    cka, l1 = runs
    (cka / "3.json").write_text('{"experiment": "demo/cka", "seed"')  # cut short
    (cka / "notes.json").write_text("{}")  # not a seed file: ignored
    report = build_report([cka, l1], config_root=None)
    notes = "\n".join(report.experiments[0].notes)
    assert "1 seed(s) complete: 0" in notes
    assert "seed 1: 1 of 2 iterations done" in notes
    assert "no results yet for seed(s) 2" in notes
    assert f"skipped {cka / '3.json'}: not a result file this version can read" in notes
    assert "notes.json" not in notes
    l1_notes = "\n".join(report.experiments[1].notes)
    assert "seed 2: 0 of 2 iterations done" in l1_notes
    assert rows_of(report, "l1")[0].after_prune.n == 3


def test_malformed_file_names_the_key(runs):
    cka, _ = runs
    raw = json.loads((cka / "0.json").read_text())
    del raw["iterations"][1]["after_prune"]["test_acc"]
    (cka / "0.json").write_text(json.dumps(raw))
    report = build_report([cka], config_root=None)
    assert [s.seed for s in report.experiments[0].seeds] == [1]
    assert any("iterations[2].after_prune.test_acc" in note for note in report.experiments[0].notes)


def test_planned_seeds_come_from_the_config(runs, tmp_path):
    cka, _ = runs
    config = tmp_path / "config" / "demo" / "cka.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({
        "model": {"type": "mlp", "input_size": 784, "hidden_sizes": [10, 8], "output_size": 10},
        "prune": {"strategy": "iterative", "params": {"type": "cka", "iterations": 2, "rate": 0.2}, "modules": [0, 1]},
        "seeds": [0, 1, 5]}))
    report = build_report([cka], config_root=tmp_path / "config")
    assert "no results yet for seed(s) 5" in report.experiments[0].notes


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


def test_write_report_files(runs, tmp_path):
    out = tmp_path / "report"
    paths = write_report(list(runs), out, config_root=None)
    assert paths.accuracy_figure == out / "accuracy.png"
    assert [p.name for p in paths.figures] == ["accuracy.png", "cka.png", "overlap.png"]
    for figure in paths.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    markdown = paths.markdown.read_text()
    assert re.search(r"\| cka +\| +1 \|", markdown) and "![accuracy](accuracy.png)" in markdown
    with open(out / "iterations.csv") as handle:
        rows = list(csv.DictReader(handle))
    row = next(r for r in rows if (r["criterion"], r["iteration"]) == ("cka", "1"))
    assert float(row["test_acc_pruned_mean"]) == pytest.approx(0.83) and row["test_acc_pruned_n"] == "2"
    assert {p.name for p in paths.csv} == {"iterations.csv", "layers.csv", "gap.csv", "overlap.csv"}


def test_single_run_without_retraining(tmp_path):
    run = tmp_path / "solo"
    write_result(run, "solo", "l2", 0, 0.9, [
        iteration(1, [[1, 2], [0]], [10, 8], [[0.9, 0.8], [0.7]], 0.8, None)], planned=1)
    paths = write_report([run], None, config_root=None)
    assert paths.directory == run / "report"
    report = build_report([run], config_root=None)
    assert rows_of(report, "l2")[1].after_retrain is None and not report.gaps and not report.overlaps
    assert paths.accuracy_figure.stat().st_size > 0
    assert not (run / "report" / "gap.csv").exists()


def test_nan_accuracy_stays_nan(tmp_path):
    run = tmp_path / "nan"
    write_result(run, "nan", "cka", 0, 0.9, [iteration(1, [[1], [0]], [10, 8], [[0.9], [0.9]], math.nan, 0.5)], planned=1)
    write_result(run, "nan", "cka", 1, 0.9, [iteration(1, [[1], [0]], [10, 8], [[0.9], [0.9]], 0.4, 0.5)], planned=1)
    row = rows_of(build_report([run], config_root=None), "cka")[1]
    assert math.isnan(row.after_prune.mean) and row.after_retrain.mean == pytest.approx(0.5)


def test_no_results_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable result files"):
        build_report([tmp_path / "empty"], config_root=None)
    with pytest.raises(UserError, match="no such directory"):
        build_report([tmp_path / "absent"], config_root=None)


def test_cli_prints_tables_and_exits_2_on_bad_input(runs, tmp_path, capsys):
    assert main([str(d) for d in runs] + ["--out", str(tmp_path / "cli"), "--config-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy gap between criteria" in printed
    assert printed.rstrip().endswith(f"figure: {tmp_path / 'cli' / 'accuracy.png'}")
    done = subprocess.run([sys.executable, "-m", "src.report", str(tmp_path / "absent")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no such directory" in done.stderr


def test_importing_does_not_load_matplotlib():
    code = "import sys, src.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_results_of_another_run_are_left_out_not_mixed(runs):
    cka, _ = runs
    write_result(cka, "demo/cka", "cka", 5, 0.5, [], rate=0.5)  # the config was edited since seeds 0 and 1
    os.utime(cka / "5.json", (1, 1))  # ... and it is older than them
    report = build_report([cka], config_root=None)
    assert [s.seed for s in report.experiments[0].seeds] == [0, 1]
    assert any("seed(s) 5 are results of another run" in note for note in report.experiments[0].notes)


def test_report_on_results_the_pruner_wrote(write_config, tmp_path):
    import main_prune
    import main_train

    dirs = []
    for criterion in ("cka", "l1"):
        config = write_config(criterion, prune={"params": {"type": criterion, "iterations": 2, "rate": 0.3}},
                              seeds=[0, 1])
        common = [str(config), "--models-dir", str(tmp_path / "models")]
        assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / "out")]) == 0
        dirs.append(tmp_path / "out" / criterion)
    report = build_report(dirs, config_root=None)
    written = {(d.name, seed): results.load(d / f"{seed}.json") for d in dirs for seed in (0, 1)}
    cka = rows_of(report, "cka")
    assert sorted(cka) == [0, 1, 2] and cka[2].seeds == (0, 1)
    assert cka[2].after_retrain.mean == pytest.approx(
        sum(written["cka", s].iterations[1].after_retrain["test_acc"] for s in (0, 1)) / 2)
    assert cka[2].remaining[0].mean == written["cka", 0].alive()[0] == 48 - 14 - 10
    # Both criteria pruned the same trained models, so every seed counts in the overlap.
    assert report.overlaps and all(o.common.n == 2 for o in report.overlaps)
    first = next(o for o in report.overlaps if (o.iteration, o.layer) == (1, 0))
    expected = [overlap_fraction(written["cka", s].iterations[0].layers[0].removed,
                                 written["l1", s].iterations[0].layers[0].removed) for s in (0, 1)]
    assert first.common.mean == pytest.approx(sum(expected) / 2)
    gap = next(g for g in report.gaps if g.iteration == 1)
    assert gap.after_prune.n == 2


# ---------------------------------------------------------------- statistics a paper can use


def seeds_with_gaps(tmp_path: Path, gaps: list[float]) -> tuple[Path, Path]:
    """cka and l1 runs of one iteration over len(gaps) seeds; cka - l1 after retraining is gaps[s] on seed s."""
    cka, l1 = tmp_path / "cka", tmp_path / "l1"
    for seed, gap in enumerate(gaps):
        removed, before = [[1, 2], [0]], [10, 8]
        write_result(cka, "cka", "cka", seed, 0.9, [iteration(1, removed, before, [[0.9, 0.8], [0.9]], 0.7, 0.8 + gap)], planned=1)
        write_result(l1, "l1", "l1", seed, 0.9, [iteration(1, removed, before, [[0.9, 0.8], [0.9]], 0.7, 0.8)], planned=1)
    return cka, l1


def test_paired_test_is_scipys_bootstrap_of_the_mean_and_wilcoxon():
    d = [0.02, 0.035, -0.005, 0.01, 0.04, 0.025, 0.03]
    test = paired_test(d)
    ci = stats.bootstrap((np.array(d),), np.mean, n_resamples=9999, confidence_level=0.95, method="BCa",
                         rng=np.random.default_rng(0)).confidence_interval
    assert (test.low, test.high, test.n) == (ci.low, ci.high, 7)
    # Hand computation: ranks of |d| are 3, 6, 1, 2, 7, 4, 5; the negative one has rank 1, so W = 1, and of the
    # 2^7 = 128 equally likely sign patterns, 2 have W <= 1 (W = 0, 1): one-sided 2/128, two-sided 4/128.
    assert test.p == pytest.approx(4 / 128)
    assert test.low > 0 and test.excludes_zero
    assert paired_test(d) == test  # a fixed random state: the same interval every time
    assert paired_test([0.01]) is None and paired_test([0.01, math.nan]) is None
    same = paired_test([0.0, 0.0, 0.0])
    assert (same.low, same.high, same.p) == (0.0, 0.0, 1.0) and not same.excludes_zero


def test_smallest_wilcoxon_p_is_what_scipy_gives_for_one_sign():
    for n in (3, 5, 6, 8):
        assert smallest_wilcoxon_p(n) == pytest.approx(stats.wilcoxon(np.arange(1.0, n + 1)).pvalue)
    assert smallest_wilcoxon_p(5) > 0.05 > smallest_wilcoxon_p(6)


def test_gap_rows_carry_the_interval_and_say_where_it_is_significant(tmp_path):
    gaps = [0.02, 0.035, -0.005, 0.01, 0.04, 0.025, 0.03]
    report = build_report(list(seeds_with_gaps(tmp_path, gaps)), config_root=None)
    rows = {g.iteration: g for g in report.gaps}
    assert rows[1].test_retrain == paired_test([(0.8 + g) - 0.8 for g in gaps])  # as the accuracies give them
    assert rows[1].test_prune.excludes_zero is False  # equal after pruning on every seed
    assert rows[0].test_retrain.low == rows[0].test_retrain.high == 0
    from src.report import gap_table
    notes = "\n".join(gap_table(report).notes)
    assert "cka - l1, after retraining: the 95% CI of the mean gap excludes 0 (cka is ahead at iteration 1) " \
           "and includes 0 at iteration 0; Wilcoxon p < 0.05 at iteration 1." in notes
    assert "cka - l1, after pruning: the 95% CI of the mean gap includes 0 at every iteration" in notes


def test_with_few_seeds_the_report_says_the_test_cannot_reach_significance(tmp_path):
    report = build_report(list(seeds_with_gaps(tmp_path, [0.02, 0.03, 0.01])), config_root=None)
    from src.report import gap_table
    notes = "\n".join(gap_table(report).notes)
    assert ("cka - l1, after retraining: the 95% CI of the mean gap excludes 0 (cka is ahead at iteration 1) and "
            "includes 0 at iteration 0; but with n = 3 paired seeds the bootstrap interval falls well short of 95% "
            "coverage and the Wilcoxon test cannot reach p < 0.05 (its smallest p is 0.25): n is too small to call "
            "any difference significant.") in notes
    assert next(g for g in report.gaps if g.iteration == 1).test_retrain.p == pytest.approx(0.25)


def test_colours_are_fixed_per_criterion_whatever_the_order(tmp_path, runs):
    cka, l1 = runs
    first = build_report([cka, l1], config_root=None)
    second = build_report([l1, cka], config_root=None)
    from src.report import _styles
    assert _styles(first) == _styles(second)
    assert {label: style["color"] for label, style in _styles(first).items()} == \
        {"cka": CRITERION_COLORS["cka"], "l1": CRITERION_COLORS["l1"]}
    assert label_color("snip") == label_color("snip") != label_color("ex/a")  # unknown names: from the name alone
    assert re.fullmatch(r"#[0-9a-f]{6}", label_color("snip"))


def test_variants_of_a_criterion_share_its_colour_and_differ_in_marker_or_line():
    from src.report import run_style
    plain = run_style("cka", "cka")
    variants = [run_style(name, "cka") for name in ("cka-next", "cka-global", "cka-rewind", "cka-independent")]
    assert all(v["color"] == plain["color"] == CRITERION_COLORS["cka"] for v in variants)
    looks = {(s["marker"], s["linestyle"]) for s in [plain, *variants]}
    assert len(looks) == 5 and run_style("cka-next", "cka") == run_style("cka-next", "cka")


def test_every_figure_in_every_format(runs, tmp_path):
    report = build_report(list(runs), config_root=None)
    paths = write_outputs(report, tmp_path / "out", formats=("png", "pdf", "svg"))
    names = [p.name for p in paths.figures]
    assert names == [f"{stem}.{fmt}" for stem in ("accuracy", "cka", "overlap") for fmt in ("png", "pdf", "svg")]
    heads = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}
    assert all(p.read_bytes().startswith(heads[p.suffix]) for p in paths.figures)
    svg = (tmp_path / "out" / "cka.svg").read_text()
    assert "layer 1 (10)" in svg and "hidden.0.layer" not in svg  # no module names in titles or legends
    assert "![accuracy](accuracy.png)" in paths.markdown.read_text()
    assert main([str(d) for d in runs] + ["--out", str(tmp_path / "cli"), "--format", "svg"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").glob("accuracy.*")) == ["accuracy.svg"]
    with pytest.raises(UserError, match="--format: 'jpg' is not a figure format"):
        main([str(runs[0]), "--format", "png,jpg"])


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
    unpruned = frame.query("iteration == 0")
    assert (unpruned.alive_after == unpruned.width).all() and unpruned.min_cka.isna().all()
    by_seed = frame.groupby(["criterion", "iteration"])["test_acc_retrained"].mean()
    assert by_seed["cka", 1] == pytest.approx(0.90)
