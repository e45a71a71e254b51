"""Retraining on the smaller network: exact hand-over in both directions, resumable."""

import copy

import pytest
import torch

import main_prune
import main_train
from src import results
from src.config import load_config
from src.errors import UserError
from src.models import build_model, prunable_layers
from src.pruning.masks import add_masks, remove_neurons
from src.pruning.shrink import carry_back, network_size, remaining_size, shrunk
from src.train import fit
from tests.conftest import tiny_raw, untimed

CPU = torch.device("cpu")
CNN = {"type": "cnn", "conv_channels": [6, 8], "kernel_size": 3, "fc_sizes": [12], "batch_norm": True}


def pruned_model(write_config, model_section=None):
    raw_model = model_section or tiny_raw()["model"]
    cfg = load_config(write_config("m", model=raw_model))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    layers = prunable_layers(model)
    add_masks(model, range(len(layers)))
    generator = torch.Generator().manual_seed(1)
    for layer in layers:
        remove_neurons(layer.block.layer, torch.randperm(layer.width, generator=generator)[: layer.width // 3].tolist())
    with torch.no_grad():  # make BatchNorm's running statistics non-trivial
        for layer in layers:
            if isinstance(layer.block.norm, torch.nn.BatchNorm2d):
                layer.block.norm.running_mean.uniform_(-0.5, 0.5)
                layer.block.norm.running_var.uniform_(0.5, 2.0)
    return cfg, model


def inputs(model):
    first = prunable_layers(model)[0].block.layer
    shape = (first.in_features,) if isinstance(first, torch.nn.Linear) else (1, 28, 28)
    return torch.rand(32, *shape, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("model_section", [None, CNN], ids=["mlp", "cnn"])
def test_training_the_small_network_and_carrying_it_back_is_exact(write_config, mnist5k, model_section):
    cfg, masked = pruned_model(write_config, model_section)
    x = inputs(masked)
    small = shrunk(masked, cfg.model)
    assert [l.width for l in prunable_layers(small)] == [l.width - l.width // 3 for l in prunable_layers(masked)]
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), masked.eval()(x), atol=1e-5, rtol=1e-5)
    before = copy.deepcopy(masked.state_dict())
    fit(small, mnist5k, cfg.params, seed=0, device=CPU)
    carry_back(masked, small)
    with torch.no_grad():
        torch.testing.assert_close(masked.eval()(x), small.eval()(x), atol=1e-5, rtol=1e-5)
    layers = prunable_layers(masked)
    for i, layer in enumerate(layers):
        module = layer.block.layer
        assert torch.equal(module.weight_mask, before[f"{layer.name}.weight_mask"])  # masks untouched
        removed = ~module.weight_mask.flatten(1).any(1)
        assert torch.all(module.weight[removed] == 0)
        consumer = layers[i + 1].block.layer if i + 1 < len(layers) else masked.output
        if isinstance(consumer, torch.nn.Linear):
            columns = removed.repeat_interleave(consumer.weight.shape[1] // removed.numel())
            assert torch.all(consumer.weight[:, columns] == 0)  # the removed constants live in the bias now
        else:
            assert torch.all(consumer.weight[:, removed] == 0)


def test_shrink_needs_an_exact_export(write_config):
    with pytest.raises(UserError, match='prune.params.shrink needs model.padding "valid"'):
        load_config(write_config("bad", model={**CNN, "padding": "same"},
                                 prune={"params": {"type": "cka", "rate": 0.2, "shrink": True}}))


def test_a_resumed_shrunk_run_equals_an_uninterrupted_one(write_config, tmp_path):
    def prune(iterations, out):
        config = write_config("tiny", prune={"params": {"type": "cka", "iterations": iterations, "rate": 0.3,
                                                        "shrink": True}})
        common = [str(config), "--models-dir", str(tmp_path / "models")]
        assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / out)]) == 0
        return results.load(tmp_path / out / "tiny" / "0.json")

    prune(2, "cut")
    resumed = prune(3, "cut")  # continues from iteration 2's checkpoint
    whole = prune(3, "whole")
    assert untimed(resumed) == untimed(whole)
    assert [step.alive_after for step in whole.iterations[-1].layers] == [17, 10]  # 48 -> 34 -> 24 -> 17


def test_the_remaining_size_is_that_of_the_surviving_neurons_dense_network(write_config):
    """Torch-Pruning's count (:func:`network_size`): a Linear ``in * out + out``, a ReLU 1 per
    output, dropout 0. Parameters: weights and biases."""
    cfg, masked = pruned_model(write_config)  # 784 -> 48 -> 32 -> 10, a third of each hidden layer removed
    a, b = 48 - 16, 32 - 10
    assert remaining_size(masked, cfg.model) == (784 * a + a + a * b + b + b * 10 + 10,
                                                 (784 * a + a) + a + (a * b + b) + b + (b * 10 + 10))
    fresh = build_model(cfg.model)
    assert remaining_size(fresh, cfg.model) == (784 * 48 + 48 + 48 * 32 + 32 + 32 * 10 + 10,
                                                (784 * 48 + 48) + 48 + (48 * 32 + 32) + 32 + (32 * 10 + 10))


def test_the_remaining_size_of_a_conv_network_counts_batch_norm_and_the_flattened_head(write_config):
    """Per output element of a conv block: ``in * 9 + 1`` (conv and bias), 2 (BatchNorm), 1 (ReLU),
    1 (max pooling, per input element); the head's Linears as above."""
    cfg, masked = pruned_model(write_config, CNN)  # conv 3x3: 1 -> 6 -> 8 (28 -> 26 -> 13 -> 11 -> 5), fc 12
    c1, c2, f = 6 - 2, 8 - 2, 12 - 4
    parameters = (9 * c1 + c1 + 2 * c1) + (c1 * 9 * c2 + c2 + 2 * c2) + (c2 * 25 * f + f) + (f * 10 + 10)
    macs = (26 * 26 * c1 * (9 + 1 + 2 + 1 + 1) + 11 * 11 * c2 * (c1 * 9 + 1 + 2 + 1 + 1)
            + (c2 * 25 * f + f) + f + (f * 10 + 10))
    assert remaining_size(masked, cfg.model) == (parameters, macs)


def test_network_size_leaves_the_model_alone_and_counts_a_masked_weight_in_full(write_config):
    cfg, masked = pruned_model(write_config)
    masked.train()
    before = copy.deepcopy(masked.state_dict())
    parameters, _ = network_size(masked, (784,))
    assert parameters == 784 * 48 + 48 + 48 * 32 + 32 + 32 * 10 + 10
    assert masked.training and all(torch.equal(v, before[k]) for k, v in masked.state_dict().items())
