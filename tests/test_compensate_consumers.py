"""cka_prune.compensate: the consumers' refit against literal regressions, on MLPs, a LLaMA and a ViT."""

import copy
import re
from collections.abc import Mapping
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.compensate import ConsumerRefit, refit_layer

transformers = pytest.importorskip("transformers")


def literal_fit(inputs: np.ndarray, target: np.ndarray, bias: bool, ridge: float) -> np.ndarray:
    """[W | b] (O, d + 1) or W (O, d): the least-squares fit of ``target`` on ``inputs``, written out:
    np.linalg.lstsq at ridge 0, the closed ridge form on centred data (about zero without a bias)."""
    if ridge == 0:
        design = np.column_stack([inputs, np.ones(len(inputs))]) if bias else inputs
        return np.linalg.lstsq(design, target, rcond=None)[0].T
    x, z = (inputs - inputs.mean(0), target - target.mean(0)) if bias else (inputs, target)
    n, d = x.shape
    lam = ridge * np.trace(x.T @ x / n) / d
    weight = (z.T @ x / n) @ np.linalg.inv(x.T @ x / n + lam * np.eye(d))
    return np.column_stack([weight, target.mean(0) - weight @ inputs.mean(0)]) if bias else weight


def parameters(layer: nn.Linear) -> np.ndarray:
    weight = layer.weight.detach().double().numpy()
    return np.column_stack([weight, layer.bias.detach().double().numpy()]) if layer.bias is not None else weight


def relative(current: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(current - target) / np.linalg.norm(target - target.mean(0)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_a_refit_layer_is_the_literal_least_squares_fit(bias, ridge):
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 5, generator=g) + 3 * torch.rand(5, generator=g)  # means far from 0
    target = inputs @ torch.randn(5, 4, generator=g) + torch.randn(200, 4, generator=g) + 2.0
    layer = nn.Linear(5, 4, bias=bias)
    before = layer(inputs).detach().double().numpy()
    fit = refit_layer(layer, target, inputs, ridge, "layer")
    x, z = inputs.double().numpy(), target.double().numpy()
    expected = literal_fit(x, z, bias, ridge)
    np.testing.assert_allclose(parameters(layer), expected, rtol=1e-5, atol=1e-5)
    assert fit.error_before == pytest.approx(relative(before, z), rel=1e-6)
    design = np.column_stack([x, np.ones(len(x))]) if bias else x
    assert fit.error_after == pytest.approx(relative(design @ expected.T, z), rel=1e-5)
    assert fit.error_after < fit.error_before


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def captured(model: nn.Module, layer: nn.Module, batches, output: bool) -> np.ndarray:
    """``layer``'s inputs or outputs over ``batches`` (tuples or mappings), a row per sample or unpadded token."""
    rows = []

    def keep(x, mask):
        x = x.detach().reshape(-1, x.shape[-1]).double()
        rows.append(x if mask is None else x[mask.reshape(-1) != 0])

    for batch in batches:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        args, kwargs = ((), batch) if isinstance(batch, Mapping) else (batch, {})
        handle = (layer.register_forward_hook(lambda m, a, out: keep(out, mask)) if output
                  else layer.register_forward_pre_hook(lambda m, a: keep(a[0], mask)))
        with torch.no_grad():
            model(*args, **kwargs)
        handle.remove()
    return torch.cat(rows).numpy()


def assert_optimal(dense: nn.Module, model: nn.Module, name: str, batches, fit, pruned: np.ndarray, positions=None):
    """The consumer's parameters are the lstsq fit of the dense output on its current input (both
    read here, upstream consumers final); the recorded errors are that fit's residual and the
    residual of its ``pruned`` parameters (as the step left them), and no larger."""
    before, now = dict(dense.named_modules()), dict(model.named_modules())
    x, z = captured(model, now[name], batches, False), captured(dense, before[name], batches, True)
    if positions is not None:
        x, z = x[positions], z[positions]
    bias = now[name].bias is not None
    expected = literal_fit(x, z, bias, 0.0)
    np.testing.assert_allclose(parameters(now[name]), expected, atol=2e-4 * np.abs(expected).max(), err_msg=name)
    design = np.column_stack([x, np.ones(len(x))]) if bias else x
    optimum, unfit = relative(design @ expected.T, z), relative(design @ pruned.T, z)
    assert fit.error_after == pytest.approx(optimum, rel=1e-3), name
    assert fit.error_before == pytest.approx(unfit, rel=1e-6), name
    assert optimum <= unfit, name


def test_an_mlp_consumer_that_loses_outputs_too_is_fit_on_the_outputs_it_keeps():
    model, x = mlp(), torch.randn(300, 6)
    dense = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[4]])
    batches = [(batch,) for batch in x.split(64)]
    with ConsumerRefit(model, pruner, ridge=0.0, max_rows=None) as refit:
        for batch in batches:
            model(*batch)
    assert list(refit.consumers) == ["2", "4"]
    refit.step(pruner)
    assert (model[2].in_features, model[2].out_features) == (8, 6)
    pruned = parameters(model[4])
    fits = refit.fit(batches)
    assert list(fits) == ["2", "4"]
    kept = refit.kept_outputs["2"]
    assert len(kept) == 6 and kept == sorted(kept)
    # The literal fit of layer 2 on the dense outputs it still computes, then layer 4 on the result.
    x2, z2 = captured(model, model[2], batches, False), captured(dense, dense[2], batches, True)[:, kept]
    np.testing.assert_allclose(parameters(model[2]), literal_fit(x2, z2, True, 0.0), atol=1e-4)
    assert_optimal(dense, model, "4", batches, fits["4"], pruned)


def test_a_consumer_that_loses_outputs_in_a_plain_step_is_refused_before_anything_is_refit():
    model, x = mlp(), torch.randn(100, 6)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[4]])
    with ConsumerRefit(model, pruner) as refit:
        model(x)
    pruner.step()
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^ConsumerRefit: 2 lost output features too \(12 -> 6\); run the step as "
                                         r"refit.step\(pruner\)"):
        refit.fit([x])
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_fit_on_other_batches_than_recorded_is_refused_in_one_line():
    model, x = mlp(), torch.randn(100, 6)
    with ConsumerRefit(model, ridge=0.0) as refit:
        model(x)
    with torch.no_grad():
        tp.prune_linear_out_channels(model[0], [0, 1])
        tp.prune_linear_in_channels(model[2], [0, 1])
    with pytest.raises(ValueError, match="2 read 0 rows in fit but 100 when recorded"):
        refit.fit(iter([]))


def test_a_mask_that_does_not_fit_a_consumers_rows_is_refused_in_one_line():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.pooled = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x, attention_mask):
            return self.pooled(torch.relu(self.tokens(x)).mean(1))  # (B, T, 4) -> (B, 2)

    model, x = Pooled(), torch.randn(3, 5, 4)
    message = r"^ConsumerRefit: the mask has shape \(3, 5\), but pooled's rows come from \(3, 2\)"
    with pytest.raises(ValueError, match=message):
        with ConsumerRefit(model):
            model(x, attention_mask=torch.ones(3, 5))


def test_a_convolution_consumer_is_refused_when_the_refit_is_made():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 1, 6, 6), importance=tp.importance.MagnitudeImportance(),
                                  pruning_ratio=0.5, ignored_layers=[model[4]])
    with pytest.raises(ValueError, match="^ConsumerRefit refits Linear consumers only: the pruner removes input "
                                         "channels of the convolution 2"):
        ConsumerRefit(model, pruner)


def test_max_rows_keeps_a_seeded_subset_and_the_fit_reads_the_same_rows():
    model, x = mlp(), torch.randn(500, 6)
    dense = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[2], model[4]])  # layer 0's units only: 2 reads them
    batches = [(batch,) for batch in x.split(70)]
    with ConsumerRefit(model, pruner, ridge=0.0, max_rows=120, seed=3) as refit:
        for batch in batches:
            model(*batch)
    target = refit.targets["2"]
    positions = target.positions.numpy()
    assert target.rows.shape == (120, 12) and len(set(positions)) == 120 and positions.max() > 400
    np.testing.assert_array_equal(target.rows.numpy(), captured(dense, dense[2], batches, True)[positions])
    pruner.step()
    pruned = parameters(model[2])
    fits = refit.fit(batches)
    assert list(fits) == ["2"]
    assert_optimal(dense, model, "2", batches, fits["2"], pruned, positions)
    with ConsumerRefit(mlp(), max_rows=120, seed=3) as again:
        for batch in batches:
            again.model(*batch)
    assert np.array_equal(again.targets["2"].positions.numpy(), positions)


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_a_llama_mlp_pruned_by_magnitude_is_refit_on_unpadded_tokens_and_generates():
    model = llama()
    ids = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[::2, :5] = 0  # left padding on every other sequence
    batches = [transformers.BatchEncoding({"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4]})
               for i in range(0, 12, 4)]
    dense = copy.deepcopy(model)
    mlp_in = [m for name, m in model.named_modules() if name.endswith(("up_proj", "gate_proj"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning on the RMSNorms' unwrapped weights
        pruner = tp.pruner.MetaPruner(model, ids[:1], importance=tp.importance.MagnitudeImportance(),
                                      pruning_ratio=0.5, output_transform=lambda out: out.logits.sum(),
                                      ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)
                                                      and m not in mlp_in])
    with ConsumerRefit(model, pruner, ridge=0.0) as refit:
        for batch in batches:
            model(**batch)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert list(refit.consumers) == names and refit.targets[names[0]].seen == int(mask.sum()) == 162
    pruner.step()
    pruned = {name: parameters(model.get_submodule(name)) for name in names}
    fits = refit.fit(batches)
    assert list(fits) == names and model.model.layers[0].mlp.down_proj.in_features == 32
    for name in names:
        assert_optimal(dense, model, name, batches, fits[name], pruned[name])
    assert model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def vit():
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=5)
    return ViTForImageClassification(config).eval()


def test_a_vit_pruned_by_heads_and_mlp_units_is_refit_and_runs():
    model = vit()
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    batches = [{"pixel_values": images[i:i + 8]} for i in (0, 8)]
    dense = copy.deepcopy(model)
    attention = [layer.attention for layer in model.vit.layers]
    qkv = [proj for a in attention for proj in (a.q_proj, a.k_proj, a.v_proj)]
    roots = set(qkv) | {layer.mlp.fc1 for layer in model.vit.layers}
    pruner = tp.pruner.MetaPruner(model, images[:1], importance=tp.importance.MagnitudeImportance(),
                                  pruning_ratio=0.5, output_transform=lambda out: out.logits.sum(),
                                  num_heads={proj: 4 for proj in qkv}, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=0.5,
                                  ignored_layers=[m for m in model.modules()
                                                  if isinstance(m, (nn.Linear, nn.Conv2d)) and m not in roots])
    with ConsumerRefit(model, pruner, ridge=0.0) as refit:
        for batch in batches:
            model(**batch)
    pruner.step()
    names = [f"vit.layers.{i}.{part}" for i in (0, 1) for part in ("attention.o_proj", "mlp.fc2")]
    assert [model.get_submodule(name).in_features for name in names] == [16, 32, 16, 32]
    pruned = {name: parameters(model.get_submodule(name)) for name in names}
    fits = refit.fit(batches)
    assert list(fits) == names
    for name in names:
        assert_optimal(dense, model, name, batches, fits[name], pruned[name])
    assert model(**batches[0]).logits.shape == (8, 5)


def test_the_docs_example_runs_as_printed(capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "torch-pruning.md").read_text()
    section = text[text.index("## Compensating the next layer"):]
    code, printed = re.findall(r"^```(?:python)?\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "docs/torch-pruning.md", "exec"), {})
    lines, expected = capsys.readouterr().out.splitlines(), printed.splitlines()
    assert lines[-1] == expected[-1] == "torch.Size([1, 12])"
    for line, shown in zip(lines[:-1], expected[:-1], strict=True):
        (name, before, after), (name_shown, *numbers) = (re.fullmatch(r"(\S+): (\S+) -> (\S+)", x).groups()
                                                         for x in (line, shown))
        assert name == name_shown and float(after) < float(before)
        assert [float(before), float(after)] == pytest.approx([float(n) for n in numbers], abs=2e-3)
