"""cka_prune.depth.recording: the streamed moments equal the sums written out over the recorded rows."""

import numpy as np
import pytest
import torch

from cka_prune import depth
from tests.depth_helpers import Decoder, models


def _rows(t):
    """Features per position, written out: (B, C, H, W) -> pixels x channels; (B, T, D) -> tokens x D."""
    a = t.detach().double().numpy()
    if a.ndim == 4:
        a = np.transpose(a, (0, 2, 3, 1))
    return a.reshape(-1, a.shape[-1])


def _captured(model, names, batches):
    """{name: (inputs, outputs)} of each block over all batches, by hooks that only store tensors."""
    store = {n: ([], []) for n in names}
    handles = []
    for n in names:
        block = model.get_submodule(n)
        handles.append(block.register_forward_pre_hook(lambda m, a, n=n: store[n][0].append(_rows(a[0]))))
        handles.append(block.register_forward_hook(lambda m, a, o, n=n: store[n][1].append(_rows(o))))
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return {n: (np.concatenate(x), np.concatenate(y)) for n, (x, y) in store.items()}


def _check(m, x, y):
    np.testing.assert_equal(m.n, len(x))
    np.testing.assert_allclose(m.sum_x, x.sum(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.sum_y, y.sum(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.xtx, x.T @ x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.xty, x.T @ y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.yty, y.T @ y, rtol=1e-10, atol=1e-10)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    cos = np.sum(x * y, 1) / np.where(norms > 0, norms, 1.0)  # a zero row (a dead pixel after relu): 0
    np.testing.assert_allclose(m.cos_sum, cos.sum(), rtol=1e-10)
    np.testing.assert_allclose(m.angle_sum, np.sum(np.arccos(np.clip(cos, -1, 1)) / np.pi), rtol=1e-10)


def test_moments_of_each_block_equal_the_sums_over_its_rows():
    for name, model, batches, blocks in models():
        moments = depth.record(model, blocks, batches)
        seen = _captured(model, blocks, batches)
        assert list(moments) == blocks
        for n in blocks:
            _check(moments[n], *seen[n])
            assert moments[n].conv == (name == "conv")


def test_a_span_pairs_its_first_blocks_input_with_its_last_blocks_output():
    _, model, batches, blocks = models()[1]
    moments = depth.record(model, blocks, batches, span=3)
    seen = _captured(model, blocks, batches)
    assert list(moments) == ["blocks.0+blocks.1+blocks.2", "blocks.1+blocks.2+blocks.3"]
    _check(moments["blocks.1+blocks.2+blocks.3"], seen["blocks.1"][0], seen["blocks.3"][1])


def test_the_mask_drops_positions_and_the_moments_do_not_depend_on_the_batching():
    torch.manual_seed(0)
    model = Decoder().double().eval()
    tokens = torch.randint(0, 11, (6, 5))
    keep = torch.rand(6, 5) > 0.3
    batches = [{"tokens": tokens[:4], "keep": keep[:4]}, {"tokens": tokens[4:], "keep": keep[4:]}]
    forward = lambda m, b: m(b["tokens"])  # noqa: E731
    moments = depth.record(model, ["layers.1"], batches, forward=forward, mask=lambda b: b["keep"])["layers.1"]
    x, y = _captured(model, ["layers.1"], [tokens])["layers.1"]
    _check(moments, x[keep.reshape(-1).numpy()], y[keep.reshape(-1).numpy()])


def test_without_the_linear_moments_only_the_cosines_are_kept():
    _, model, batches, blocks = models()[0]
    m = depth.record(model, blocks, batches, linear=False)["blocks.0"]
    assert m.xtx.size == 0
    np.testing.assert_allclose(m.cos_sum, depth.record(model, blocks, batches)["blocks.0"].cos_sum, rtol=1e-12)


def test_the_users_mistakes_get_one_line():
    _, model, batches, blocks = models()[3]
    with pytest.raises(ValueError, match=r"layer2\.0 is not removable: its output shape"):
        depth.record(model, blocks, batches, spans=[("layer2.0",)])
    with pytest.raises(ValueError, match="not an iterator"):
        depth.record(model, blocks, iter(batches))
    with pytest.raises(ValueError, match="no rows"):
        depth.record(model, blocks, [])
