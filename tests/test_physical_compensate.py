"""Compensation on the physical path: each consumer's refit against a literal regression, and runs."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import main_prune
from src import results
from src.models import CifarResNet, LeNet5
from src.pruning.physical import physical_pass
from src.pruning.physical_compensate import compensate_pass, layer_input, plan
from tests.conftest import untimed


def output_rows(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output in ``model`` on ``x``, one row per sample (and output position): (rows, O), float64."""
    captured = []
    handle = layer.register_forward_hook(lambda m, a, out: captured.append(out.detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    out = captured[0].double()
    return out if out.dim() == 2 else out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])


def unfolded(layer: nn.Module, x: torch.Tensor) -> np.ndarray:
    """A Linear's input, or a Conv2d's input unfolded to one row per sample and output position."""
    if isinstance(layer, nn.Linear):
        return x.double().numpy()
    cols = F.unfold(x.double(), layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (N, C*k*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()


def pruned_pair(model: nn.Module, x: torch.Tensor):
    """``model`` pruned in place by 30% of each group's channels, a copy of it before, and the pass."""
    original = copy.deepcopy(model)
    return original, physical_pass(model, "tp_l1", 0.3, x[:1], x)


def test_each_resnet_consumer_is_a_literal_regression_on_its_current_input():
    torch.manual_seed(0)
    model = CifarResNet(8, 4, 1, 10).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # a network whose statistics are not 0, 1
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(48, 1, 12, 12)
    original, passed = pruned_pair(model, x)
    for group in passed.groups:  # one step: the removed channels are numbered as in the original
        for name in group.layers:
            assert passed.kept_outputs[name] == tuple(c for c in range(group.channels_before) if c not in group.removed)
    fits = compensate_pass(original, model, passed, x, "lstsq", 0.0, 16)
    before, now = dict(original.named_modules()), dict(model.named_modules())
    names = [name for name in now if name in fits]
    assert set(names) == {name for g in passed.groups for name in g.consumers} >= {"fc", "layer1.0.conv1",
                                                                                   "layer2.0.shortcut.0"}
    for name in names:  # upstream consumers are final by now: each input is the one its fit saw
        layer = now[name]
        design = unfolded(layer, layer_input(model, layer, x, 16))
        target = output_rows(original, before[name], x)[:, list(passed.kept_outputs.get(name, range(layer.weight.shape[0])))]
        target = target.numpy()
        if layer.bias is not None:
            design = np.column_stack([design, np.ones(len(design))])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        weight = layer.weight.detach().double().flatten(1).numpy()
        fitted = np.column_stack([weight, layer.bias.detach().double().numpy()]) if layer.bias is not None else weight
        np.testing.assert_allclose(fitted, coef.T, atol=2e-4 * np.abs(coef).max(), err_msg=name)
        residual = np.linalg.norm(design @ coef - target) / np.linalg.norm(target - target.mean(0))
        fit = fits[name]
        assert fit.error_after == pytest.approx(residual, rel=1e-3) and fit.error_after <= fit.error_before, name


def test_bias_compensation_keeps_the_weights_and_zeroes_the_mean_error_of_each_consumer():
    torch.manual_seed(1)
    model = LeNet5((1, 28, 28), 10).eval()
    x = torch.rand(40, 1, 28, 28)
    original, passed = pruned_pair(model, x)
    weights = {name: m.weight.detach().clone() for name, m in model.named_modules() if hasattr(m, "weight")}
    fits = compensate_pass(original, model, passed, x, "bias", 0.0, 16)
    before = dict(original.named_modules())
    assert list(fits) == ["features.3", "classifier.0", "classifier.2", "classifier.4"]
    for name, layer in model.named_modules():
        if name not in fits:
            continue
        assert torch.equal(layer.weight, weights[name])
        kept = list(passed.kept_outputs.get(name, range(layer.weight.shape[0])))
        error = output_rows(model, layer, x) - output_rows(original, before[name], x)[:, kept]
        assert error.mean(0).abs().max() < 1e-4 * error.abs().max(), name
        assert fits[name].error_after <= fits[name].error_before, name


def test_a_grouped_convolution_consumer_is_left_alone_with_a_warning(capsys):
    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.dw = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.b, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.b(torch.relu(self.dw(torch.relu(self.a(x)))))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Depthwise(), torch.randn(16, 1, 8, 8)
    original, passed = pruned_pair(model, x)
    fit, skipped = plan(model, passed)
    assert skipped == ["dw"] and "dw" not in fit and "warning: compensate: dw is a grouped convolution" in capsys.readouterr().out
    dw = model.dw.weight.detach().clone()
    fits = compensate_pass(original, model, passed, x, "lstsq", 0.0, 8)
    assert np.isnan(fits["dw"].error_after) and torch.equal(model.dw.weight, dw)
    assert all(fits[name].error_after <= fits[name].error_before for name in fit)


TINY_RESNET = {"model": {"type": "resnet", "depth": 8, "width": 4},
               "params": {"lr": 0.01, "batch_size": 128, "epochs": 1, "patience": 1}}


def prune(write_config, trained, tmp_path, prune_section, out="output"):
    """Prune the tiny ResNet, trained once per session (``trained``), with ``prune_section``."""
    config = write_config("tiny", **TINY_RESNET, prune=prune_section)
    trained(config)
    common = [str(config), "--models-dir", str(tmp_path / "models")]
    assert main_prune.main(common + ["--output-dir", str(tmp_path / out)]) == 0
    return results.load(tmp_path / out / "tiny" / "0.json")


def test_a_compensated_resnet_run_records_each_groups_consumer_fits(write_config, trained, tmp_path):
    result = prune(write_config, trained, tmp_path, {"strategy": "one_shot", "params": {
        "type": "cka", "rate": 0.3, "samples": 64, "compensate": "lstsq", "retrain_epochs": 0}})
    (it,) = result.iterations
    pruned = [step for step in it.layers if step.removed]
    assert pruned and all(isinstance(step.compensation, tuple) and step.fits for step in pruned)
    consumers = [fit.consumer for step in pruned for fit in step.fits]
    assert "fc" in consumers and "layer1.0.conv1" in consumers
    assert all(0 <= fit.error_after <= fit.error_before for step in pruned for fit in step.fits)
    saved = json.loads((tmp_path / "output" / "tiny" / "0.json").read_text())
    assert all(isinstance(step["compensation"], list) for step in saved["iterations"][0]["layers"] if step["removed"])


def test_a_resumed_compensated_resnet_run_equals_an_uninterrupted_one(write_config, trained, tmp_path):
    def section(iterations):
        return {"params": {"type": "tp_l1", "iterations": iterations, "rate": 0.25, "samples": 64,
                           "compensate": "lstsq", "retrain_epochs": 0}}

    prune(write_config, trained, tmp_path, section(1), "cut")
    resumed = prune(write_config, trained, tmp_path, section(2), "cut")
    whole = prune(write_config, trained, tmp_path, section(2), "whole")
    assert untimed(resumed) == untimed(whole)
    assert all(step.fits for it in whole.iterations for step in it.layers if step.removed)
