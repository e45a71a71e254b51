"""Tests for cka_prune/obs.py: structured OBS against literal refits, and small hand checks."""

from __future__ import annotations

import numpy as np
import pytest

from cka_prune.greedy_search import run_search
from cka_prune.obs import obs_greedy, obs_search, reference_obs_greedy, reference_obs_search
from tests.refit_helpers import CASES, cov, data


def _scale(a: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(((a - a.mean(axis=0)) @ w.T) ** 2))


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_obs_fast_equals_literal_refits(case: dict, ridge: float) -> None:
    a, w, groups = data(**case)
    alive = np.ones(len(groups), dtype=bool)
    alive[0] = False  # removed in an earlier pass: never a candidate
    k = int(alive.sum()) - 1
    fast = obs_greedy(cov(a), w, k, groups, alive, ridge)
    reference = reference_obs_greedy(a, w, k, groups, alive, ridge)
    assert fast[0] == reference[0]
    assert 0 not in fast[0]
    # The literal cost is a difference of two objectives of size ~ ||Z||^2, so it is exact to that scale.
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-8, atol=1e-10 * _scale(a, w))


def test_obs_cost_is_the_lstsq_error_increase() -> None:
    """lam = 0, one unit: the cost is ||Z - refit||^2 without the unit, refit by numpy.linalg.lstsq."""
    a, w, _ = data(n=30, units=4, p=3, seed=1)
    removed, costs = obs_greedy(cov(a), w, 1, ridge=0.0)
    z = a @ w.T
    rest = np.delete(a, removed[0], axis=1)
    design = np.hstack([rest, np.ones((30, 1))])
    residual = z - design @ np.linalg.lstsq(design, z, rcond=None)[0]
    assert costs[0] == pytest.approx(float(np.sum(residual ** 2)), rel=1e-9)
    # ... and the formula ||W[:, j]||^2 / [C^{-1}]_jj of the centred covariance.
    cost = [np.sum(w[:, j] ** 2) / np.linalg.inv(cov(a))[j, j] for j in range(4)]
    assert removed[0] == int(np.argmin(cost))
    assert costs[0] == pytest.approx(min(cost), rel=1e-9)


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
@pytest.mark.parametrize("scale", [1e7, 1e-7])
@pytest.mark.parametrize("case", [dict(dead=3), dict(m=4, units=6, dead_column=9)])
def test_obs_does_not_depend_on_the_activations_scale(case: dict, scale: float, ridge: float) -> None:
    """With a dead (constant) column among the kept ones, activations scaled by s give the same order and
    costs scaled by s^2 (the objective's units), in the closed form and the literal refits alike."""
    a, w, groups = data(**case)
    k = len(groups) - 1
    for engine, inputs in ((obs_greedy, cov), (reference_obs_greedy, lambda x: x)):
        unit = engine(inputs(a), w, k, groups, None, ridge)
        scaled = engine(inputs(a * scale), w, k, groups, None, ridge)
        assert scaled[0] == unit[0]
        np.testing.assert_allclose(np.array(scaled[1]) / scale**2, unit[1], rtol=1e-7, atol=1e-10 * _scale(a, w))


@pytest.mark.parametrize("engine", ["closed form", "literal"])
def test_obs_runs_on_the_shared_driver_with_ties_on_the_objective_scale(engine: str) -> None:
    """Two dead units: centring unit 2's constant 0.1 leaves rounding (a cost of ~1e-63, not 0), unit 5's
    0.25 is exact (cost 0). Both cost nothing on the objective's scale, so they tie -> the lower index."""
    a, w, groups = data()
    a[:, 2], a[:, 5] = 0.1, 0.25
    if engine == "closed form":
        search, (removed, costs) = obs_search(cov(a), w, groups), obs_greedy(cov(a), w, 4, groups)
        assert costs[0] > costs[1] == 0.0  # the tie, not the cost, puts unit 2 first
    else:
        search, (removed, costs) = reference_obs_search(a, w, groups), reference_obs_greedy(a, w, 4, groups)
    assert removed[:2] == [2, 5] and max(abs(c) for c in costs[:2]) < 1e-10 * _scale(a, w)
    assert run_search(search, 4, None) == (removed, [-c for c in costs])


def test_collinear_inputs_without_ridge_are_an_error() -> None:
    a, w, _ = data(units=5)
    a = np.hstack([a, a[:, :1] * 2.0])
    with pytest.raises(ValueError, match="singular"):
        obs_greedy(cov(a), np.hstack([w, w[:, :1]]), 1, ridge=0.0)


@pytest.mark.parametrize("k", [-1, 10, 1.5])
def test_obs_rejects_a_bad_k(k) -> None:
    a, w, groups = data()
    with pytest.raises(ValueError, match="k must"):
        obs_greedy(cov(a), w, k, groups)
