"""Tests for cka_prune/reference.py (the literal loop) with a caller's own recompute."""

from __future__ import annotations

import numpy as np

from cka_prune.greedy import channel_groups, greedy_cka
from cka_prune.reference import constant_columns, reference_greedy
from tests.greedy_helpers import activations


def test_reference_greedy_with_custom_recompute() -> None:
    x = activations(seed=15)
    groups = channel_groups(5, 4)
    calls: list[list[int]] = []
    base = constant_columns(x, groups)

    def recompute(removed: list[int]) -> np.ndarray:
        calls.append(list(removed))
        return base(removed)

    result = reference_greedy(x, recompute, 5, 2)
    assert result == greedy_cka(x, 2, groups=groups, engine="reference")
    assert len(calls) == 5 + 4 and calls[-1][:1] == result[0][:1]
