"""Tests for cka_prune/greedy.py: `greedy_cka` end to end (the fast engines must reproduce the literal reference
loop; its argument checks). The engines' re-exports are tests/test_engines.py; each engine module has its own
file: test_greedy_search.py, test_reference.py, test_interactions.py, test_next_layer.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_prune.cka import cka, gram_linear, gram_rbf
from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.greedy import channel_groups, greedy_cka
from tests.greedy_helpers import Result, activations, assert_same


def _both(x: np.ndarray, k: int | None, **kwargs) -> tuple[Result, Result]:
    return greedy_cka(x, k, engine="reference", **kwargs), greedy_cka(x, k, engine="fast", **kwargs)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_engines_agree_linear_layer(debiased: bool, seed: int) -> None:
    x = activations(seed=seed)
    reference, fast = _both(x, 8, debiased=debiased)
    assert_same(reference, fast)
    assert len(fast[0]) == 8 and len(set(fast[0])) == 8


def test_scores_are_cka_of_the_pruned_activations() -> None:
    x = activations(seed=2)
    removed, scores = greedy_cka(x, 5)
    for step in range(5):
        pruned = x.copy()
        pruned[:, removed[:step + 1]] = -3.0  # any constant
        assert scores[step] == pytest.approx(cka(gram_linear(x), gram_linear(pruned)), rel=1e-9)
    assert all(a >= b for a, b in zip(scores, scores[1:]))  # nested kept sets: never better


def test_greedy_step_is_the_best_single_removal() -> None:
    x = activations(seed=3, relu=False)
    first = greedy_cka(x, 1)[0][0]
    single = []
    for i in range(x.shape[1]):
        pruned = x.copy()
        pruned[:, i] = 0.0
        single.append(cka(gram_linear(x), gram_linear(pruned)))
    assert first == int(np.argmax(single))


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_with_stop_cka(debiased: bool) -> None:
    x = activations(seed=4)
    full = greedy_cka(x, 12, debiased=debiased)
    threshold = (full[1][6] + full[1][7]) / 2  # between the 7th and 8th removal's scores
    reference, fast = _both(x, None, stop_cka=threshold, debiased=debiased)
    assert_same(reference, fast)
    assert fast[0] == full[0][:7]
    assert min(fast[1]) > threshold
    # With both k and stop_cka, whichever comes first.
    assert greedy_cka(x, 3, stop_cka=threshold)[0] == full[0][:3]
    assert greedy_cka(x, 10, stop_cka=threshold)[0] == full[0][:7]


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_conv_layout(debiased: bool) -> None:
    channels, positions = 6, 4
    x = activations(n=30, d=channels * positions, seed=5)
    groups = channel_groups(channels, positions)
    reference, fast = _both(x, 3, groups=groups, debiased=debiased)
    assert_same(reference, fast)
    as_array = np.arange(channels * positions).reshape(channels, positions)  # one row per group
    assert greedy_cka(x, 3, groups=as_array, debiased=debiased) == fast


def test_engines_agree_interleaved_uneven_groups() -> None:
    # Channels-last layout (N, H*W*C): channel c owns columns c, c + C, ...; plus uneven sizes.
    channels, positions = 5, 3
    x = activations(n=28, d=channels * positions, seed=6)
    interleaved = [np.arange(c, channels * positions, channels) for c in range(channels)]
    assert_same(*_both(x, 3, groups=interleaved))
    uneven = [np.array([0, 7]), np.array([1]), np.array([2, 3, 4, 14]), np.arange(5, 7), np.arange(8, 14)]
    assert_same(*_both(x, 4, groups=uneven, debiased=True))


@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_with_alive_mask(debiased: bool) -> None:
    x = activations(seed=7)
    dead = [2, 5, 11]
    x[:, dead] = 0.25  # pruned earlier: constant columns
    mask = np.ones(x.shape[1], dtype=bool)
    mask[dead] = False
    reference, fast = _both(x, 6, alive=mask, debiased=debiased)
    assert_same(reference, fast)
    assert not set(fast[0]) & set(dead)
    assert greedy_cka(x, 6, alive=np.flatnonzero(mask).tolist(), debiased=debiased) == fast


@pytest.mark.parametrize("debiased", [False, True])
def test_dead_columns_tie_and_go_first_in_index_order(debiased: bool) -> None:
    x = activations(seed=8)
    x[:, 9] = 0.0
    x[:, 3] = 1.7
    x[:, 14] = 0.0
    reference, fast = _both(x, 6, debiased=debiased)
    assert_same(reference, fast)
    # Removing a constant column leaves CKA at exactly 1 (up to rounding): all three tie.
    assert fast[0][:3] == [3, 9, 14]
    np.testing.assert_allclose(fast[1][:3], 1.0, rtol=1e-12)


def test_removing_everything_scores_zero() -> None:
    x = activations(n=12, d=5, seed=9)
    reference, fast = _both(x, 5)
    assert_same(reference, fast)
    assert fast[1][-1] == 0.0
    # An all-constant output has no RBF bandwidth; its CKA is taken as 0 too.
    assert greedy_cka(x, 5, kernel="rbf", engine="reference")[1][-1] == 0.0


def test_rbf_fast_falls_back_to_reference_with_warning() -> None:
    x = activations(n=20, d=8, seed=10)
    with pytest.warns(UserWarning, match="does not support kernel='rbf'"):
        fast = greedy_cka(x, 3, kernel="rbf")
    assert fast == greedy_cka(x, 3, kernel="rbf", engine="reference")
    pruned = x.copy()
    pruned[:, fast[0][:1]] = 0.0
    assert fast[1][0] == pytest.approx(cka(gram_rbf(x), gram_rbf(pruned)), rel=1e-12)


def test_accepts_torch_tensor() -> None:
    x = activations(seed=11)
    tensor = torch.from_numpy(x).float()
    removed, _ = greedy_cka(tensor, 4, alive=torch.ones(x.shape[1], dtype=torch.bool))
    assert removed == greedy_cka(tensor.double().numpy(), 4)[0]


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
    x = activations(n=12, d=20, seed=16)
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
# Independent greedy, next-layer target


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


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("seed", [0, 1])
def test_independent_equals_the_literal_loop(engine: str, seed: int) -> None:
    x = activations(seed=20 + seed)
    alive = np.ones(x.shape[1], dtype=bool)
    alive[[4, 9]] = False
    x[:, [4, 9]] = 0.3  # pruned in an earlier pass
    columns = channel_groups(x.shape[1], 1)
    expected = _literal_independent(x, 9, columns, alive)
    got = greedy_cka(x, 9, engine=engine, greedy="independent", alive=alive)
    assert_same(expected, got)
    # Not the conditional pass on this data (else the test could not tell them apart).
    assert got[0] != greedy_cka(x, 9, engine=engine, alive=alive)[0]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_independent_with_stop_cka_and_conv_groups(engine: str) -> None:
    x = activations(n=30, d=24, seed=23)
    groups = channel_groups(6, 4)
    alive = np.ones(6, dtype=bool)
    full = _literal_independent(x, 5, groups, alive)
    threshold = (full[1][2] + full[1][3]) / 2
    expected = _literal_independent(x, 5, groups, alive, stop_cka=threshold)
    assert len(expected[0]) == 3
    assert_same(expected, greedy_cka(x, None, groups=groups, engine=engine, greedy="independent",
                                     stop_cka=threshold))


def test_independent_ties_go_to_the_lowest_index() -> None:
    x = activations(seed=24)
    x[:, 12] = x[:, 3]  # identical columns: identical individual scores
    for engine in ("fast", "reference"):
        removed, _ = greedy_cka(x, 20, engine=engine, greedy="independent")
        assert removed.index(3) < removed.index(12)


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("seed", [0, 1])
def test_next_layer_fast_equals_reference(greedy: str, seed: int) -> None:
    x = activations(n=40, d=18, seed=30 + seed)
    weight = np.random.default_rng(seed).standard_normal((7, 18))
    alive = np.ones(18, dtype=bool)
    alive[[0, 5]] = False
    x[:, [0, 5]] = 1.0
    reference = greedy_cka(x, 10, engine="reference", greedy=greedy, alive=alive, next_weight=weight)
    fast = greedy_cka(x, 10, engine="fast", greedy=greedy, alive=alive, next_weight=weight)
    assert_same(reference, fast)
    threshold = (fast[1][4] + fast[1][5]) / 2
    assert_same(greedy_cka(x, None, engine="reference", greedy=greedy, stop_cka=threshold, next_weight=weight),
                greedy_cka(x, None, engine="fast", greedy=greedy, stop_cka=threshold, next_weight=weight))


def test_next_layer_fast_rejects_what_it_cannot_do() -> None:
    x = activations(n=12, d=8, seed=34)
    weight = np.ones((3, 8))
    with pytest.raises(ValueError, match="biased CKA and one column per group"):
        greedy_cka(x, 2, next_weight=weight, debiased=True)
    with pytest.raises(ValueError, match="biased CKA and one column per group"):
        greedy_cka(x, 2, next_weight=weight, groups=channel_groups(4, 2))
    with pytest.raises(ValueError, match=r"shape \(p, 8\)"):
        greedy_cka(x, 2, next_weight=np.ones((3, 7)))
    with pytest.raises(ValueError, match="greedy must be one of"):
        greedy_cka(x, 2, greedy="lazy")

