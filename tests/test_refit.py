"""Tests for cka_prune/refit.py: the closed forms against literal refits, and small hand checks."""

from __future__ import annotations

import numpy as np
import pytest

from cka_prune.cka import feature_space_linear_cka
from cka_prune.greedy import channel_groups, run_search
from cka_prune.refit import (obs_greedy, reference_obs_greedy, reference_refit_cka_path, reference_refit_search,
                             refit_cka_path, refit_search, ridge_fit)


def _data(n: int = 50, units: int = 9, m: int = 1, p: int = 6, seed: int = 0,
          dead: int | None = None, dead_column: int | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Post-ReLU-like activations (n, units*m), a consumer weight (p, units*m) and the groups; ``dead``: a unit
    with a constant output, ``dead_column``: one constant column (a conv channel's always-zero position)."""
    rng = np.random.default_rng(seed)
    d = units * m
    a = np.maximum(rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_normal((n, d)) + 0.3, 0)
    if dead is not None:
        a[:, dead * m:(dead + 1) * m] = 0.25  # a removed unit's constant output
    if dead_column is not None:
        a[:, dead_column] = 0.0
    return a.astype(np.float32).astype(np.float64), rng.standard_normal((p, d)), channel_groups(units, m)


def _cov(a: np.ndarray) -> np.ndarray:
    x = a - a.mean(axis=0)
    return x.T @ x


def _scale(a: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(((a - a.mean(axis=0)) @ w.T) ** 2))


CASES = [dict(), dict(dead=3), dict(m=4, units=6), dict(m=3, units=7, dead=2), dict(m=4, units=6, dead_column=9),
         dict(seed=5, p=12)]


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_obs_fast_equals_literal_refits(case: dict, ridge: float) -> None:
    a, w, groups = _data(**case)
    alive = np.ones(len(groups), dtype=bool)
    alive[0] = False  # removed in an earlier pass: never a candidate
    k = int(alive.sum()) - 1
    fast = obs_greedy(_cov(a), w, k, groups, alive, ridge)
    reference = reference_obs_greedy(a, w, k, groups, alive, ridge)
    assert fast[0] == reference[0]
    assert 0 not in fast[0]
    # The literal cost is a difference of two objectives of size ~ ||Z||^2, so it is exact to that scale.
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-8, atol=1e-10 * _scale(a, w))


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_refit_cka_fast_equals_literal_refits(case: dict, ridge: float) -> None:
    a, w, groups = _data(**case)
    alive = np.ones(len(groups), dtype=bool)
    alive[1] = False
    fast = refit_search(_cov(a), w, groups, alive, ridge)
    reference = reference_refit_search(a, w, groups, alive, ridge)
    run_search(fast, int(alive.sum()) - 1, None)
    run_search(reference, int(alive.sum()) - 1, None)
    assert fast.removed == reference.removed
    np.testing.assert_allclose(fast.scores, reference.scores, rtol=1e-8, atol=0)
    order = fast.removed[::-1]  # another order: the paths agree too
    np.testing.assert_allclose(refit_cka_path(_cov(a), w, order, groups, alive, ridge),
                               reference_refit_cka_path(a, w, order, groups, alive, ridge), rtol=1e-8, atol=0)


def test_refit_independent_greedy_scores_each_unit_alone() -> None:
    a, w, groups = _data(seed=2)
    fast = refit_search(_cov(a), w, groups, None, 1e-3, greedy="independent")
    reference = reference_refit_search(a, w, groups, None, 1e-3, greedy="independent")
    run_search(fast, 5, None)
    run_search(reference, 5, None)
    assert fast.removed == reference.removed
    np.testing.assert_allclose(fast.scores, reference.scores, rtol=1e-8)


def test_obs_cost_is_the_lstsq_error_increase() -> None:
    """lam = 0, one unit: the cost is ||Z - refit||^2 without the unit, refit by numpy.linalg.lstsq."""
    a, w, _ = _data(n=30, units=4, p=3, seed=1)
    removed, costs = obs_greedy(_cov(a), w, 1, ridge=0.0)
    z = a @ w.T
    rest = np.delete(a, removed[0], axis=1)
    design = np.hstack([rest, np.ones((30, 1))])
    residual = z - design @ np.linalg.lstsq(design, z, rcond=None)[0]
    assert costs[0] == pytest.approx(float(np.sum(residual ** 2)), rel=1e-9)
    # ... and the formula ||W[:, j]||^2 / [C^{-1}]_jj of the centred covariance.
    cost = [np.sum(w[:, j] ** 2) / np.linalg.inv(_cov(a))[j, j] for j in range(4)]
    assert removed[0] == int(np.argmin(cost))
    assert costs[0] == pytest.approx(min(cost), rel=1e-9)


def test_refit_cka_at_zero_ridge_is_the_projection_form() -> None:
    """CKA(Z, P_K Z) = ||Z^T P_K Z||_F / ||Z^T Z||_F, P_K the projection onto the kept centred columns."""
    a, w, _ = _data(n=40, units=6, p=4, seed=3)
    x = a - a.mean(axis=0)
    z = x @ w.T
    kept = x[:, [0, 1, 3, 5]]
    projected = kept @ np.linalg.pinv(kept) @ z
    expected = np.linalg.norm(z.T @ projected) / np.linalg.norm(z.T @ z)
    assert refit_cka_path(_cov(a), w, [2, 4])[-1] == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(feature_space_linear_cka(z, projected), rel=1e-10)


def test_dead_unit_costs_nothing_and_goes_first() -> None:
    a, w, groups = _data(dead=4)
    assert obs_greedy(_cov(a), w, 1, groups, ridge=0.0) == ([4], [0.0])
    search = refit_search(_cov(a), w, groups, None, 0.0)
    run_search(search, 1, None)
    assert search.removed == [4]
    assert search.scores[0] == pytest.approx(1.0, rel=1e-12)  # at lam = 0 the alive units reproduce Z


def test_collinear_inputs_without_ridge_are_an_error() -> None:
    a, w, _ = _data(units=5)
    a = np.hstack([a, a[:, :1] * 2.0])
    with pytest.raises(ValueError, match="singular"):
        obs_greedy(_cov(a), np.hstack([w, w[:, :1]]), 1, ridge=0.0)


def test_ridge_fit_matches_the_normal_equations() -> None:
    a, w, _ = _data(n=30, units=5, p=3)
    z = a @ w.T
    lam = 0.7
    fitted, value = ridge_fit(a, z, lam)
    x, zc = a - a.mean(axis=0), z - z.mean(axis=0)
    coef = np.linalg.solve(x.T @ x + lam * np.eye(5), x.T @ zc)
    np.testing.assert_allclose(fitted, x @ coef + z.mean(axis=0), rtol=1e-9, atol=1e-9)
    assert value == pytest.approx(float(np.sum((zc - x @ coef) ** 2) + lam * np.sum(coef ** 2)), rel=1e-9)


@pytest.mark.parametrize("k", [-1, 10, 1.5])
def test_obs_rejects_a_bad_k(k) -> None:
    a, w, groups = _data()
    with pytest.raises(ValueError, match="k must"):
        obs_greedy(_cov(a), w, k, groups)
