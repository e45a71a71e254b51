"""cka_prune.depth.patch: the ridge patch against numpy.linalg.lstsq and the closed form, its scores,
and folding it into an adjacent layer."""

import numpy as np
import pytest
import torch

from cka_prune import depth
from cka_prune.depth.patch import linear_cka, refit_cka
from cka_prune.depth.recording import Accumulator
from tests.depth_helpers import ConvNet, ResidualMLP, randomize_bn


def _data(n=50, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
    y = x @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, d)) + 2.0
    return x, y


def _moments(x, y):
    acc = Accumulator()
    acc.add(torch.from_numpy(x[:20]), torch.from_numpy(y[:20]))
    acc.add(torch.from_numpy(x[20:]), torch.from_numpy(y[20:]))
    return acc.moments()


def test_at_ridge_0_the_patch_is_numpys_least_squares_with_an_intercept():
    x, y = _data()
    patch = depth.fit_patch(_moments(x, y), ridge=0.0)
    coef = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(patch.weight, coef[:-1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(patch.bias, coef[-1], rtol=1e-8, atol=1e-10)


def test_with_a_ridge_the_patch_is_the_closed_form_with_the_mean_input_variance_as_unit():
    x, y = _data()
    xc, yc = x - x.mean(0), y - y.mean(0)
    for ridge in (1e-3, 0.5):
        lam = ridge * np.mean(np.sum(xc**2, 0))
        w = np.linalg.inv(xc.T @ xc + lam * np.eye(x.shape[1])) @ xc.T @ yc
        patch = depth.fit_patch(_moments(x, y), ridge=ridge)
        np.testing.assert_allclose(patch.weight, w, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(patch.bias, y.mean(0) - x.mean(0) @ w, rtol=1e-8, atol=1e-10)
        # the same scale-free ridge on inputs 10x larger gives the same fitted values
        big = depth.fit_patch(_moments(10 * x, y), ridge=ridge)
        np.testing.assert_allclose(10 * x @ big.weight + big.bias, x @ w + patch.bias, rtol=1e-8)


def test_the_patch_error_and_its_cka_are_those_of_the_fitted_rows():
    x, y = _data()
    for ridge in (0.0, 0.2):
        m = _moments(x, y)
        patch = depth.fit_patch(m, ridge)
        fitted = x @ patch.weight + patch.bias
        yc, fc = y - y.mean(0), fitted - fitted.mean(0)
        np.testing.assert_allclose(patch.error, np.sum((y - fitted) ** 2) / np.sum(yc**2), rtol=1e-9)
        cka = np.sum((yc.T @ fc) ** 2) / (np.linalg.norm(yc.T @ yc) * np.linalg.norm(fc.T @ fc))
        np.testing.assert_allclose(refit_cka(*m.centered(), patch.weight), cka, rtol=1e-9)
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    literal = np.sum((xc.T @ yc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    np.testing.assert_allclose(linear_cka(_moments(x, y)), literal, rtol=1e-9)


def test_the_patch_module_computes_x_w_plus_b_on_features_or_channels():
    x, y = _data()
    patch = depth.fit_patch(_moments(x, y), 0.1)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(patch.module()(t).detach().numpy(), x @ patch.weight + patch.bias, rtol=1e-12)
    conv = depth.Patch(patch.weight, patch.bias, 0.1, patch.error, conv=True).module()
    images = torch.from_numpy(x[:8].reshape(2, 2, 2, 5)).permute(0, 3, 1, 2)  # (B, C, H, W), rows = pixels
    expected = x[:8] @ patch.weight + patch.bias
    np.testing.assert_allclose(conv(images).permute(0, 2, 3, 1).reshape(8, 5).detach().numpy(), expected, rtol=1e-12)


def test_a_negative_ridge_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        depth.fit_patch(_moments(x, y), -1.0)


def _plan(model, batches, blocks):
    return depth.select(model, blocks, batches, "residual", 1, compensate="lstsq")


@pytest.mark.parametrize("block, into, side", [("blocks.0", "embed", "before"), ("blocks.3", "head", "after")])
def test_folding_into_the_embedding_or_the_head_of_a_residual_mlp_keeps_the_outputs(block, into, side):
    torch.manual_seed(0)
    model = ResidualMLP().eval()
    batches = [torch.randn(32, 6) for _ in range(2)]
    pruned = depth.apply(model, _plan(model, batches, [block]))
    folded = depth.fold(pruned, block, into, side)
    x = torch.randn(20, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), pruned(x), rtol=0, atol=1e-5)
    assert folded.get_submodule(block).patch is None
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in pruned.parameters()) - 8 * 8 - 8


def test_folding_into_a_padded_conv_stem_keeps_the_outputs():
    torch.manual_seed(0)
    model = randomize_bn(ConvNet())
    batches = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    pruned = depth.apply(model, _plan(model, batches, ["layer1.0"]))
    folded = depth.fold(pruned, "layer1.0", "stem", "before")
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), pruned(x), rtol=0, atol=1e-5)


def test_folding_where_it_is_not_exact_is_caught_by_the_example():
    torch.manual_seed(0)
    model = ResidualMLP().eval()
    batches = [torch.randn(32, 6) for _ in range(2)]
    pruned = depth.apply(model, _plan(model, batches, ["blocks.1"]))
    with pytest.raises(ValueError, match="not adjacent"):  # blocks.0's output also feeds its skip connection
        depth.fold(pruned, "blocks.1", "blocks.0.fc2", "before", example=batches[0])
    with pytest.raises(ValueError, match="holds no patch"):
        depth.fold(pruned, "blocks.0", "embed", "before")
