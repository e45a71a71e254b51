"""The depth study's tests (src.report.depth_stats) against literal formulas."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scipy import stats

from src.depth_results import BlockDamage
from src.report.depth_stats import METRICS as ENDPOINT_METRICS
from src.report.depth_stats import Option, best, criteria_tests, patch_tests, rankings
from tests.test_depth_results import METRICS, point, result


def option(name: str, accuracy: list[float], cell: str = "e0-none") -> Option:
    seeds = range(len(accuracy))
    return Option(cell, name, dict(zip(seeds, accuracy)), {s: 50 for s in seeds}, {s: 100 for s in seeds})


A = option("cka", [0.80, 0.82, 0.81, 0.85])
B = option("tail", [0.78, 0.80, 0.80, 0.81])
C = option("random", [0.60, 0.70, 0.65, 0.61])


def test_every_pair_of_a_cell_is_a_paired_t_test_holm_corrected_within_the_cell():
    tests = criteria_tests("e0-none", [A, B, C])
    assert [(t.a, t.b) for t in tests] == [("cka", "tail"), ("cka", "random"), ("tail", "random")]
    p = [stats.ttest_rel(list(a.endpoint.values()), list(b.endpoint.values())).pvalue
         for a, b in ((A, B), (A, C), (B, C))]
    assert [t.test.p for t in tests] == pytest.approx(p)
    assert [t.test.mean for t in tests] == pytest.approx([0.0225, 0.1800, 0.1575])
    # Holm over 3: the smallest p times 3, the next times 2 (not below the first), the largest times 1
    order = sorted(range(3), key=lambda i: p[i])
    holm = {order[0]: 3 * p[order[0]]}
    holm[order[1]] = max(holm[order[0]], 2 * p[order[1]])
    holm[order[2]] = max(holm[order[1]], p[order[2]])
    assert [t.p_holm for t in tests] == pytest.approx([min(holm[i], 1.0) for i in range(3)])


def test_the_patch_is_lstsq_minus_none_per_criterion_over_the_seeds_both_have():
    none = [A, B]
    lstsq = [option("tail", [0.80, 0.83, 0.81], "e0-lstsq"), option("pons", [0.5, 0.5, 0.5], "e0-lstsq")]
    (tail,) = patch_tests("e0", none, lstsq)
    assert (tail.a, tail.b, tail.seeds) == ("tail", "tail", (0, 1, 2))
    assert tail.test.mean == pytest.approx((0.02 + 0.03 + 0.01) / 3)
    assert tail.p_holm == pytest.approx(stats.ttest_1samp([0.02, 0.03, 0.01], 0.0).pvalue)


def damaged(seed: int, experiment: str = "depth/e0-none/tail"):
    """Blocks raising the validation loss by 0.3, 0.1, 0.2 removed (0.03, 0.01, 0.02 patched)."""
    rises = {"blocks.0": 0.3, "blocks.1": 0.1, "blocks.2": 0.2}
    damage = tuple(BlockDamage(b, {**METRICS, "val_loss": METRICS["val_loss"] + r},
                               {**METRICS, "val_loss": METRICS["val_loss"] + r * (1 if b != "blocks.2" else 0.01)},
                               0.1) for b, r in rises.items())
    scores = {"cka": {"blocks.0": 1.0, "blocks.1": 2.0, "blocks.2": 3.0},
              "tail": {"blocks.0": 3.0, "blocks.1": 2.0, "blocks.2": 1.0}}
    record = result(seed, points=[point(1, 0.8, macs=80), point(2, 0.6 + seed / 10, macs=60)], damage=damage,
                    scores=scores, experiment=experiment)
    return replace(record, baseline_latency_seconds={"1": 2e-3, "64": 3e-2})


def test_ranking_quality_is_rho_and_regret_against_the_identity_s_and_the_patch_s_damage():
    ranked = {(r.criterion, r.patched): r for r in rankings([damaged(0), damaged(1)])}
    # identity: damage ranks (3, 1, 2); cka's scores rank (1, 2, 3): rho = 1 - 6 * (4 + 1 + 1) / 24 = -0.5
    assert ranked["cka", False].rho == pytest.approx((-0.5, -0.5))
    assert ranked["tail", False].rho == pytest.approx((0.5, 0.5))
    assert ranked["tail", False].regret == pytest.approx((0.1, 0.1))   # blocks.2 first: 0.2 - 0.1
    # patched: rises 0.3, 0.1, 0.002: blocks.2 is the least, tail's first choice
    assert ranked["tail", True].regret == pytest.approx((0.0, 0.0))
    assert ranked["cka", True].regret == pytest.approx((0.298, 0.298))


def test_each_damage_is_ranked_with_the_scores_of_the_table_recorded_with_its_compensation():
    # loss (and pons) score the network as their cell compensates: the none table's scores rank the
    # identity's damage, the lstsq table's the patch's, whichever cell is read last
    unpatched = damaged(0)
    patched = replace(damaged(0), run=result(0, compensate="lstsq").run,
                      criteria_scores={"cka": {"blocks.0": 3.0, "blocks.1": 2.0, "blocks.2": 1.0},
                                       "tail": {"blocks.0": 3.0, "blocks.1": 2.0, "blocks.2": 1.0}})
    for records in ([unpatched, patched], [patched, unpatched]):
        ranked = {(r.criterion, r.patched): r for r in rankings(records)}
        assert ranked["cka", False].rho == pytest.approx((-0.5,))  # the none table's cka: blocks.0 first
        assert ranked["cka", True].regret == pytest.approx((0.0,))  # the lstsq table's cka: blocks.2 first



def test_the_best_option_has_the_highest_accuracy_or_the_lowest_loss():
    low, high = option("cka", [1.40, 1.42, 1.41]), option("tail", [1.50, 1.55, 1.52])
    assert best([low, high], ENDPOINT_METRICS["val_loss"]) is low
    assert best([low, high], ENDPOINT_METRICS["test_acc"]) is high
