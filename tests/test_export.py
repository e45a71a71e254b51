"""Export of masked models to smaller dense models: equivalence, counts, reloading."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src.config import ModelConfig, parse_config
from src.data import Split
from src.errors import UserError
from src import export
from src.export import (
    Latency, add_latency, count_macs, count_parameters, export_model, export_seed, format_report, load_exported,
    measure_latencies, save_exported,
)
from src.models import Net, build_model, prunable_layers
from src.pruning.masks import make_permanent, remove_neurons

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


def test_mlp_export_matches_masked_outputs():
    masked = prune(random_model(MLP), {0: [0, 3, 7, 15], 1: [2, 5], 2: [1, 2, 3, 9]})
    exported, cfg, report = export_model(masked, MLP)
    assert cfg.hidden_sizes == (12, 10, 6)
    assert [layer.width for layer in prunable_layers(exported)] == [12, 10, 6]
    assert [(r.width_before, r.width_after, r.fold) for r in report.layers] == [
        (16, 12, "exact"), (12, 10, "exact"), (10, 6, "exact")]
    assert report.exact and report.warnings == ()
    x = inputs(MLP)
    torch.testing.assert_close(outputs(exported, x), outputs(masked, x), atol=1e-5, rtol=0)
    assert report.max_abs_diff < 1e-5


def test_fold_is_needed_for_equivalence():
    """Dropping the removed neurons' constant contributions would change the outputs."""
    masked = prune(random_model(MLP), {0: [0, 3]})
    exported, _, _ = export_model(masked, MLP)
    with torch.no_grad():
        exported.hidden[1].layer.bias.copy_(masked.hidden[1].layer.bias)
    x = inputs(MLP)
    assert (outputs(exported, x) - outputs(masked, x)).abs().max() > 1e-3


def test_export_leaves_masked_model_and_global_rng_alone():
    masked = prune(random_model(MLP), {1: [0, 1]}).train()
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    rng = torch.random.get_rng_state()
    export_model(masked, MLP)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert masked.training
    after = masked.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_exported_model_is_plain():
    masked = prune(random_model(MLP), {0: [1]})
    exported, _, _ = export_model(masked, MLP)
    assert not any(name.endswith(("_orig", "_mask")) for name in exported.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in exported.modules())
    assert not exported.training


def test_permanent_masks_are_exported_like_masks():
    """Zero rows without masks (``make_permanent``) are removed as well."""
    masked = prune(random_model(MLP), {0: [4, 5], 2: [0]})
    x = inputs(MLP)
    expected = outputs(masked, x)
    exported, cfg, _ = export_model(make_permanent(masked), MLP)
    assert cfg.hidden_sizes == (14, 12, 9)
    torch.testing.assert_close(outputs(exported, x), expected, atol=1e-5, rtol=0)


def test_cnn_valid_padding_with_batchnorm_is_exact():
    # conv0 -> conv1 (no padding), conv1 -> flatten -> fc0, fc0 -> output
    masked = prune(random_model(CNN_VALID), {0: [1, 4], 1: [0, 2], 2: [3]})
    removed_constants = torch.relu(masked.conv[0].norm(masked.conv[0].layer.bias.view(1, -1, 1, 1)).flatten())
    assert (removed_constants[[1, 4]] > 0.05).all()
    exported, cfg, report = export_model(masked, CNN_VALID)
    assert cfg.conv_channels == (4, 3) and cfg.fc_sizes == (6,)
    assert [r.fold for r in report.layers] == ["exact", "exact", "exact"]
    assert report.exact
    x = inputs(CNN_VALID)
    torch.testing.assert_close(outputs(exported, x), outputs(masked, x), atol=1e-5, rtol=0)
    # BatchNorm of the kept channels comes along.
    torch.testing.assert_close(exported.conv[0].norm.running_var, masked.conv[0].norm.running_var[[0, 2, 3, 5]])


def test_cnn_same_padding_is_exact_only_in_the_interior():
    masked = prune(random_model(CNN_SAME), {0: [0, 3], 1: [1]})
    exported, _, report = export_model(masked, CNN_SAME)
    assert [r.fold for r in report.layers] == ["interior", "exact", "none"]
    assert not report.exact
    assert len(report.warnings) == 1 and "conv.1.layer" in report.warnings[0]
    captured: dict[str, torch.Tensor] = {}
    masked.conv[1].layer.register_forward_hook(lambda m, i, o: captured.__setitem__("masked", o))
    exported.conv[1].layer.register_forward_hook(lambda m, i, o: captured.__setitem__("exported", o))
    x = inputs(CNN_SAME)
    outputs(masked, x)
    outputs(exported, x)
    kept = [0, 2, 3, 4]  # conv1's output channel 1 is removed
    diff = (captured["exported"] - captured["masked"][:, kept]).abs()
    assert diff[:, :, 1:-1, 1:-1].max() < 1e-5  # kernel 3: only the outermost ring sees padding
    assert diff[:, :, 0, :].max() > 1e-3 and diff[:, :, :, -1].max() > 1e-3
    assert 0 < report.max_abs_diff < 10


def test_parameter_and_mac_counts_by_hand():
    mlp = ModelConfig(type="mlp", input_size=4, hidden_sizes=(3,), output_size=2)
    masked = prune(random_model(mlp), {0: [1]})
    _, _, report = export_model(masked, mlp)
    assert (report.params_before, report.params_after) == (4 * 3 + 3 + 3 * 2 + 2, 4 * 2 + 2 + 2 * 2 + 2)
    assert (report.macs_before, report.macs_after) == (4 * 3 + 3 * 2, 4 * 2 + 2 * 2)

    # conv 1->2 channels, 3x3 kernel on 5x5 -> 3x3 maps, BatchNorm, then Linear 2*9 -> 3.
    cnn = ModelConfig(type="cnn", input_shape=(1, 5, 5), conv_channels=(2,), kernel_size=3, padding="valid",
                      pool_every=0, fc_sizes=(), output_size=3, batch_norm=True)
    masked = prune(random_model(cnn), {0: [0]})
    _, cfg, report = export_model(masked, cnn)
    assert cfg.conv_channels == (1,)
    assert report.params_before == (2 * 9 + 2) + 2 * 2 + (18 * 3 + 3)
    assert report.params_after == (1 * 9 + 1) + 1 * 2 + (9 * 3 + 3)
    assert report.macs_before == 2 * 9 * 9 + 18 * 3
    assert report.macs_after == 1 * 9 * 9 + 9 * 3
    assert count_parameters(masked) == report.params_before
    assert count_macs(masked, (1, 5, 5)) == report.macs_before


def test_layer_without_any_neuron_keeps_one_dead_neuron():
    masked = prune(random_model(MLP), {1: list(range(12)), 2: [0]})
    exported, cfg, report = export_model(masked, MLP)
    assert cfg.hidden_sizes == (16, 1, 9)
    assert "all 12 neurons removed" in report.layers[1].note
    x = inputs(MLP)
    torch.testing.assert_close(outputs(exported, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_config_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="widths"):
        export_model(random_model(MLP), ModelConfig(type="mlp", input_size=20, hidden_sizes=(16, 12), output_size=5))


def test_exported_model_reloads_from_state_dict_and_config(tmp_path):
    masked = prune(random_model(CNN_VALID), {0: [2], 1: [4]})
    exported, cfg, report = export_model(masked, CNN_VALID)
    x = inputs(CNN_VALID)
    rebuilt = build_model(cfg)
    rebuilt.load_state_dict(exported.state_dict())
    torch.testing.assert_close(outputs(rebuilt, x), outputs(exported, x), atol=0, rtol=0)

    path = tmp_path / "exported.pt"
    save_exported(path, exported, cfg, report)
    loaded, loaded_cfg = load_exported(path)
    assert loaded_cfg == cfg
    torch.testing.assert_close(outputs(loaded, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_load_exported_without_sidecar_is_a_user_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({}, path)
    with pytest.raises(UserError, match="model.json"):
        load_exported(path)


class Clocked(nn.Module):
    """Identity whose forward pass advances a fake clock by the next of its durations.

    ``advance`` is a function, which ``copy.deepcopy`` shares, so the copies that
    measure_latencies times still advance the test's clock.
    """

    def __init__(self, advance) -> None:
        super().__init__()
        self.advance = advance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.advance()
        return x


def test_latency_is_the_median_of_timed_passes_per_model_after_warmup(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(export, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    # 2 warm-up passes each (never timed), then 3 timed ones; the models are timed in turns.
    durations = {"a": iter([100.0, 100.0, 5.0, 1.0, 6.0]), "b": iter([200.0, 200.0, 2.0, 8.0, 4.0])}

    def advance(name):
        return lambda: now.__setitem__(0, now[0] + next(durations[name]))

    models = [Clocked(advance("a")), Clocked(advance("b"))]
    assert measure_latencies(models, (3,), batch_size=2, repeats=3, warmup=2) == [5.0, 4.0]
    assert next(durations["a"], None) is None and next(durations["b"], None) is None  # no extra passes


def test_add_latency_times_the_dense_masked_model_against_the_exported_one(monkeypatch):
    masked = prune(random_model(CNN_SAME), {0: [0]})
    exported, _, report = export_model(masked, CNN_SAME)
    calls = []

    def fake(models, input_shape, batch_size, repeats):
        calls.append((models, input_shape, batch_size, repeats))
        return [0.004, 0.001]

    monkeypatch.setattr(export, "measure_latencies", fake)
    timed = add_latency(report, masked, exported, batch_sizes=(1, 4), repeats=7)
    assert [(t.batch_size, t.repeats, t.before_ms, t.after_ms) for t in timed.latency] == [(1, 7, 4.0, 1.0), (4, 7, 4.0, 1.0)]
    assert timed.latency[0].threads == torch.get_num_threads()
    dense, small = calls[0][0]
    assert small is exported and not any(hasattr(m, "weight_mask") for m in dense.modules())
    x = inputs(CNN_SAME)
    torch.testing.assert_close(outputs(dense, x), outputs(masked, x))
    assert [c[1:] for c in calls] == [((2, 10, 10), 1, 7), ((2, 10, 10), 4, 7)]


def test_formatted_report():
    masked = prune(random_model(CNN_SAME), {0: [0]})
    _, _, report = export_model(masked, CNN_SAME)
    timed = dataclasses.replace(report, latency=(Latency(batch_size=4, repeats=3, threads=2, before_ms=3.0, after_ms=1.5),))
    rows = [line.split() for line in format_report(timed).splitlines()]
    first_layer = next(row for row in rows if row[0] == "0")
    assert first_layer[2:] == ["conv", "6", "5", "interior"]
    assert ["4", "2", "3", "3.000", "1.500", "2.00"] in rows
    text = format_report(timed)
    assert "NOT exact" in text and f"{report.params_before:,} -> {report.params_after:,}" in text


def test_export_seed_reports_both_accuracies_when_inexact(tmp_path, capsys):
    masked = prune(random_model(CNN_SAME), {0: [0, 3], 1: [1]})
    images = torch.randint(0, 256, (16, *CNN_SAME.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    test = Split(images, torch.arange(16) % 4)
    cfg = parse_config({"model": {"type": "cnn", "input_shape": [2, 10, 10], "conv_channels": [6, 5], "kernel_size": 3,
                                  "padding": "same", "pool_every": 2, "fc_sizes": [7], "output_size": 4,
                                  "batch_norm": True}, "params": {"batch_size": 8}}, Path("same.json"))
    export_seed(masked, cfg, test, tmp_path / "seed0.pt")
    out = capsys.readouterr().out
    assert "test accuracy: pruned (masked)" in out and "exported model:" in out
    small, small_cfg = load_exported(tmp_path / "seed0.pt")
    assert small_cfg.conv_channels == (4, 4)
