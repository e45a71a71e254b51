"""Tests for cka_prune/fast.py's argument checks (its equivalence with the literal loop: tests/test_greedy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cka_prune.fast import cka_path, fast_greedy_from_interactions
from cka_prune.interactions import interactions_from_activations
from tests.greedy_helpers import activations


def _circulant(first_row: list[float]) -> np.ndarray:
    """C[i, j] = first_row[(j - i) mod n]: every row and every column sums to the same value."""
    n = len(first_row)
    return np.array([[first_row[(j - i) % n] for j in range(n)] for i in range(n)])


def test_a_non_symmetric_circulant_matrix_is_refused() -> None:
    m = _circulant([4.0, 1.0, 0.0, 2.0])
    assert not np.allclose(m, m.T) and np.allclose(m.sum(axis=0), m.sum(axis=1))
    with pytest.raises(ValueError, match="symmetric"):
        fast_greedy_from_interactions(m, 2)
    with pytest.raises(ValueError, match="symmetric"):
        cka_path(m, [0, 1])


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_symmetry_is_checked_relative_to_the_matrix_scale(scale: float) -> None:
    m = interactions_from_activations(activations(n=16, d=6, seed=3)) * scale
    expected = fast_greedy_from_interactions(m / scale, 3)
    assert fast_greedy_from_interactions(m, 3)[0] == expected[0]
    tilted = m.copy()
    tilted[0, 1] *= 1 + 1e-6  # far above rounding, relative to M's entries
    with pytest.raises(ValueError, match="symmetric"):
        fast_greedy_from_interactions(tilted, 3)
