"""Tests for cka_prune/refit.py: the closed forms against literal refits, and small hand checks."""

from __future__ import annotations

import numpy as np
import pytest

from cka_prune.cka import feature_space_linear_cka
from cka_prune.engines import run_search
from cka_prune.obs import obs_greedy
from cka_prune.refit import reference_refit_cka_path, reference_refit_search, refit_cka_path, refit_search, ridge_fit
from tests.refit_helpers import CASES, cov, data


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_refit_cka_fast_equals_literal_refits(case: dict, ridge: float) -> None:
    a, w, groups = data(**case)
    alive = np.ones(len(groups), dtype=bool)
    alive[1] = False
    fast = refit_search(cov(a), w, groups, alive, ridge)
    reference = reference_refit_search(a, w, groups, alive, ridge)
    run_search(fast, int(alive.sum()) - 1, None)
    run_search(reference, int(alive.sum()) - 1, None)
    assert fast.removed == reference.removed
    np.testing.assert_allclose(fast.scores, reference.scores, rtol=1e-8, atol=0)
    order = fast.removed[::-1]  # another order: the paths agree too
    np.testing.assert_allclose(refit_cka_path(cov(a), w, order, groups, alive, ridge),
                               reference_refit_cka_path(a, w, order, groups, alive, ridge), rtol=1e-8, atol=0)


def test_refit_independent_greedy_scores_each_unit_alone() -> None:
    a, w, groups = data(seed=2)
    fast = refit_search(cov(a), w, groups, None, 1e-3, greedy="independent")
    reference = reference_refit_search(a, w, groups, None, 1e-3, greedy="independent")
    run_search(fast, 5, None)
    run_search(reference, 5, None)
    assert fast.removed == reference.removed
    np.testing.assert_allclose(fast.scores, reference.scores, rtol=1e-8)


def test_refit_cka_at_zero_ridge_is_the_projection_form() -> None:
    """CKA(Z, P_K Z) = ||Z^T P_K Z||_F / ||Z^T Z||_F, P_K the projection onto the kept centred columns."""
    a, w, _ = data(n=40, units=6, p=4, seed=3)
    x = a - a.mean(axis=0)
    z = x @ w.T
    kept = x[:, [0, 1, 3, 5]]
    projected = kept @ np.linalg.pinv(kept) @ z
    expected = np.linalg.norm(z.T @ projected) / np.linalg.norm(z.T @ z)
    assert refit_cka_path(cov(a), w, [2, 4])[-1] == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(feature_space_linear_cka(z, projected), rel=1e-10)


def test_dead_unit_costs_nothing_and_goes_first() -> None:
    a, w, groups = data(dead=4)
    assert obs_greedy(cov(a), w, 1, groups, ridge=0.0) == ([4], [0.0])
    search = refit_search(cov(a), w, groups, None, 0.0)
    run_search(search, 1, None)
    assert search.removed == [4]
    assert search.scores[0] == pytest.approx(1.0, rel=1e-12)  # at lam = 0 the alive units reproduce Z


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
@pytest.mark.parametrize("scale", [1e7, 1e-7])
@pytest.mark.parametrize("case", [dict(dead=3), dict(m=4, units=6, dead_column=9)])
def test_refit_cka_does_not_depend_on_the_activations_scale(case: dict, scale: float, ridge: float) -> None:
    """With a dead (constant) column among the kept ones, scaling the activations changes neither the
    order nor the CKA scores (CKA is scale-free), in the closed form and the literal refits alike."""
    a, w, groups = data(**case)
    k = len(groups) - 1

    def run(s: float) -> tuple[list[int], list[float], list[float], list[float], list[float]]:
        fast = refit_search(cov(a * s), w, groups, None, ridge)
        reference = reference_refit_search(a * s, w, groups, None, ridge)
        run_search(fast, k, None)
        run_search(reference, k, None)
        order = fast.removed[::-1]
        return (fast.removed, reference.removed, fast.scores, reference.scores,
                refit_cka_path(cov(a * s), w, order, groups, None, ridge)
                + reference_refit_cka_path(a * s, w, order, groups, None, ridge))

    unit, scaled = run(1.0), run(scale)
    assert scaled[0] == unit[0] and scaled[1] == unit[1]
    for got, expected in zip(scaled[2:], unit[2:]):
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)


def test_ridge_fit_matches_the_normal_equations() -> None:
    a, w, _ = data(n=30, units=5, p=3)
    z = a @ w.T
    lam = 0.7
    fitted, value = ridge_fit(a, z, lam)
    x, zc = a - a.mean(axis=0), z - z.mean(axis=0)
    coef = np.linalg.solve(x.T @ x + lam * np.eye(5), x.T @ zc)
    np.testing.assert_allclose(fitted, x @ coef + z.mean(axis=0), rtol=1e-9, atol=1e-9)
    assert value == pytest.approx(float(np.sum((zc - x @ coef) ** 2) + lam * np.sum(coef ** 2)), rel=1e-9)
