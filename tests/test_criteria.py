"""Tests for src/pruning/criteria.py: baselines rank as defined, counts are exact, layers
without variation are reported."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cka_prune.cka import feature_space_linear_cka
from src.config import ModelConfig, PruneParams
from src.data import Split
from src.models import build_model, prunable_layers
from src.errors import UserError
from src.pruning.criteria import NO_VARIATION, importance_for, removal_count, select
from src.pruning.scoring import record_layers, taylor_importance

CPU = torch.device("cpu")

# Four 2x2 images; the hidden layer's three neurons see pixels 0, 1 and 2 (values / 255).
PIXELS = np.array([[0, 0, 0, 9], [51, 0, 0, 9], [204, 0, 51, 9], [255, 255, 51, 9]], dtype=np.uint8)


def _split(pixels: np.ndarray = PIXELS, labels: list[int] | None = None) -> Split:
    images = torch.from_numpy(pixels).reshape(-1, 1, 2, 2)
    labels = labels if labels is not None else [i % 2 for i in range(len(pixels))]
    return Split(images, torch.tensor(labels, dtype=torch.int64))


def _model():
    """relu(x0 - 0.5), relu(x1), relu(2 x2 + 0.1) on the PIXELS:
    outputs (0, 0, .3, .5), (0, 0, 0, 1), (.1, .1, .5, .5): APoZ 1/2, 3/4, 0; means .2, .25, .3."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="mlp", input_size=4, hidden_sizes=(3,), output_size=2))
    hidden = prunable_layers(model)[0].block.layer
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0]]))
        hidden.bias.copy_(torch.tensor([-0.5, 0.0, 0.1]))
    return model


def _select(model, criterion: str, split: Split | None = None, rate: float = 0.5):
    layer = prunable_layers(model)[0]
    params = PruneParams(type=criterion, rate=rate)
    split = split or _split()
    rec = record_layers(model, [layer], split, params, len(split), torch.Generator().manual_seed(0), CPU,
                        train=split)[0]
    return rec, select(rec, params, np.ones(3, dtype=bool), (0,))


def test_apoz_removes_the_most_often_zero_first():
    rec, choice = _select(_model(), "apoz")
    np.testing.assert_allclose(rec.measured, 1 - np.array([0.5, 0.75, 0.0]))  # 1 - APoZ
    assert choice.removed == [1, 0]
    assert choice.scores == pytest.approx([0.25, 0.5])  # 1 - APoZ
    assert len(choice.cka) == 2 and choice.cka[0] > choice.cka[1]


def test_mean_activation_removes_the_smallest_mean_first():
    rec, choice = _select(_model(), "mean_activation")
    np.testing.assert_allclose(rec.measured, [0.2, 0.25, 0.3], rtol=1e-6)
    assert choice.removed == [0, 1]
    assert choice.scores == pytest.approx([0.2, 0.25], rel=1e-6)


def test_taylor_is_the_squared_gate_gradient_per_batch():
    model = _model()
    with torch.no_grad():
        model.output.weight[:, 1] = 0.0  # neuron 1 cannot change the loss: importance 0
    split = _split(np.concatenate([PIXELS, PIXELS[::-1] // 2]), [0, 1, 1, 0, 1, 1, 0, 0])
    layer = prunable_layers(model)[0]
    order = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    got = taylor_importance(model, [layer], split.take(order), 4, CPU)[0]
    # The definition, independently: a gate g multiplying the neurons' outputs, dL/dg at g = 1,
    # squared per batch, averaged over the batches.
    expected = np.zeros(3)
    for batch in (order[:4], order[4:]):
        gate = torch.ones(3, requires_grad=True)
        handle = layer.block.act.register_forward_hook(lambda m, a, o: o * gate)
        x = split.images[batch].float() / 255
        loss = F.cross_entropy(model(x), split.labels[batch])
        handle.remove()
        (grad,) = torch.autograd.grad(loss, gate)
        expected += grad.double().numpy() ** 2 / 2
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[1] == 0 and got[0] > 0 and got[2] > 0
    _, choice = _select(model, "taylor", split, rate=0.3)
    assert choice.removed == [1]


def test_removal_count_rounds_half_up_exactly():
    assert removal_count(0.7, 45) == 32  # 0.7 * 45 is 31.4999... in binary floating point
    assert removal_count(0.1, 5) == 1 and removal_count(0.3, 5) == 2 and removal_count(0.29, 50) == 15
    for rate in (0.05, 0.15, 0.35, 0.45, 0.7, 0.9):
        for alive in range(2, 80):
            exact = Fraction(str(rate)) * alive
            assert removal_count(rate, alive) == min(int(exact + Fraction(1, 2)), alive - 1)


def test_unknown_criterion_is_an_error_not_random():
    with pytest.raises(ValueError, match="no importance for criterion 'bogus'"):
        importance_for("bogus", (0,))
    with pytest.raises(ValueError, match="'apoz'"):
        importance_for("apoz", (0,))  # no recording to read


def test_a_layer_without_variation_says_why():
    model = _model()
    with torch.no_grad():
        prunable_layers(model)[0].block.layer.weight.zero_()  # constant outputs (the biases)
    for criterion in ("cka", "l1", "apoz"):
        _, choice = _select(model, criterion)
        assert choice.removed == [] and choice.skipped == NO_VARIATION
    assert _select(_model(), "cka")[1].skipped is None


# Twelve images on which the three hidden outputs of _model are not collinear.
MORE_PIXELS = np.random.default_rng(0).integers(0, 256, (12, 4)).astype(np.uint8)


def _refit_select(params: PruneParams):
    model = _model()
    layer = prunable_layers(model)[0]
    rec = record_layers(model, [layer], _split(MORE_PIXELS), params, 12, torch.Generator().manual_seed(0), CPU)[0]
    return model, rec, select(rec, params, np.ones(3, dtype=bool), (0,))


def _lstsq_fit(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The consumer's pre-activation refit from the columns ``a`` by numpy.linalg.lstsq, with an intercept."""
    design = np.hstack([a, np.ones((len(a), 1))])
    return design @ np.linalg.lstsq(design, z, rcond=None)[0]


def test_obs_removes_the_unit_whose_lstsq_refit_loses_least():
    model, rec, choice = _refit_select(PruneParams(type="obs", rate=0.5, compensate_ridge=0.0))
    a = np.maximum(MORE_PIXELS[:, :3] / 255 * [1, 1, 2] + [-0.5, 0, 0.1], 0)  # the hidden outputs (_model)
    np.testing.assert_allclose(rec.consumer.inputs.numpy(), a, rtol=1e-6, atol=1e-7)
    assert rec.target.outputs.shape == (12, 3) and rec.target.name == "layer"  # the damage path's own representation
    z = a @ model.output.weight.detach().double().numpy().T
    full = np.sum((z - _lstsq_fit(a, z)) ** 2)  # 0 up to rounding
    errors = [np.sum((z - _lstsq_fit(np.delete(a, j, axis=1), z)) ** 2) - full for j in range(3)]
    assert choice.removed[0] == int(np.argmin(errors))
    assert choice.scores[0] == pytest.approx(min(errors), rel=1e-5)
    assert len(choice.removed) == 2 and len(choice.cka) == 2 and choice.cka[0] > choice.cka[1]


def test_refit_target_scores_the_cka_of_the_lstsq_refit():
    model, rec, choice = _refit_select(PruneParams(type="cka", target="refit", rate=0.5, compensate_ridge=0.0))
    a = rec.consumer.inputs.double().numpy()
    z = a @ model.output.weight.detach().double().numpy().T
    first = [feature_space_linear_cka(z, _lstsq_fit(np.delete(a, j, axis=1), z)) for j in range(3)]
    assert choice.removed[0] == int(np.argmax(first))
    assert choice.scores[0] == pytest.approx(max(first), rel=1e-6)
    assert choice.cka == choice.scores  # conditional greedy: the damage path is its scores


def test_a_baseline_with_the_refit_target_records_the_refit_damage():
    model, rec, choice = _refit_select(PruneParams(type="l1", target="refit", rate=0.5, compensate_ridge=0.0))
    a = rec.consumer.inputs.double().numpy()
    z = a @ model.output.weight.detach().double().numpy().T
    assert choice.removed == [0, 1]  # the smallest incoming weight rows
    expected = [feature_space_linear_cka(z, _lstsq_fit(np.delete(a, choice.removed[: t + 1], axis=1), z))
                for t in range(2)]
    np.testing.assert_allclose(choice.cka, expected, rtol=1e-6)


@pytest.mark.parametrize("params", [PruneParams(type="obs", rate=0.5, compensate_ridge=0.0),
                                    PruneParams(type="cka", target="refit", rate=0.5, compensate_ridge=0.0)])
def test_a_refit_without_ridge_on_collinear_inputs_is_a_config_error(params):
    """On PIXELS the three hidden outputs are collinear with the intercept: only a ridge makes the refit unique."""
    model = _model()
    rec = record_layers(model, [prunable_layers(model)[0]], _split(), params, 4, torch.Generator().manual_seed(0),
                        CPU)[0]
    with pytest.raises(UserError, match="compensate_ridge: .*singular"):
        select(rec, params, np.ones(3, dtype=bool), (0,))
    assert len(select(rec, replace(params, compensate_ridge=1e-3), np.ones(3, dtype=bool), (0,)).removed) == 2
