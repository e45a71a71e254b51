"""Surgery of masked models into smaller dense models: equivalence with the masked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src.config import ModelConfig
from src.errors import UserError
from src.models import Net, build_model, prunable_layers
from src.pruning.masks import make_permanent, remove_neurons
from src.pruning.surgery import smaller_dense

MLP = ModelConfig(type="mlp", input_size=20, hidden_sizes=(16, 12, 10), output_size=5, dropout_rate=0.3)
CNN_VALID = ModelConfig(type="cnn", input_shape=(2, 12, 12), conv_channels=(6, 5), kernel_size=3,
                        padding="valid", pool_every=2, fc_sizes=(7,), output_size=4, batch_norm=True,
                        dropout_rate=0.2)
CNN_SAME = ModelConfig(type="cnn", input_shape=(2, 10, 10), conv_channels=(6, 5), kernel_size=3,
                       padding="same", pool_every=2, fc_sizes=(7,), output_size=4, batch_norm=True)


def random_model(cfg: ModelConfig, seed: int = 0) -> Net:
    """A model with positive biases (so removed neurons emit nonzero constants) and, with
    BatchNorm, non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.bias.uniform_(0.2, 1.0)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(0.1, 0.5)
    return model.eval()


def prune(model: Net, removals: dict[int, list[int]]) -> Net:
    layers = prunable_layers(model)
    for index, neurons in removals.items():
        remove_neurons(layers[index].block.layer, neurons)
    return model


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def inputs(cfg: ModelConfig, n: int = 32) -> torch.Tensor:
    shape = (cfg.input_size,) if cfg.type == "mlp" else cfg.input_shape
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def test_mlp_surgery_matches_masked_outputs():
    masked = prune(random_model(MLP), {0: [0, 3, 7, 15], 1: [2, 5], 2: [1, 2, 3, 9]})
    surgery = smaller_dense(masked, MLP)
    small, cfg = surgery.model, surgery.config
    assert cfg.hidden_sizes == (12, 10, 6)
    assert [layer.width for layer in prunable_layers(small)] == [12, 10, 6]
    assert [(r.width_before, r.width_after, r.fold) for r in surgery.layers] == [
        (16, 12, "exact"), (12, 10, "exact"), (10, 6, "exact")]
    assert surgery.exact and surgery.warnings == ()
    x = inputs(MLP)
    torch.testing.assert_close(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_fold_is_needed_for_equivalence():
    """Dropping the removed neurons' constant contributions would change the outputs."""
    masked = prune(random_model(MLP), {0: [0, 3]})
    small = smaller_dense(masked, MLP).model
    with torch.no_grad():
        small.hidden[1].layer.bias.copy_(masked.hidden[1].layer.bias)
    x = inputs(MLP)
    assert (outputs(small, x) - outputs(masked, x)).abs().max() > 1e-3


def test_surgery_leaves_masked_model_and_global_rng_alone():
    masked = prune(random_model(MLP), {1: [0, 1]}).train()
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    rng = torch.random.get_rng_state()
    smaller_dense(masked, MLP)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert masked.training
    after = masked.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_smaller_model_is_plain():
    masked = prune(random_model(MLP), {0: [1]})
    small = smaller_dense(masked, MLP).model
    assert not any(name.endswith(("_orig", "_mask")) for name in small.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in small.modules())
    assert not small.training


def test_permanent_masks_are_cut_like_masks():
    """Zero rows without masks (``make_permanent``) are removed as well."""
    masked = prune(random_model(MLP), {0: [4, 5], 2: [0]})
    x = inputs(MLP)
    expected = outputs(masked, x)
    surgery = smaller_dense(make_permanent(masked), MLP)
    small, cfg = surgery.model, surgery.config
    assert cfg.hidden_sizes == (14, 12, 9)
    torch.testing.assert_close(outputs(small, x), expected, atol=1e-5, rtol=0)


def test_cnn_valid_padding_with_batchnorm_is_exact():
    # conv0 -> conv1 (no padding), conv1 -> flatten -> fc0, fc0 -> output
    masked = prune(random_model(CNN_VALID), {0: [1, 4], 1: [0, 2], 2: [3]})
    removed_constants = torch.relu(masked.conv[0].norm(masked.conv[0].layer.bias.view(1, -1, 1, 1)).flatten())
    assert (removed_constants[[1, 4]] > 0.05).all()
    surgery = smaller_dense(masked, CNN_VALID)
    small, cfg = surgery.model, surgery.config
    assert cfg.conv_channels == (4, 3) and cfg.fc_sizes == (6,)
    assert [r.fold for r in surgery.layers] == ["exact", "exact", "exact"]
    assert surgery.exact
    x = inputs(CNN_VALID)
    torch.testing.assert_close(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=0)
    # BatchNorm of the kept channels comes along.
    torch.testing.assert_close(small.conv[0].norm.running_var, masked.conv[0].norm.running_var[[0, 2, 3, 5]])


def test_cnn_same_padding_is_exact_only_in_the_interior():
    masked = prune(random_model(CNN_SAME), {0: [0, 3], 1: [1]})
    surgery = smaller_dense(masked, CNN_SAME)
    small = surgery.model
    assert [r.fold for r in surgery.layers] == ["interior", "exact", "none"]
    assert not surgery.exact
    assert len(surgery.warnings) == 1 and "conv.1.layer" in surgery.warnings[0]
    captured: dict[str, torch.Tensor] = {}
    masked.conv[1].layer.register_forward_hook(lambda m, i, o: captured.__setitem__("masked", o))
    small.conv[1].layer.register_forward_hook(lambda m, i, o: captured.__setitem__("small", o))
    x = inputs(CNN_SAME)
    outputs(masked, x)
    outputs(small, x)
    kept = [0, 2, 3, 4]  # conv1's output channel 1 is removed
    diff = (captured["small"] - captured["masked"][:, kept]).abs()
    assert diff[:, :, 1:-1, 1:-1].max() < 1e-5  # kernel 3: only the outermost ring sees padding
    assert diff[:, :, 0, :].max() > 1e-3 and diff[:, :, :, -1].max() > 1e-3


def test_layer_without_any_neuron_keeps_one_dead_neuron():
    masked = prune(random_model(MLP), {1: list(range(12)), 2: [0]})
    surgery = smaller_dense(masked, MLP)
    small, cfg = surgery.model, surgery.config
    assert cfg.hidden_sizes == (16, 1, 9)
    assert "all 12 neurons removed" in surgery.layers[1].note
    x = inputs(MLP)
    torch.testing.assert_close(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_config_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="widths"):
        smaller_dense(random_model(MLP), ModelConfig(type="mlp", input_size=20, hidden_sizes=(16, 12), output_size=5))
