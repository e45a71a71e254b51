"""The depth study's report as written (src.report.depth_study)."""

from __future__ import annotations

from dataclasses import replace

from scipy import stats

from src import depth_results, results
from src.report.depth_stats import METRICS as ENDPOINT_METRICS
from src.report.depth_study import write_study
from tests.report_helpers import simple, write_result
from tests.test_depth_results import point
from tests.test_report_depth_stats import damaged


def width_record(folder, seed: int, accuracies: list[float], macs: list[int]) -> None:
    its = [replace(simple(i + 1, acc, None), macs=m, rate=0.1 * (i + 1))
           for i, (acc, m) in enumerate(zip(accuracies, macs))]
    written = write_result(folder, "depth/width-e0-lstsq/tp_l1", "tp_l1", seed, 0.88, its, planned=2)
    results.save(replace(written, baseline_macs=100, strategy="one_shot"), folder)


def test_the_study_writes_its_tables_with_depth_against_the_best_width_at_matched_macs(tmp_path):
    root = tmp_path / "records"
    for seed in range(3):
        for cell in ("e0-none", "e0-lstsq"):
            depth_results.save(damaged(seed, f"depth/{cell}/tail"), root / cell / "tail")
            shifted = replace(damaged(seed, f"depth/{cell}/cka"), criterion="cka",
                              points=(point(1, 0.8, macs=80), point(2, (0.5, 0.65, 0.7)[seed], macs=60)))
            depth_results.save(shifted, root / cell / "cka")
        width_record(root / "width-e0-lstsq" / "tp_l1", seed, [(0.55, 0.6, 0.8)[seed], 0.5], [61, 40])
    markdown = write_study(root, ["e0-none", "e0-lstsq"], 2, [1], tmp_path / "out")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.read_text().splitlines()
            if line.startswith("|")]
    # tail 60/70/80 %, cka 50/65/70 %: cka - tail = (-10, -5, -10) pp, one pair: Holm p = p
    t = stats.ttest_1samp([-0.10, -0.05, -0.10], 0.0)
    low, high = t.confidence_interval(0.95)
    assert ["tail", "3", "0.600", "70.00 (60.00-80.00)"] in rows
    assert ["cka", "tail", "3", "-8.33", f"{100 * low:+.2f} to {100 * high:+.2f}", f"{t.pvalue:.3g}",
            f"{t.pvalue:.3g}", "yes"] in rows
    # depth lstsq's best (tail) against width's best at point 1 (tp_l1, 55/60/80 %): (+5, +10, 0) pp
    w = stats.ttest_1samp([0.05, 0.10, 0.0], 0.0)
    low, high = w.confidence_interval(0.95)
    assert ["e0-lstsq", "tail", "0.600", "70.00 (60.00-80.00)", "tp_l1", "0.610", "65.00 (55.00-80.00)", "3",
            "+5.00", f"{100 * low:+.2f} to {100 * high:+.2f}", f"{w.pvalue:.3g}"] in rows
    for name in ("endpoints.csv", "tests.csv", "ranking.csv", "accuracy-vs-macs.png", "latency.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_a_loss_endpoint_is_ranked_lowest_first_and_reported_in_nats(tmp_path):
    root = tmp_path / "records"
    for seed in range(3):
        losses = {"tail": (1.50, 1.55, 1.52)[seed], "cka": (1.40, 1.42, 1.41)[seed]}
        for criterion, loss in losses.items():
            record = damaged(seed, f"lm/e0-none/{criterion}")
            at_two = replace(record.points[1], after_prune={**record.points[1].after_prune, "val_loss": loss})
            depth_results.save(replace(record, criterion=criterion, points=(record.points[0], at_two)),
                               root / "e0-none" / criterion)
    markdown = write_study(root, ["e0-none"], 2, [], tmp_path / "out", metric=ENDPOINT_METRICS["val_loss"],
                           endpoints="config/lm/README.md")
    text = markdown.read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    t = stats.ttest_1samp([-0.10, -0.13, -0.11], 0.0)
    # lowest loss first; differences in nats, to 4 digits
    assert rows[2][:4] == ["cka", "3", "0.600", "1.4100 (1.4000-1.4200)"]
    (pair,) = [row for row in rows if row[:2] == ["cka", "tail"]]
    assert pair[2:4] == ["3", "-0.1133"] and pair[5] == f"{t.pvalue:.3g}"
    assert "(`config/lm/README.md`)" in text and "Depth against width" not in text
    assert "val_loss" in (tmp_path / "out" / "endpoints.csv").read_text().splitlines()[0]
