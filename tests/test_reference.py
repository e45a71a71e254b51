"""Tests for cka_prune/reference.py (the literal loop) with a caller's own recompute, against loops written here."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cka_prune.cka import cka, gram_linear
from cka_prune.greedy import channel_groups, greedy_cka
from cka_prune.reference import constant_columns, reference_greedy
from tests.greedy_helpers import Result, activations, assert_same


def _literal_greedy(x: np.ndarray, groups: list[np.ndarray], k: int,
                    similarity: Callable[[np.ndarray, np.ndarray], float]) -> Result:
    """Conditional greedy by zeroing the columns of the removed groups and each candidate's, then scoring."""
    removed: list[int] = []
    scores: list[float] = []
    for _ in range(k):
        step = {}
        for i in range(len(groups)):
            if i not in removed:
                pruned = x.copy()
                pruned[:, np.concatenate([groups[g] for g in removed + [i]])] = 0.0
                step[i] = similarity(x, pruned)
        j = max(step, key=lambda i: (step[i], -i))  # ties: the lowest index
        removed.append(j)
        scores.append(step[j])
    return removed, scores


def _rbf_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased RBF CKA in plain NumPy: Grams from pairwise distances, the bandwidth the median squared distance
    over all pairs or, when that is 0, over the nonzero ones (gram_rbf's documented rule), HSIC by H K H."""
    def gram(a: np.ndarray) -> np.ndarray:
        sq = ((a[:, None, :] - a[None, :, :]) ** 2).sum(axis=-1)
        median = np.median(sq) if np.median(sq) > 0 else np.median(sq[sq > 0])
        return np.exp(-sq / (2 * median))

    h = np.eye(len(x)) - 1.0 / len(x)
    k, l = h @ gram(x) @ h, h @ gram(y) @ h
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))


def test_reference_greedy_with_custom_recompute() -> None:
    x = activations(seed=15)
    groups = channel_groups(5, 4)
    calls: list[list[int]] = []
    base = constant_columns(x, groups)

    def recompute(removed: list[int]) -> np.ndarray:
        calls.append(list(removed))
        return base(removed)

    result = reference_greedy(x, recompute, 5, 2)
    assert_same(_literal_greedy(x, groups, 2, lambda a, b: cka(gram_linear(a), gram_linear(b))), result)
    assert len(calls) == 5 + 4 and calls[-1][:1] == result[0][:1]


def test_rbf_search_scores_a_candidate_that_leaves_most_rows_identical() -> None:
    """Without column 0, rows 3..11 are all 0: 84 of the 144 pairs are identical, the median squared distance
    is 0, yet three rows still differ. The search scores that candidate instead of failing mid-way."""
    rng = np.random.default_rng(0)
    x = np.zeros((12, 3))
    x[:, 0] = rng.uniform(1.0, 2.0, 12)
    x[:2, 1] = rng.uniform(1.0, 2.0, 2)
    x[2, 2] = 1.5
    pruned = x.copy()
    pruned[:, 0] = 0.0
    assert np.median(((pruned[:, None] - pruned[None]) ** 2).sum(-1)) == 0 and np.any(pruned != pruned[0])
    expected = _literal_greedy(x, channel_groups(3, 1), 2, _rbf_cka)
    got = greedy_cka(x, 2, kernel="rbf", engine="reference")
    assert got[0] == expected[0]
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-10)
    assert 0.0 < _rbf_cka(x, pruned) < 1.0  # the degenerate candidate's score: finite, a real loss


@pytest.mark.parametrize("seed", [15, 16])
def test_reference_greedy_equals_a_loop_written_here(seed: int) -> None:
    x = activations(n=20, d=12, seed=seed)
    groups = channel_groups(4, 3)
    expected = _literal_greedy(x, groups, 3, lambda a, b: cka(gram_linear(a), gram_linear(b)))
    assert_same(expected, reference_greedy(x, constant_columns(x, groups), 4, 3))
    expected_rbf = _literal_greedy(x, groups, 3, _rbf_cka)
    got_rbf = reference_greedy(x, constant_columns(x, groups), 4, 3, kernel="rbf")
    assert got_rbf[0] == expected_rbf[0]
    np.testing.assert_allclose(got_rbf[1], expected_rbf[1], rtol=1e-10)
