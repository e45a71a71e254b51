"""Tests for cka_prune/checks.py: the removal order that every damage path takes is checked once, the same way."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cka_prune.checks import check_order
from cka_prune.fast import cka_path
from cka_prune.interactions import interactions_from_activations
from cka_prune.next_layer import next_layer_cka_path
from cka_prune.refit import reference_refit_cka_path, refit_cka_path
from tests.refit_helpers import cov, data

A, W, GROUPS = data(units=5, p=3)
ALIVE = np.array([True, True, True, True, False])  # group 4 was removed in an earlier pass

# Every path function, as order -> CKA after each prefix.
PATHS: dict[str, Callable[[list[int]], list[float]]] = {
    "cka_path": lambda order: cka_path(interactions_from_activations(A), order),
    "next_layer_cka_path": lambda order: next_layer_cka_path(cov(A), W, order),
    "refit_cka_path": lambda order: refit_cka_path(cov(A), W, order, GROUPS, ALIVE),
    "reference_refit_cka_path": lambda order: reference_refit_cka_path(A, W, order, GROUPS, ALIVE),
}


@pytest.mark.parametrize("order", [[0, 0], [-1], [5], [2, 7], [1.0], [[0, 1]]])
@pytest.mark.parametrize("path", PATHS)
def test_every_path_rejects_an_order_of_groups_that_do_not_exist(path: str, order: list) -> None:
    with pytest.raises(ValueError, match="order must"):
        PATHS[path](order)


@pytest.mark.parametrize("path", ["refit_cka_path", "reference_refit_cka_path"])
def test_refit_paths_reject_a_group_that_is_not_alive(path: str) -> None:
    with pytest.raises(ValueError, match=r"order must list distinct groups among the alive groups \[0, 1, 2, 3\]"):
        PATHS[path]([1, 4])


@pytest.mark.parametrize("path", PATHS)
def test_every_path_takes_a_valid_order_as_list_or_array(path: str) -> None:
    as_list = PATHS[path]([3, 0])
    assert len(as_list) == 2 and 0.0 <= as_list[1] <= as_list[0] <= 1.0 + 1e-12
    assert PATHS[path](np.array([3, 0])) == as_list
    assert PATHS[path]([]) == []


def test_check_order() -> None:
    assert check_order(np.array([2, 0], dtype=np.int32), 3) == [2, 0]
    assert check_order((), 3) == []
    assert check_order([1], 3, np.array([False, True, False])) == [1]
    for bad, alive in (([True], None), ([0, 0], None), ([-1], None), ([3], None), ([0], np.array([False, True, True]))):
        with pytest.raises(ValueError, match="order must"):
            check_order(bad, 3, alive)
