"""Compensation of a pruned layer's consumer: the fits against literal regressions, on real networks."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main_prune
import main_train
from src import results
from src.config import parse_config
from src.export import model_input_shape
from src.data import Split
from src.models import build_model, prunable_layers
from src.pruning.compensate import (block_outputs, bias_shift, compensate, consumer_targets, moments, relative_error,
                                    ridge_refit, rows)
from src.pruning.masks import add_masks, remove_neurons
from src.pruning.passes import pass_seed, prune_pass
from src.pruning.scoring import scoring_indices
from src.pruning.shrink import shrunk
from src.train import fit
from tests.conftest import tiny_raw, untimed

CPU = torch.device("cpu")
CNN = {"type": "cnn", "conv_channels": [6, 8], "kernel_size": 3, "fc_sizes": [12], "batch_norm": True}


def linear_case(constant_removed: bool, seed: int = 0):
    """Original rows A, current rows H (kept columns perturbed, removed ones constant or not), W0, b0, keep."""
    rng = np.random.default_rng(seed)
    n, d, o = 300, 7, 4
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 1.0
    h = a + 0.3 * rng.normal(size=(n, d))
    keep = np.ones(d, dtype=bool)
    keep[[1, 4]] = False
    if constant_removed:
        h[:, ~keep] = rng.normal(size=(~keep).sum())
    return a, h, rng.normal(size=(o, d)), rng.normal(size=o), keep


def as_moments(a, h, chunks=3):
    return moments(zip(torch.from_numpy(a).tensor_split(chunks), torch.from_numpy(h).tensor_split(chunks)))


def test_streamed_moments_are_the_centred_covariances():
    a, h, *_ = linear_case(True)
    m = as_moments(a, h, chunks=5)
    ac, hc = a - a.mean(0), h - h.mean(0)
    np.testing.assert_allclose(m.mean_a, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.mean_h, h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.cov_ah, ac.T @ hc / len(a), atol=1e-12)
    np.testing.assert_allclose(m.cov_hh, hc.T @ hc / len(a), atol=1e-12)


@pytest.mark.parametrize("constant_removed", [True, False], ids=["constant", "padded"])
def test_lstsq_without_ridge_is_ordinary_least_squares_with_an_intercept(constant_removed):
    a, h, w0, b0, keep = linear_case(constant_removed)
    z = a @ w0.T + b0
    refit, bias = ridge_refit(w0, b0, w0, as_moments(a, h), keep, ridge=0.0)
    design = np.column_stack([h[:, keep], np.ones(len(h))])
    coef, *_ = np.linalg.lstsq(design, z - h[:, ~keep] @ w0[:, ~keep].T, rcond=None)
    np.testing.assert_allclose(refit[:, keep], coef[:-1].T, atol=1e-9)
    np.testing.assert_allclose(bias, coef[-1], atol=1e-9)
    np.testing.assert_array_equal(refit[:, ~keep], w0[:, ~keep])


def test_lstsq_with_ridge_is_the_closed_ridge_form():
    a, h, w0, b0, keep = linear_case(True)
    ridge, n = 0.3, len(a)
    ac, hk = a - a.mean(0), h[:, keep] - h[:, keep].mean(0)
    gram = hk.T @ hk / n
    lam = ridge * np.trace(gram) / keep.sum()
    expected = w0 @ (ac.T @ hk / n) @ np.linalg.inv(gram + lam * np.eye(keep.sum()))
    refit, bias = ridge_refit(w0, b0, w0, as_moments(a, h), keep, ridge)
    np.testing.assert_allclose(refit[:, keep], expected, atol=1e-10)
    np.testing.assert_allclose(bias, (a @ w0.T + b0).mean(0) - refit @ h.mean(0), atol=1e-10)


def test_the_bias_shift_makes_the_mean_pre_activation_that_of_the_original():
    a, h, w0, b0, keep = linear_case(True)
    bias = bias_shift(w0, b0, w0, as_moments(a, h))
    np.testing.assert_allclose((h @ w0.T + bias).mean(0), (a @ w0.T + b0).mean(0), atol=1e-10)


def test_the_relative_error_has_a_centred_denominator():
    rng = np.random.default_rng(1)
    original, current = rng.normal(size=(50, 3)) + 10, rng.normal(size=(50, 3))
    expected = np.linalg.norm(current - original) / np.linalg.norm(original - original.mean(0))
    assert relative_error(torch.from_numpy(current), torch.from_numpy(original)) == pytest.approx(expected, rel=1e-12)


def config(tmp_path, model=None, modules=(0, 1), **params):
    raw = tiny_raw(prune={"strategy": "one_shot", "modules": list(modules),
                          "params": {"type": "cka", "rate": 0.5, "retrain": False, **params}})
    if model is not None:
        raw["model"] = model
    return parse_config(raw, tmp_path / "c.json")


@pytest.fixture(scope="module")
def trained_mlp(mnist5k, tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("mlp"))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fit(model, mnist5k, cfg.params, seed=0, device=CPU)
    add_masks(model, cfg.prune.modules)
    return model.eval()


def fitting_samples(cfg, splits, seed=0, iteration=1) -> Split:
    generator = torch.Generator().manual_seed(pass_seed(seed, iteration))
    index = scoring_indices(splits.val, cfg.prune.params.samples, cfg.params.batch_size, generator)
    return Split(splits.val.images[index], splits.val.labels[index])


def consumer_pre_activation(model, index, subset):
    consumer = prunable_layers(model)[index + 1].block.layer if index + 1 < len(model.blocks()) else model.output
    out = []
    handle = consumer.register_forward_hook(lambda m, a, o: out.append(o.detach().double()))
    block_outputs(model, [index], subset, 1024, CPU)
    handle.remove()
    return torch.cat(out).flatten(2).transpose(1, 2).flatten(0, 1) if out[0].dim() == 4 else torch.cat(out)


def test_on_a_trained_mlp_lstsq_reconstructs_better_than_bias_than_nothing(trained_mlp, mnist5k, tmp_path):
    steps = {}
    for method in ("none", "bias", "lstsq"):
        model = copy.deepcopy(trained_mlp)
        steps[method] = prune_pass(model, config(tmp_path, compensate=method), mnist5k, 0, 1, CPU)
    assert all(step.compensation is None for step in steps["none"])
    first = {method: steps[method][0] for method in ("none", "bias", "lstsq")}
    assert first["none"].removed == first["bias"].removed == first["lstsq"].removed  # scored on the same network
    bias, lstsq = first["bias"].compensation, first["lstsq"].compensation
    assert bias.consumer == lstsq.consumer == "hidden.1.layer"
    assert bias.error_before == pytest.approx(lstsq.error_before, rel=1e-12)
    assert lstsq.error_after < bias.error_after < bias.error_before


def test_the_recorded_errors_are_the_consumers_on_the_fitting_samples(trained_mlp, mnist5k, tmp_path):
    cfg = config(tmp_path, modules=(0,), compensate="lstsq")
    subset = fitting_samples(cfg, mnist5k)
    original = consumer_pre_activation(trained_mlp, 0, subset)
    model = copy.deepcopy(trained_mlp)
    (step,) = prune_pass(model, cfg, mnist5k, 0, 1, CPU)
    after = consumer_pre_activation(model, 0, subset)
    assert step.compensation.error_after == pytest.approx(relative_error(after, original), rel=1e-6)
    unfitted = copy.deepcopy(trained_mlp)
    remove_neurons(unfitted.hidden[0].layer, step.removed)
    before = consumer_pre_activation(unfitted, 0, subset)
    assert step.compensation.error_before == pytest.approx(relative_error(before, original), rel=1e-6)


def perturbed_cnn(model_section, seed=0):
    cfg_model = parse_config({**tiny_raw(), "model": model_section}, Path("m.json")).model
    torch.manual_seed(seed)
    model = build_model(cfg_model)
    with torch.no_grad():  # BatchNorm statistics and biases away from their initial values
        for layer in prunable_layers(model):
            if isinstance(layer.block.norm, torch.nn.BatchNorm2d):
                layer.block.norm.running_mean.uniform_(-0.3, 0.3)
                layer.block.norm.running_var.uniform_(0.5, 2.0)
            layer.block.layer.bias.uniform_(-0.2, 0.2)
    return cfg_model, model.eval()


@pytest.mark.parametrize("model_section", [None, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("method", ["bias", "lstsq"])
def test_a_compensated_model_equals_its_smaller_dense_network(trained_mlp, mnist5k, tmp_path, model_section, method):
    if model_section is None:
        model = copy.deepcopy(trained_mlp)
        cfg = config(tmp_path, compensate=method)
    else:
        _, model = perturbed_cnn(model_section)
        cfg = config(tmp_path, model=model_section, modules=(0, 1, 2), compensate=method)
        add_masks(model, cfg.prune.modules)
    before = copy.deepcopy(model.state_dict())
    steps = prune_pass(model, cfg, mnist5k, 0, 1, CPU)
    assert all(step.removed and step.compensation.error_after < step.compensation.error_before for step in steps)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("bias"))
    x = torch.rand(32, *model_input_shape(cfg.model), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(shrunk(model, cfg.model).eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_conv_consumer_is_a_literal_regression_per_output_channel(mnist5k, padding):
    cfg_model, model = perturbed_cnn({**CNN, "padding": padding})
    add_masks(model, [0, 1])
    subset = Split(mnist5k.val.images[:24], mnist5k.val.labels[:24])
    remove_neurons(model.conv[1].layer, [0, 5])  # the consumer's own removed rows must stay removed
    target = consumer_targets(model, [0], subset, 1024, CPU)[0]
    original = consumer_pre_activation(model, 0, subset)
    removed = [1, 4]
    remove_neurons(model.conv[0].layer, removed)
    current = rows(model.conv[1].layer, block_outputs(model, [0], subset, 1024, CPU)[0]).double().numpy()
    weight = (model.conv[1].layer.weight_orig * model.conv[1].layer.weight_mask).detach().double().flatten(1).numpy()
    fitted = compensate(model, 0, target, subset, "lstsq", 0.0, 1024, CPU)
    assert fitted.consumer == "conv.1.layer" and fitted.error_after < fitted.error_before
    keep = np.ones(6, dtype=bool)
    keep[removed] = False
    columns = keep.repeat(9)
    design = np.column_stack([current[:, columns], np.ones(len(current))])
    layer = model.conv[1].layer
    for o in range(8):
        if o in (0, 5):
            assert torch.all(layer.weight[o] == 0)
            continue
        y = original[:, o].numpy() - current[:, ~columns] @ weight[o, ~columns]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        np.testing.assert_allclose(layer.weight[o].detach().double().flatten()[columns].numpy(), coef[:-1], atol=1e-4)
        np.testing.assert_allclose(float(layer.bias[o].detach()), coef[-1], atol=1e-4)
        np.testing.assert_array_equal(layer.weight[o].detach().flatten()[~columns].numpy(),
                                      weight[o, ~columns].astype(np.float32))


@pytest.mark.parametrize("geometry", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                      dict(kernel_size=1, stride=2), dict(kernel_size=(5, 3), padding=(2, 0)),
                                      dict(kernel_size=3, dilation=2)])
def test_a_convs_rows_are_its_unfolded_input(geometry):
    conv = torch.nn.Conv2d(3, 4, **geometry)
    x = torch.randn(5, 3, 11, 9)
    expected = torch.nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                                          stride=conv.stride).transpose(1, 2).flatten(0, 1)
    assert torch.equal(rows(conv, x), expected)
    torch.testing.assert_close(rows(conv, x) @ conv.weight.flatten(1).T + conv.bias,
                               conv(x).permute(0, 2, 3, 1).flatten(0, 2), atol=1e-5, rtol=1e-5)


def test_a_run_with_compensation_records_its_reconstruction_errors(tmp_path):
    raw = tiny_raw(prune={"strategy": "iterative", "modules": [0, 1],
                          "params": {"type": "cka", "iterations": 2, "rate": 0.3, "compensate": "lstsq",
                                     "retrain_epochs": 0}})
    raw["params"]["epochs"] = 1
    path = tmp_path / "comp.json"
    path.write_text(json.dumps(raw))
    common = [str(path), "--models-dir", str(tmp_path / "models")]
    assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / "out")]) == 0
    result = results.load(tmp_path / "out" / "comp" / "0.json")
    assert len(result.iterations) == 2 and result.iterations[0].retrain is None
    for it in result.iterations:
        fits = [step.compensation for step in it.layers]
        assert [f.consumer for f in fits] == ["hidden.1.layer", "output"]
        assert all(0 <= f.error_after < f.error_before for f in fits)
    saved = json.loads((tmp_path / "out" / "comp" / "0.json").read_text())
    assert saved["schema"] == results.SCHEMA_VERSION and "error_after" in saved["iterations"][0]["layers"][0]["compensation"]


def test_a_resumed_compensated_run_equals_an_uninterrupted_one(write_config, tmp_path):
    def prune(iterations, out):
        config = write_config("tiny", prune={"modules": [0, 1], "params": {
            "type": "cka", "iterations": iterations, "rate": 0.3, "compensate": "bias", "retrain_epochs": 1}})
        common = [str(config), "--models-dir", str(tmp_path / "models")]
        assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / out)]) == 0
        return results.load(tmp_path / out / "tiny" / "0.json")

    prune(1, "cut")
    resumed = prune(2, "cut")
    whole = prune(2, "whole")
    assert untimed(resumed) == untimed(whole)
    assert all(step.compensation is not None for it in whole.iterations for step in it.layers)
