"""Tests for src/pruning/greedy.py: the fast engine must reproduce the literal reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.cka import cka, gram_linear, gram_rbf
from src.pruning.greedy import (CovarianceAccumulator, channel_groups, choose, choose_route,
                                constant_columns, fast_greedy_from_interactions, greedy_cka,
                                interactions_from_activations, interactions_from_covariance,
                                reference_greedy)

Result = tuple[list[int], list[float]]


def _activations(n: int = 36, d: int = 20, seed: int = 0, relu: bool = True) -> np.ndarray:
    """Low-rank structure plus noise, like a hidden layer's outputs."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + 0.7 * rng.standard_normal((n, d)) + 0.5
    return np.maximum(a, 0.0) if relu else a


def _assert_same(reference: Result, fast: Result) -> None:
    assert fast[0] == reference[0]
    assert len(fast[1]) == len(reference[1])
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-6, atol=0)


def _both(x: np.ndarray, k: int | None, **kwargs) -> tuple[Result, Result]:
    return greedy_cka(x, k, engine="reference", **kwargs), greedy_cka(x, k, engine="fast", **kwargs)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_engines_agree_linear_layer(debiased: bool, seed: int) -> None:
    x = _activations(seed=seed)
    reference, fast = _both(x, 8, debiased=debiased)
    _assert_same(reference, fast)
    assert len(fast[0]) == 8 and len(set(fast[0])) == 8


def test_scores_are_cka_of_the_pruned_activations() -> None:
    x = _activations(seed=2)
    removed, scores = greedy_cka(x, 5)
    for step in range(5):
        pruned = x.copy()
        pruned[:, removed[:step + 1]] = -3.0  # any constant
        assert scores[step] == pytest.approx(cka(gram_linear(x), gram_linear(pruned)), rel=1e-9)
    assert all(a >= b for a, b in zip(scores, scores[1:]))  # nested kept sets: never better


def test_greedy_step_is_the_best_single_removal() -> None:
    x = _activations(seed=3, relu=False)
    first = greedy_cka(x, 1)[0][0]
    single = []
    for i in range(x.shape[1]):
        pruned = x.copy()
        pruned[:, i] = 0.0
        single.append(cka(gram_linear(x), gram_linear(pruned)))
    assert first == int(np.argmax(single))


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_with_stop_cka(debiased: bool) -> None:
    x = _activations(seed=4)
    full = greedy_cka(x, 12, debiased=debiased)
    threshold = (full[1][6] + full[1][7]) / 2  # between the 7th and 8th removal's scores
    reference, fast = _both(x, None, stop_cka=threshold, debiased=debiased)
    _assert_same(reference, fast)
    assert fast[0] == full[0][:7]
    assert min(fast[1]) > threshold
    # With both k and stop_cka, whichever comes first.
    assert greedy_cka(x, 3, stop_cka=threshold)[0] == full[0][:3]
    assert greedy_cka(x, 10, stop_cka=threshold)[0] == full[0][:7]


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_conv_layout(debiased: bool) -> None:
    channels, positions = 6, 4
    x = _activations(n=30, d=channels * positions, seed=5)
    groups = channel_groups(channels, positions)
    reference, fast = _both(x, 3, groups=groups, debiased=debiased)
    _assert_same(reference, fast)
    as_array = np.arange(channels * positions).reshape(channels, positions)  # one row per group
    assert greedy_cka(x, 3, groups=as_array, debiased=debiased) == fast


def test_engines_agree_interleaved_uneven_groups() -> None:
    # Channels-last layout (N, H*W*C): channel c owns columns c, c + C, ...; plus uneven sizes.
    channels, positions = 5, 3
    x = _activations(n=28, d=channels * positions, seed=6)
    interleaved = [np.arange(c, channels * positions, channels) for c in range(channels)]
    _assert_same(*_both(x, 3, groups=interleaved))
    uneven = [np.array([0, 7]), np.array([1]), np.array([2, 3, 4, 14]), np.arange(5, 7), np.arange(8, 14)]
    _assert_same(*_both(x, 4, groups=uneven, debiased=True))


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_with_alive_mask(debiased: bool) -> None:
    x = _activations(seed=7)
    dead = [2, 5, 11]
    x[:, dead] = 0.25  # pruned earlier: constant columns
    mask = np.ones(x.shape[1], dtype=bool)
    mask[dead] = False
    reference, fast = _both(x, 6, alive=mask, debiased=debiased)
    _assert_same(reference, fast)
    assert not set(fast[0]) & set(dead)
    assert greedy_cka(x, 6, alive=np.flatnonzero(mask).tolist(), debiased=debiased) == fast


@pytest.mark.parametrize("debiased", [False, True])
def test_dead_columns_tie_and_go_first_in_index_order(debiased: bool) -> None:
    x = _activations(seed=8)
    x[:, 9] = 0.0
    x[:, 3] = 1.7
    x[:, 14] = 0.0
    reference, fast = _both(x, 6, debiased=debiased)
    _assert_same(reference, fast)
    # Removing a constant column leaves CKA at exactly 1 (up to rounding): all three tie.
    assert fast[0][:3] == [3, 9, 14]
    np.testing.assert_allclose(fast[1][:3], 1.0, rtol=1e-12)


def test_removing_everything_scores_zero() -> None:
    x = _activations(n=12, d=5, seed=9)
    reference, fast = _both(x, 5)
    _assert_same(reference, fast)
    assert fast[1][-1] == 0.0
    # An all-constant output has no RBF bandwidth; its CKA is taken as 0 too.
    assert greedy_cka(x, 5, kernel="rbf", engine="reference")[1][-1] == 0.0


def test_rbf_fast_falls_back_to_reference_with_warning() -> None:
    x = _activations(n=20, d=8, seed=10)
    with pytest.warns(UserWarning, match="does not support kernel='rbf'"):
        fast = greedy_cka(x, 3, kernel="rbf")
    assert fast == greedy_cka(x, 3, kernel="rbf", engine="reference")
    pruned = x.copy()
    pruned[:, fast[0][:1]] = 0.0
    assert fast[1][0] == pytest.approx(cka(gram_rbf(x), gram_rbf(pruned)), rel=1e-12)


def test_accepts_torch_tensor() -> None:
    x = _activations(seed=11)
    tensor = torch.from_numpy(x).float()
    removed, _ = greedy_cka(tensor, 4, alive=torch.ones(x.shape[1], dtype=torch.bool))
    assert removed == greedy_cka(tensor.double().numpy(), 4)[0]


@pytest.mark.parametrize("debiased", [False, True])
def test_gram_and_covariance_routes_agree(debiased: bool) -> None:
    x = _activations(n=16, d=24, seed=12)
    groups = channel_groups(6, 4)
    cov = interactions_from_activations(x, groups, debiased=debiased, route="covariance")
    # A tiny memory bound forces one group per chunk and the off-diagonal recomputation.
    gram = interactions_from_activations(x, groups, debiased=debiased, route="gram", memory_bytes=1)
    np.testing.assert_allclose(gram, cov, rtol=1e-9, atol=1e-9 * np.abs(cov).max())
    reference = greedy_cka(x, 3, groups=groups, engine="reference", debiased=debiased)
    _assert_same(reference, fast_greedy_from_interactions(gram, 3))


def test_route_choice() -> None:
    assert choose_route(512, 512, 512, debiased=False) == "covariance"
    assert choose_route(2048, 512 * 16, 512, debiased=False) == "covariance"
    # Early conv layer: few channels, many positions, modest N -> per-group Grams are cheaper.
    assert choose_route(256, 16 * 32 * 32, 16, debiased=False) == "gram"


def test_streamed_covariance_matches_full_batch() -> None:
    x = _activations(n=50, d=12, seed=13) + 100.0  # large mean: the shift keeps precision
    acc = CovarianceAccumulator()
    for start in range(0, 50, 16):
        acc.update(torch.from_numpy(x[start:start + 16]))
    assert acc.count == 50
    centered = x - x.mean(axis=0)
    np.testing.assert_allclose(acc.centered(), centered.T @ centered, rtol=1e-9, atol=1e-9)
    groups = channel_groups(4, 3)
    np.testing.assert_allclose(interactions_from_covariance(acc.centered(), groups),
                               interactions_from_activations(x, groups), rtol=1e-8)


def test_constant_column_drops_out_of_debiased_interactions() -> None:
    x = _activations(n=20, d=6, seed=14)
    with_const = np.hstack([x, np.full((20, 1), 3.0)])
    m = interactions_from_activations(with_const, debiased=True)
    np.testing.assert_allclose(m[-1], 0.0, atol=1e-12 * np.abs(m).max())
    np.testing.assert_allclose(m[:-1, :-1], interactions_from_activations(x, debiased=True), rtol=1e-10)


def test_reference_greedy_with_custom_recompute() -> None:
    x = _activations(seed=15)
    groups = channel_groups(5, 4)
    calls: list[list[int]] = []
    base = constant_columns(x, groups)

    def recompute(removed: list[int]) -> np.ndarray:
        calls.append(list(removed))
        return base(removed)

    result = reference_greedy(x, recompute, 5, 2)
    assert result == greedy_cka(x, 2, groups=groups, engine="reference")
    assert len(calls) == 5 + 4 and calls[-1][:1] == result[0][:1]


def test_choose_tie_rule() -> None:
    scores = np.array([0.5, 0.9, 0.9 * (1 + 1e-12), 0.9 * (1 + 1e-6)])
    assert choose(scores, np.array([True, True, True, False])) == 1
    assert choose(scores, np.array([True, True, True, True])) == 3
    assert choose(scores, np.array([True, False, True, False])) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=None), "give k, stop_cka or both"),
    (dict(k=-1), "k must be in"),
    (dict(k=21), "k must be in"),
    (dict(k=2.0), "k must be an int"),
    (dict(k=True), "k must be an int"),
    (dict(k=2, stop_cka=float("nan")), "stop_cka must be a finite number"),
    (dict(k=2, engine="slow"), "engine must be one of"),
    (dict(k=2, kernel="cosine"), "kernel must be one of"),
    (dict(k=2, debiased=1), "debiased must be a bool"),
    (dict(k=2, groups=[np.arange(10)]), "partition"),
    (dict(k=2, groups=[np.arange(10), np.arange(9, 20)]), "partition"),
    (dict(k=2, groups=[np.arange(10), np.array([])]), "non-empty"),
    (dict(k=2, groups=[np.arange(10) * 1.0, np.arange(10, 20)]), "int column indices"),
    (dict(k=2, alive=np.ones(5, dtype=bool)), "alive mask must have shape"),
    (dict(k=2, alive=[0, 0, 1]), "distinct"),
    (dict(k=2, alive=[25]), "distinct and in"),
    (dict(k=3, alive=[0, 1]), "k must be in"),
])
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    x = _activations(n=12, d=20, seed=16)
    with pytest.raises(ValueError, match=message):
        greedy_cka(x, **kwargs)


def test_rejects_bad_activations() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        greedy_cka(np.ones((4, 2, 2)), 1)
    with pytest.raises(ValueError, match="NaN"):
        greedy_cka(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="N >= 4"):
        greedy_cka(np.ones((3, 2)), 1, debiased=True)
    for engine in ("fast", "reference"):
        with pytest.raises(ValueError, match="no variation"):
            greedy_cka(np.ones((6, 3)), 1, engine=engine)
    with pytest.raises(ValueError, match="symmetric"):
        fast_greedy_from_interactions(np.array([[1.0, 2.0], [0.0, 1.0]]), 1)
