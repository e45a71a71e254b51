"""CKAImportance on models a Torch-Pruning user writes, pruned through tp.pruner.MetaPruner."""

import warnings

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from cka_prune import CKAImportance
from cka_prune.tp.groups import Tap


class InplaceResNet(nn.Module):
    """Stem + one identity BasicBlock, every ReLU in place."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(y)) + x)
        return self.fc(x.mean((2, 3)))


class DepthwiseBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU())
        self.project = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.project(self.depthwise(self.expand(x))).mean((2, 3)))


class Concatenation(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.mix(torch.relu(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3)))


class SharedConv(nn.Module):
    """One conv applied to the image and to its mirror image (shared weights)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.shared(x)) + torch.relu(self.shared(x.flip(-1)))
        return self.fc(y.mean((2, 3)))


class PreNormBlock(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)), on tokens (B, T, D)."""

    def __init__(self, dim=16, hidden=32):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.Sequential(PreNormBlock())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def image_model(cls):
    torch.manual_seed(0)
    model = cls()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def prune_once(model, x, importance, ratio=0.5, **kwargs):
    """One MetaPruner step; {root path: removed root channels} and the warnings it gave."""
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[model.fc if hasattr(model, "fc") else model.head], **kwargs)
    importance.record(model, x, pruner=pruner)
    names = {m: n for n, m in model.named_modules()}
    removed = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for group in pruner.step(interactive=True):
            removed[names[group[0].dep.target.module]] = [int(i) for i in group[0].idxs]
            group.prune()
    return removed, [str(w.message) for w in caught if "CKAImportance" in str(w.message)]


def score_of(importance, name):
    """The score of the group rooted at ``name`` (scores are keyed by root and layers)."""
    (score,) = [score for key, score in importance.scores.items() if key.root == name]
    return score


def first_of_order(importance, model, name, k):
    return set(score_of(importance, name).order[:k])


@pytest.mark.parametrize("cls, shape, roots", [
    (InplaceResNet, (24, 3, 8, 8), {"stem.0": 8, "conv1": 8}),
    (DepthwiseBlock, (24, 3, 8, 8), {"depthwise.0": 12, "project": 6}),
    (Concatenation, (24, 3, 8, 8), {"a": 6, "b": 4, "mix": 8}),
])
def test_conv_nets_lose_the_channels_cka_ranked_first(cls, shape, roots):
    model = image_model(cls)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    importance = CKAImportance()
    removed, warned = prune_once(model, x, importance)
    assert not warned
    assert set(removed) == set(roots)
    for name, n in roots.items():
        assert set(removed[name]) == first_of_order(importance, model, name, n - n // 2)
    assert model(x).shape == (24, 4)


def test_a_shared_conv_contributes_every_call_as_samples():
    model = image_model(SharedConv)
    x = torch.randn(20, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    importance = CKAImportance()
    removed, warned = prune_once(model, x, importance)
    assert not warned and importance.outputs[model.shared].shape == (20, 8, 72)  # two calls of 36 positions
    assert set(removed["shared"]) == first_of_order(importance, model, "shared", 4)
    assert model(x).shape == (20, 4)


def test_a_transformer_blocks_mlp_is_pruned_on_tokens_and_the_attention_group_is_left_alone():
    torch.manual_seed(0)
    model = Transformer().eval()
    x = torch.randn(6, 5, 8)
    importance = CKAImportance()
    removed, warned = prune_once(model, x, importance)
    assert set(removed) == {"blocks.0.fc1"}
    # Scored on what fc2 reads (after the GELU): 6 sequences x 5 tokens.
    assert importance.recorded.outputs[Tap(model.blocks[0].fc2, True)].shape == (30, 32, 1)
    assert set(removed["blocks.0.fc1"]) == first_of_order(importance, model, "blocks.0.fc1", 16)
    # The residual stream's group holds the LayerNorms and the attention: one warning, naming it.
    assert len(warned) == 1 and "blocks.0.fc2 (with " in warned[0] and "blocks.0.attn" in warned[0]
    assert "residual stream (norms blocks.0.ln1, blocks.0.ln2)" in warned[0]
    assert model.blocks[0].fc1.out_features == 16 and model.embed.out_features == 16
    assert model(x).shape == (6, 4)


def test_a_layernorm_group_is_left_alone_with_one_warning():
    class ResidualMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Linear(6, 8), nn.LayerNorm(8)
            self.up, self.down, self.fc = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

        def forward(self, x):
            x = self.embed(x)
            return self.fc(x + self.down(torch.relu(self.up(self.norm(x)))))

    torch.manual_seed(0)
    model = ResidualMLP()
    x = torch.randn(32, 6)
    importance = CKAImportance()
    removed, warned = prune_once(model, x, importance)
    assert set(removed) == {"up"} and model.embed.out_features == 8
    assert len(warned) == 1 and "residual stream (norms norm)" in warned[0]
    assert [r for r in importance.skipped.values() if "residual stream" in r] == list(importance.skipped.values())


def test_token_rows_are_capped_by_the_sample_budget():
    torch.manual_seed(0)
    model = Transformer().eval()
    importance = CKAImportance(max_samples=12)
    prune_once(model, torch.randn(6, 5, 8), importance)
    assert len(score_of(importance, "blocks.0.fc1").order) == 32
    assert importance.recorded.outputs[Tap(model.blocks[0].fc2, True)].shape == (12, 32, 1)


def test_one_scoring_sample_is_a_warning_and_no_prune():
    model = image_model(InplaceResNet)
    importance = CKAImportance()
    removed, warned = prune_once(model, torch.randn(1, 3, 8, 8), importance)
    assert removed == {} and len(warned) == 2 and all("1 scoring sample" in w for w in warned)


def test_recording_keeps_only_the_output_layers_of_the_groups_scored():
    model = image_model(InplaceResNet)
    x = torch.randn(8, 3, 8, 8)
    importance = CKAImportance()
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=importance, pruning_ratio=0.5,
                                  ignored_layers=[model.fc, model.conv1])
    importance.record(model, x, pruner=pruner)
    assert set(importance.outputs) == {model.stem[0], model.conv2}


@pytest.mark.parametrize("normalizer", ["mean", "max", "sum", "standarization", "gaussian"])
def test_normalizers_are_torch_prunings(normalizer):
    model = image_model(InplaceResNet)
    x = torch.randn(16, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    raw, normalized = CKAImportance(), CKAImportance(normalizer=normalizer)
    raw.record(model, x)
    normalized.record(model, x)
    magnitude = tp.importance.MagnitudeImportance()
    for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=(nn.Conv2d, nn.Linear)):
        expected = magnitude._normalize(raw(group), normalizer)
        torch.testing.assert_close(normalized(group), expected)
        assert torch.equal(torch.argsort(normalized(group)), torch.argsort(raw(group)))


def test_mean_normalised_cka_is_on_torch_prunings_scale_in_a_mixed_global_step():
    class Mixed(tp.importance.Importance):
        """CKA for the residual stream (stem.0), TP's L2 for the block's hidden channels."""

        def __init__(self, model):
            self.cka, self.l2, self.model = CKAImportance(normalizer="mean"), tp.importance.MagnitudeImportance(), model

        def record(self, model, x, pruner):
            self.cka.record(model, x, pruner=pruner)

        def __call__(self, group):
            return (self.cka if group[0].dep.target.module is self.model.stem[0] else self.l2)(group)

    model = image_model(InplaceResNet)
    x = torch.randn(24, 3, 8, 8)
    mixed = Mixed(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    mixed.record(model, x, None)
    for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=(nn.Conv2d, nn.Linear)):
        assert float(mixed(group).mean()) == pytest.approx(1.0)  # both on Torch-Pruning's 'mean' scale
    removed, _ = prune_once(model, x, mixed, ratio=0.5, global_pruning=True)
    assert set(removed) == {"stem.0", "conv1"}


def test_a_conv_reused_in_sequence_is_scored_with_both_calls_beside_the_stem():
    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            return self.fc(torch.relu(self.shared(torch.relu(self.shared(x)))).mean((2, 3)))

    x = torch.randn(20, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    fast, reference = CKAImportance(), CKAImportance(engine="reference")
    model = image_model(Reused)
    removed, warned = prune_once(model, x, fast)  # one group: stem, both calls of shared
    assert not warned and set(removed) == {"shared"} and model(x).shape == (20, 4)
    assert set(removed["shared"]) == first_of_order(fast, model, "shared", 4)
    again = image_model(Reused)
    prune_once(again, x, reference)  # the literal loop, re-running both calls with zeroed weights
    assert score_of(reference, "shared").order == score_of(fast, "shared").order
    np.testing.assert_allclose(score_of(reference, "shared").cka, score_of(fast, "shared").cka, rtol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_model_on_cuda_is_scored_as_on_the_cpu(engine, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 convolutions, as on the CPU
    x = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    on_cpu, on_gpu = image_model(InplaceResNet), image_model(InplaceResNet).cuda()
    cpu, gpu = CKAImportance(engine=engine), CKAImportance(engine=engine)
    removed_cpu, _ = prune_once(on_cpu, x, cpu)
    removed_gpu, _ = prune_once(on_gpu, x.cuda(), gpu)
    assert removed_gpu == removed_cpu and on_gpu(x.cuda()).shape == (24, 4)
    for name in ("stem.0", "conv1"):
        np.testing.assert_allclose(score_of(gpu, name).cka, score_of(cpu, name).cka, rtol=1e-4, atol=1e-6)


def test_samples_on_which_cka_is_undefined_are_a_warning_not_an_abort():
    model = image_model(SharedConv)
    # Four samples, one unlike the others: the debiased self-similarity is <= 0, CKA is undefined.
    x = torch.cat([torch.ones(3, 3, 6, 6), torch.zeros(1, 3, 6, 6)])
    removed, warned = prune_once(model, x, CKAImportance(engine="reference", debiased=True))
    assert removed == {} and len(warned) == 1 and "the group of shared" in warned[0]
    assert "CKA is undefined" in warned[0]


def test_rbf_on_mostly_identical_samples_is_scored():
    model = image_model(SharedConv)
    x = torch.cat([torch.ones(7, 3, 6, 6), torch.zeros(1, 3, 6, 6)])  # most pairs identical: median distance 0
    removed, warned = prune_once(model, x, CKAImportance(kernel="rbf"))
    assert warned == [] and len(removed["shared"]) == 4


def test_a_missing_recording_names_the_layer_by_its_path():
    model = image_model(InplaceResNet)
    x = torch.randn(4, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    with pytest.raises(ValueError, match=r"no current recording of conv1; call record\(model, inputs, pruner=pruner\)"):
        CKAImportance()(group)
