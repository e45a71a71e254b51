"""Tests for cka_prune/channel_interactions.py: a channel group's interaction matrix from its layers'
output blocks, by either route, against literal Grams written here; float32 against float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

import cka_prune.channel_interactions as ci
from cka_prune.channel_interactions import ChannelBlock, channel_interactions, choose_channel_route
from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.greedy import greedy_cka
from cka_prune.tp import CKAImportance
from tests.greedy_helpers import assert_same


def _blocks(seed: int = 0, samples: int = 12) -> tuple[list[ChannelBlock], int]:
    """Three layers over a group of 5 channels: one holds all of them in order (3 positions each),
    one three of them in another order (2 positions), one a single channel (1 position)."""
    rng = np.random.default_rng(seed)
    layers = [(3, list(range(5))), (2, [4, 0, 2]), (1, [3])]
    blocks = [ChannelBlock(torch.from_numpy(rng.normal(size=(samples, len(pos), width)) + 2.0).float(), pos)
              for width, pos in layers]
    return blocks, 5


def _columns(blocks: list[ChannelBlock], n: int) -> list[np.ndarray]:
    """Each channel's columns (N, P_c) from every layer that holds it, written out one by one."""
    cols: list[list[np.ndarray]] = [[] for _ in range(n)]
    for block in blocks:
        for i, pos in enumerate(block.positions):
            cols[pos].append(block.outputs[:, i, :].double().numpy())
    return [np.hstack(c) for c in cols]


def _literal_hsic_u_scaled(k: np.ndarray, l: np.ndarray) -> float:
    """N (N-3) HSIC_u(K, L) by Song et al.'s formula, with K~, L~ the Grams with zeroed diagonals."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one))


def _literal(blocks: list[ChannelBlock], n: int, debiased: bool) -> np.ndarray:
    grams = []
    for x in _columns(blocks, n):
        x = x - x.mean(axis=0)
        grams.append(x @ x.T)
    if debiased:
        return np.array([[_literal_hsic_u_scaled(a, b) for b in grams] for a in grams])
    return np.array([[np.sum(a * b) for b in grams] for a in grams])


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("route", ["covariance", "gram"])
def test_each_route_equals_the_literal_grams(route: str, debiased: bool, monkeypatch) -> None:
    blocks, n = _blocks()
    expected = _literal(blocks, n, debiased)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(channel_interactions(blocks, n, debiased=debiased, route=route), expected,
                               rtol=0, atol=1e-12 * scale)
    # The chunked forms: one channel per chunk of the covariance, one per chunk of F (recomputed).
    monkeypatch.setattr(ci, "FULL_COVARIANCE_BYTES", 0)
    monkeypatch.setattr(ci, "CHUNK_COLUMNS", 1)
    monkeypatch.setattr(ci, "SUBCHUNK_BYTES", 1)
    chunked = channel_interactions(blocks, n, debiased=debiased, route=route, memory_bytes=1)
    np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-12 * scale)


def test_the_greedy_from_the_blocks_is_the_reference_loop_on_the_concatenation() -> None:
    blocks, n = _blocks(seed=1, samples=16)
    columns = _columns(blocks, n)
    x = np.hstack(columns)
    widths = np.cumsum([0] + [c.shape[1] for c in columns])
    groups = [np.arange(widths[c], widths[c + 1]) for c in range(n)]
    reference = greedy_cka(x, n, groups=groups, engine="reference")
    for route in ("covariance", "gram"):
        assert_same(reference, fast_greedy_from_interactions(channel_interactions(blocks, n, route=route), n))


def test_route_choice() -> None:
    # Early conv layer: a few channels with many positions each -> per-channel Grams.
    assert choose_channel_route(64, 64, 1536, debiased=False) == "gram"
    # Linear layer on tokens: one column per channel, many rows -> cross-covariances.
    assert choose_channel_route(1088, 768, 1, debiased=False) == "covariance"
    # A wide late conv group, few positions, few samples: the packed Grams are smaller.
    assert choose_channel_route(64, 960, 8, debiased=False) == "gram"


def test_float32_keeps_nearly_constant_columns() -> None:
    """Columns with a mean of 0.04 and a spread of 1e-8 across the samples (a randomly initialised
    network's last layers): a float32 mean is off by more than the spread, so centering in float32
    would leave most of M rounding error. Centered in float64, the float32 products keep M within
    1e-5 of float64's and the greedy order."""
    rng = np.random.default_rng(2)
    spread = rng.normal(size=(64, 40, 4)) @ np.diag([1.0, 0.5, 0.2, 0.1]) + rng.normal(size=(64, 1, 1))
    y = torch.from_numpy(0.04 + 1e-8 * spread + 0.01 * rng.random((1, 40, 4))).float()
    blocks = [ChannelBlock(y, range(40))]
    for route in ("covariance", "gram"):
        exact = channel_interactions(blocks, 40, route=route)
        fast = channel_interactions(blocks, 40, route=route, precision="float32")
        assert fast.dtype == np.float64
        np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
        order = fast_greedy_from_interactions(exact, 40)
        assert fast_greedy_from_interactions(fast, 40)[0] == order[0]


def test_float32_is_for_the_biased_estimator_and_options_are_checked() -> None:
    blocks, n = _blocks()
    with pytest.raises(ValueError, match="biased"):
        channel_interactions(blocks, n, debiased=True, precision="float32")
    with pytest.raises(ValueError, match="precision"):
        channel_interactions(blocks, n, precision="float16")
    with pytest.raises(ValueError, match="route"):
        channel_interactions(blocks, n, route="svd")
    with pytest.raises(ValueError, match="precision"):
        CKAImportance(precision="float32", debiased=True)


def test_cka_importance_in_float32_agrees_with_float64_on_a_small_cnn() -> None:
    """The tolerance docs/benchmarks.md measures on ResNet-18, MobileNetV2 and ViT-tiny (about 2e-6),
    here on a small CNN: every channel's importance (a CKA loss) within 1e-5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 36, 5)).eval()
    x = torch.rand(20, 3, 6, 6)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    groups = list(graph.get_all_groups(ignored_layers=[model[-1]], root_module_types=(nn.Conv2d,)))
    exact, fast = CKAImportance(), CKAImportance(precision="float32")
    exact.record(model, x)
    fast.record(model, x)
    assert len(groups) == 2
    for group in groups:
        np.testing.assert_allclose(fast(group).numpy(), exact(group).numpy(), rtol=0, atol=1e-5)
