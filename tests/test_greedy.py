"""Tests for the greedy engines (cka_prune/greedy.py and the modules it re-exports: search.py, reference.py,
interactions.py, fast.py, next_layer.py): the fast engines must reproduce the literal reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_prune.cka import cka, gram_linear, gram_rbf
from cka_prune.greedy import (CovarianceAccumulator, Search, allocate, channel_groups, choose,
                              choose_route, constant_columns, fast_greedy_from_interactions,
                              fast_search, greedy_cka, interactions_from_activations,
                              interactions_from_covariance, next_layer_cka_path, reference_greedy)

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


# ---------------------------------------------------------------------------------------------
# Independent greedy, next-layer target, global allocation


def _literal_independent(x: np.ndarray, k: int, groups: list[np.ndarray], alive: np.ndarray,
                         stop_cka: float | None = None, weight: np.ndarray | None = None) -> Result:
    """The original code's loop: each step scores every alive neuron alone against the pass's
    original activations (earlier removals of the pass not applied) and removes the best."""
    rep = (lambda a: a) if weight is None else (lambda a: a @ weight.T)
    removed: list[int] = []
    scores: list[float] = []
    for _ in range(k):
        step = {}
        for i in range(len(groups)):
            if alive[i] and i not in removed:
                copy = x.copy()
                copy[:, groups[i]] = 0.5  # only i made constant
                step[i] = cka(gram_linear(rep(x)), gram_linear(rep(copy)))
        best = max(step.values())
        j = min(i for i, value in step.items() if value >= best - 1e-10 * abs(best))
        if stop_cka is not None and step[j] <= stop_cka:
            break
        removed.append(j)
        scores.append(step[j])
    return removed, scores


def _literal_conditional_next(x: np.ndarray, weight: np.ndarray, k: int) -> Result:
    """Conditional greedy scored at Z = A W^T, by recomputing Z for every candidate."""
    removed: list[int] = []
    scores: list[float] = []
    for _ in range(k):
        step = {}
        for i in range(x.shape[1]):
            if i not in removed:
                copy = x.copy()
                copy[:, removed + [i]] = 2.0
                step[i] = cka(gram_linear(x @ weight.T), gram_linear(copy @ weight.T))
        j = max(step, key=lambda i: (step[i], -i))
        removed.append(j)
        scores.append(step[j])
    return removed, scores


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("seed", [0, 1])
def test_independent_equals_the_literal_loop(engine: str, seed: int) -> None:
    x = _activations(seed=20 + seed)
    alive = np.ones(x.shape[1], dtype=bool)
    alive[[4, 9]] = False
    x[:, [4, 9]] = 0.3  # pruned in an earlier pass
    columns = channel_groups(x.shape[1], 1)
    expected = _literal_independent(x, 9, columns, alive)
    got = greedy_cka(x, 9, engine=engine, greedy="independent", alive=alive)
    _assert_same(expected, got)
    # Not the conditional pass on this data (else the test could not tell them apart).
    assert got[0] != greedy_cka(x, 9, engine=engine, alive=alive)[0]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_independent_with_stop_cka_and_conv_groups(engine: str) -> None:
    x = _activations(n=30, d=24, seed=23)
    groups = channel_groups(6, 4)
    alive = np.ones(6, dtype=bool)
    full = _literal_independent(x, 5, groups, alive)
    threshold = (full[1][2] + full[1][3]) / 2
    expected = _literal_independent(x, 5, groups, alive, stop_cka=threshold)
    assert len(expected[0]) == 3
    _assert_same(expected, greedy_cka(x, None, groups=groups, engine=engine, greedy="independent",
                                      stop_cka=threshold))


def test_independent_ties_go_to_the_lowest_index() -> None:
    x = _activations(seed=24)
    x[:, 12] = x[:, 3]  # identical columns: identical individual scores
    for engine in ("fast", "reference"):
        removed, _ = greedy_cka(x, 20, engine=engine, greedy="independent")
        assert removed.index(3) < removed.index(12)


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("seed", [0, 1])
def test_next_layer_fast_equals_reference(greedy: str, seed: int) -> None:
    x = _activations(n=40, d=18, seed=30 + seed)
    weight = np.random.default_rng(seed).standard_normal((7, 18))
    alive = np.ones(18, dtype=bool)
    alive[[0, 5]] = False
    x[:, [0, 5]] = 1.0
    reference = greedy_cka(x, 10, engine="reference", greedy=greedy, alive=alive, next_weight=weight)
    fast = greedy_cka(x, 10, engine="fast", greedy=greedy, alive=alive, next_weight=weight)
    _assert_same(reference, fast)
    threshold = (fast[1][4] + fast[1][5]) / 2
    _assert_same(greedy_cka(x, None, engine="reference", greedy=greedy, stop_cka=threshold, next_weight=weight),
                 greedy_cka(x, None, engine="fast", greedy=greedy, stop_cka=threshold, next_weight=weight))


def test_next_layer_scores_are_cka_at_the_next_layer() -> None:
    x = _activations(n=32, d=12, seed=33)
    weight = np.random.default_rng(3).standard_normal((5, 12))
    expected = _literal_conditional_next(x, weight, 11)
    got = greedy_cka(x, 11, next_weight=weight)
    _assert_same(expected, got)
    # The layer's own CKA ranks differently: the target matters on this data.
    assert got[0] != greedy_cka(x, 11)[0]
    centered = x - x.mean(axis=0)
    np.testing.assert_allclose(next_layer_cka_path(centered.T @ centered, weight, got[0]), got[1], rtol=1e-9)


def test_next_layer_fast_rejects_what_it_cannot_do() -> None:
    x = _activations(n=12, d=8, seed=34)
    weight = np.ones((3, 8))
    with pytest.raises(ValueError, match="biased CKA and one column per group"):
        greedy_cka(x, 2, next_weight=weight, debiased=True)
    with pytest.raises(ValueError, match="biased CKA and one column per group"):
        greedy_cka(x, 2, next_weight=weight, groups=channel_groups(4, 2))
    with pytest.raises(ValueError, match=r"shape \(p, 8\)"):
        greedy_cka(x, 2, next_weight=np.ones((3, 7)))
    with pytest.raises(ValueError, match="greedy must be one of"):
        greedy_cka(x, 2, greedy="lazy")


def _searches(widths: list[int], seed: int, greedy: str = "conditional") -> list[Search]:
    return [fast_search(interactions_from_activations(_activations(n=30, d=w, seed=seed + i)), greedy=greedy)
            for i, w in enumerate(widths)]


def test_global_allocation_follows_the_smallest_relative_drop() -> None:
    widths, budget = [10, 6, 14], 17
    searches = _searches(widths, 40)
    allocate(searches, budget)
    # The literal rule, with each layer's full conditional pass as its candidates' scores.
    paths = [greedy_cka(_activations(n=30, d=w, seed=40 + i), w - 1) for i, w in enumerate(widths)]
    taken = [0, 0, 0]
    for _ in range(budget):
        ratios = [paths[l][1][taken[l]] / (paths[l][1][taken[l] - 1] if taken[l] else 1.0)
                  if taken[l] < widths[l] - 1 else -np.inf for l in range(3)]
        taken[int(np.argmax(ratios))] += 1
    assert [len(s.removed) for s in searches] == taken
    for search, path in zip(searches, paths):
        assert search.removed == path[0][:len(search.removed)]
        np.testing.assert_allclose(search.scores, path[1][:len(search.removed)], rtol=1e-12)
    assert len(set(taken)) > 1  # the budget is not split evenly


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
def test_global_allocation_spends_exactly_the_budget_and_never_empties_a_layer(greedy: str) -> None:
    widths = [2, 9, 5]
    for budget in (0, 3, sum(w - 1 for w in widths)):
        searches = _searches(widths, 50, greedy)
        allocate(searches, budget)
        assert sum(len(s.removed) for s in searches) == budget
        assert all(int(s.candidates.sum()) >= 1 for s in searches)
        assert all(len(set(s.removed)) == len(s.removed) for s in searches)
    with pytest.raises(ValueError, match="exceeds"):
        allocate(_searches(widths, 50, greedy), sum(w - 1 for w in widths) + 1)
