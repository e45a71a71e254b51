"""The depth report (src.report.depth): ranking quality against literal formulas, and the report as written."""

from __future__ import annotations

import math

import pytest

from src import depth_results
from src.depth_results import BlockDamage
from src.report import main as report_main
from src.report.depth import load_depth_experiment, regret, spearman, true_damage, write_depth_report
from tests.test_depth_results import METRICS, point, result


def test_spearman_is_the_rank_formula_without_ties():
    # score ranks 1, 2, 3; damage ranks 3, 1, 2: d = (-2, 1, 1), rho = 1 - 6 * 6 / (3 * 8) = -0.5
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.3, "b": 0.1, "c": 0.2}) == pytest.approx(-0.5)
    assert math.isnan(spearman({"a": 1.0}, {"a": 0.3}))


def test_regret_is_the_first_choice_s_damage_above_the_least():
    assert regret({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.3, "b": 0.1, "c": 0.2}) == pytest.approx(0.2)
    assert regret({"a": 5.0, "b": 2.0}, {"a": 0.3, "b": 0.1}) == 0.0


def damaged(seed: int, compensate: str = "none"):
    """A record whose blocks raise the validation loss by 0.3, 0.1, 0.2 removed (0.03, 0.01, 0.02 patched)."""
    rises = {"blocks.0": 0.3, "blocks.1": 0.1, "blocks.2": 0.2}
    damage = tuple(BlockDamage(b, {**METRICS, "val_loss": METRICS["val_loss"] + r},
                               {**METRICS, "val_loss": METRICS["val_loss"] + r / 10}, 0.1) for b, r in rises.items())
    scores = {"cka": {"blocks.0": 1.0, "blocks.1": 2.0, "blocks.2": 3.0},
              "tail": {"blocks.0": 3.0, "blocks.1": 2.0, "blocks.2": 1.0}}
    return result(seed, points=[point(1, 0.8, macs=80, retrained=0.85), point(2, 0.6 + seed / 10, macs=60)],
                  damage=damage, scores=scores, compensate=compensate)


def test_the_true_damage_is_the_validation_loss_rise_patched_where_the_run_patches():
    record = damaged(0)
    assert true_damage(record, patched=False) == pytest.approx({"blocks.0": 0.3, "blocks.1": 0.1, "blocks.2": 0.2})
    assert true_damage(record, patched=True) == pytest.approx({"blocks.0": 0.03, "blocks.1": 0.01, "blocks.2": 0.02})


def test_the_report_renders_its_table_csvs_and_figure(tmp_path):
    folder = tmp_path / "depth" / "x"
    for seed in (0, 1):
        depth_results.save(damaged(seed), folder)
    paths = write_depth_report([folder], tmp_path / "report")
    text = paths.markdown.read_text()
    # count 2: test acc 60 % and 70 % over the two seeds, MACs 60 of 100
    assert "| depth/x      | 2                | 2       | 0.600       | 65.00 (60.00-70.00)" in text
    assert "| depth/x      | cka         | 2       | -0.500         | 0.2000" in text   # regret of blocks.0
    assert "| depth/x      | tail        | 2       | 0.500          | 0.1000" in text   # first choice blocks.2
    assert [p.name for p in paths.csv] == ["points.csv", "damage.csv"]
    assert len(paths.csv[0].read_text().splitlines()) == 1 + 4 and len(paths.csv[1].read_text().splitlines()) == 1 + 6
    assert paths.accuracy_figure.name == "accuracy.png" and paths.accuracy_figure.stat().st_size > 0


def test_python_m_src_report_gives_a_depth_folder_the_depth_report(tmp_path, capsys):
    folder = tmp_path / "depth" / "x"
    depth_results.save(damaged(0), folder)
    assert report_main([str(folder)]) == 0
    assert (folder / "report" / "report.md").exists()
    assert "# Depth pruning" in capsys.readouterr().out


def test_a_language_model_is_drawn_by_its_validation_loss(tmp_path):
    records = [result(0, points=[point(1, 0.5)], dataset=d) for d in ("python-stdlib", "mnist-5k")]
    metrics = []
    for record, name in zip(records, ("lm", "mlp")):
        depth_results.save(record, tmp_path / name)
        metrics.append(load_depth_experiment(tmp_path / name).metric)
    assert metrics == ["val_loss", "test_acc"]
