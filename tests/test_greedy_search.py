"""Tests for cka_prune/greedy_search.py (the greedy driver): the tie rule and global allocation over several layers."""

from __future__ import annotations

import numpy as np
import pytest

from cka_prune.fast import fast_search
from cka_prune.greedy import greedy_cka
from cka_prune.interactions import interactions_from_activations
from cka_prune.greedy_search import Search, allocate, choose
from tests.greedy_helpers import activations


def test_choose_tie_rule() -> None:
    scores = np.array([0.5, 0.9, 0.9 * (1 + 1e-12), 0.9 * (1 + 1e-6)])
    assert choose(scores, np.array([True, True, True, False])) == 1
    assert choose(scores, np.array([True, True, True, True])) == 3
    assert choose(scores, np.array([True, False, True, False])) == 2


def test_choose_ties_relative_to_a_given_scale() -> None:
    # A best score of 0 ties nothing but exact zeros on its own scale; on the scores' scale (1e6) it ties
    # what is rounding there (1e-7 < 1e-10 * 1e6), not what is a real difference (1e-3).
    scores = np.array([-1e-3, -1e-7, 0.0])
    assert choose(scores, np.ones(3, dtype=bool)) == 2
    assert choose(scores, np.ones(3, dtype=bool), tie_scale=1e6) == 1


def test_choose_never_returns_a_non_candidate() -> None:
    # Candidates scored -inf (an infinite cost) still beat the masked-out ones, which also read -inf.
    assert choose(np.array([5.0, -np.inf, -np.inf]), np.array([False, False, True])) == 2
    assert choose(np.array([np.nan, -np.inf, 1.0]), np.array([False, True, True])) == 2


@pytest.mark.parametrize("scores, candidates", [
    (np.array([0.5, np.nan, 0.2]), np.array([True, True, True])),
    (np.array([0.5, 0.1]), np.array([False, False])),
])
def test_choose_refuses_nan_scores_and_no_candidates(scores: np.ndarray, candidates: np.ndarray) -> None:
    with pytest.raises(ValueError, match="no candidate left, or a candidate's score is NaN"):
        choose(scores, candidates)


def _searches(widths: list[int], seed: int, greedy: str = "conditional") -> list[Search]:
    return [fast_search(interactions_from_activations(activations(n=30, d=w, seed=seed + i)), greedy=greedy)
            for i, w in enumerate(widths)]


def test_global_allocation_follows_the_smallest_relative_drop() -> None:
    widths, budget = [10, 6, 14], 17
    searches = _searches(widths, 40)
    allocate(searches, budget)
    # The literal rule, with each layer's full conditional pass as its candidates' scores.
    paths = [greedy_cka(activations(n=30, d=w, seed=40 + i), w - 1) for i, w in enumerate(widths)]
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
