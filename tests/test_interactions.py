"""Tests for cka_prune/interactions.py: the interaction matrix by either route, streamed covariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.greedy import channel_groups, greedy_cka
from cka_prune.interactions import (CovarianceAccumulator, choose_route, interactions_from_activations,
                                    interactions_from_covariance)
from tests.greedy_helpers import activations, assert_same


@pytest.mark.parametrize("debiased", [False, True])
def test_gram_and_covariance_routes_agree(debiased: bool) -> None:
    x = activations(n=16, d=24, seed=12)
    groups = channel_groups(6, 4)
    cov = interactions_from_activations(x, groups, debiased=debiased, route="covariance")
    # A tiny memory bound forces one group per chunk and the off-diagonal recomputation.
    gram = interactions_from_activations(x, groups, debiased=debiased, route="gram", memory_bytes=1)
    np.testing.assert_allclose(gram, cov, rtol=1e-9, atol=1e-9 * np.abs(cov).max())
    reference = greedy_cka(x, 3, groups=groups, engine="reference", debiased=debiased)
    assert_same(reference, fast_greedy_from_interactions(gram, 3))


def test_route_choice() -> None:
    assert choose_route(512, 512, 512, debiased=False) == "covariance"
    assert choose_route(2048, 512 * 16, 512, debiased=False) == "covariance"
    # Early conv layer: few channels, many positions, modest N -> per-group Grams are cheaper.
    assert choose_route(256, 16 * 32 * 32, 16, debiased=False) == "gram"


def test_streamed_covariance_keeps_its_digits_under_a_large_mean() -> None:
    """A mean of 1e8 over a spread of ~1: the one-pass formula sum(a a^T) - N mu mu^T would subtract
    two numbers of ~5e17 whose float64 rounding (~100) exceeds the answer (~50); the shift by the first
    batch's mean keeps the sums O(1). Checked against the two-pass covariance of the centred data."""
    x = activations(n=50, d=12, seed=13) + 1e8
    acc = CovarianceAccumulator()
    for start in range(0, 50, 16):
        acc.update(torch.from_numpy(x[start:start + 16]))
    assert acc.count == 50
    centered = x - x.mean(axis=0)
    exact = centered.T @ centered
    np.testing.assert_allclose(acc.centered(), exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    groups = channel_groups(4, 3)
    np.testing.assert_allclose(interactions_from_covariance(acc.centered(), groups),
                               interactions_from_activations(x, groups), rtol=1e-6)
    # CKA does not see the mean: the literal loop on the centred data gives the order.
    assert_same(greedy_cka(centered, 3, groups=groups, engine="reference"),
                fast_greedy_from_interactions(interactions_from_covariance(acc.centered(), groups), 3))


def test_constant_column_drops_out_of_debiased_interactions() -> None:
    x = activations(n=20, d=6, seed=14)
    with_const = np.hstack([x, np.full((20, 1), 3.0)])
    m = interactions_from_activations(with_const, debiased=True)
    np.testing.assert_allclose(m[-1], 0.0, atol=1e-12 * np.abs(m).max())
    np.testing.assert_allclose(m[:-1, :-1], interactions_from_activations(x, debiased=True), rtol=1e-10)
