import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.engines import reference_greedy
from cka_prune.tp import CKAImportance
from src.config import ModelConfig, PruneParams
from src.data import Split, to_unit_float
from src.errors import UserError
from src.models import CifarResNet, build_model, prunable_layers
from src.pruning.criteria import select
from src.pruning.physical import classifier, physical_pass
from src.pruning.scoring import record_layers

# The coupled output layers of CifarResNet(depth=8), one block per stage, written out by hand
# (independent of Torch-Pruning's graph): a stage's residual stream is the stem or shortcut
# projection plus the block's second conv; each block's first conv is a group of its own.
RESNET8_GROUPS = {
    "conv1": ["conv1", "layer1.0.conv2"],
    "layer2": ["layer2.0.shortcut.0", "layer2.0.conv2"],
    "layer3": ["layer3.0.shortcut.0", "layer3.0.conv2"],
    "layer1.0.conv1": ["layer1.0.conv1"],
    "layer2.0.conv1": ["layer2.0.conv1"],
    "layer3.0.conv1": ["layer3.0.conv1"],
}


def trained_like_resnet8(seed=0) -> CifarResNet:
    """Random weights with BatchNorm statistics and affine parameters away from their init."""
    torch.manual_seed(seed)
    model = CifarResNet(8, 4, 1, 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    with torch.no_grad():
        model.train()(torch.rand(64, 1, 12, 12))
    return model.eval()


def all_groups(model, example):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    return list(graph.get_all_groups(ignored_layers=[classifier(model)], root_module_types=(nn.Conv2d, nn.Linear)))


def group_key(importance, group):
    names = {importance.names[site.tap.module] for site in importance.plan(group).sites}
    return next(key for key, layers in RESNET8_GROUPS.items() if set(layers) == names)


def test_mlp_one_pass_removes_the_masked_paths_neurons_in_the_same_order(mnist5k):
    torch.manual_seed(0)
    cfg = ModelConfig(type="mlp", input_size=784, hidden_sizes=(48, 32), output_size=10, dropout_rate=0.5)
    model = build_model(cfg).eval()
    subset = Split(mnist5k.val.images[:200], mnist5k.val.labels[:200])
    params = PruneParams(type="cka", rate=0.25, samples="all")
    layers = prunable_layers(model)
    recordings = record_layers(model, layers, subset, params, 128, torch.Generator().manual_seed(0), torch.device("cpu"))
    masked = {layer.name: select(recordings[layer.index], params, np.ones(layer.width, dtype=bool), (0,)).removed
              for layer in layers}

    x = to_unit_float(subset.images)
    result = physical_pass(model, "cka", 0.25, x[:1], x)
    physical = {record.root: list(record.removed) for record in result.groups}
    assert physical == masked
    assert [len(v) for v in masked.values()] == [12, 8]
    assert (model.hidden[0].layer.out_features, model.hidden[1].layer.out_features) == (36, 24)


def test_coupled_group_order_equals_the_reference_loop_on_really_zeroed_layers():
    model = trained_like_resnet8()
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    importance = CKAImportance()
    importance.record(model, x)
    modules = dict(model.named_modules())
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (args[0], output)
        return hook

    hooks = [modules[name].register_forward_hook(keep(name)) for layers in RESNET8_GROUPS.values() for name in layers]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()

    groups = all_groups(model, x[:1])
    assert sorted(group_key(importance, g) for g in groups) == sorted(RESNET8_GROUPS)
    for group in groups:
        names = RESNET8_GROUPS[group_key(importance, group)]
        n = modules[names[0]].out_channels

        def recompute(removed, names=names):
            outs = []
            for name in names:
                conv, (inp, _) = modules[name], seen[name]
                weight = conv.weight.detach().clone()
                weight[removed] = 0.0
                outs.append(nn.functional.conv2d(inp, weight, None, conv.stride, conv.padding).flatten(1))
            return torch.cat(outs, 1).double()

        expected_order, expected_cka = reference_greedy(recompute([]).numpy(), recompute, n, n)
        imp = importance(group)
        score = importance.scores[importance.key(group)]
        assert list(score.order) == expected_order
        np.testing.assert_allclose(score.cka, expected_cka, rtol=1e-9, atol=1e-12)
        # The importance ranks channels exactly in that order, strictly increasing.
        assert torch.equal(torch.argsort(imp), torch.tensor(expected_order))
        assert bool((imp[expected_order].diff() > 0).all())


def test_local_pruning_removes_the_first_k_of_each_groups_greedy_order():
    model = trained_like_resnet8()
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    importance = CKAImportance()
    importance.record(model, x)
    orders = {}
    for group in all_groups(model, x[:1]):
        importance(group)
        orders[importance.names[group[0].dep.target.module]] = importance.scores[importance.key(group)].order
    result = physical_pass(model, "cka", 0.5, x[:1], x)
    assert len(result.groups) == 6
    for record in result.groups:
        k = record.channels_before - int(record.channels_before * 0.5)
        assert record.removed == orders[record.root][:k]
        assert len(record.cka) == k


def test_global_pruning_takes_the_least_cka_loss_over_all_groups_as_a_prefix_of_each_order():
    model = trained_like_resnet8()
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    importance = CKAImportance()
    importance.record(model, x)
    values, orders = {}, {}
    for group in all_groups(model, x[:1]):
        root = importance.names[group[0].dep.target.module]
        values[root] = importance(group)
        orders[root] = importance.scores[importance.key(group)].order
        cka = importance.scores[importance.key(group)].cka
        # Importance = CKA loss after each removal, made increasing along the order.
        np.testing.assert_allclose(values[root][list(orders[root])], np.maximum.accumulate(1 - np.array(cka)), atol=1e-12)
    total = sum(len(v) for v in values.values())

    result = physical_pass(model, "cka", 0.3, x[:1], x, global_pruning=True)
    removed = {record.root: record.removed for record in result.groups}
    assert sum(len(r) for r in removed.values()) == total - int(total * 0.7)
    kept_values, removed_values = [], []
    for root, order in orders.items():
        k = len(removed.get(root, ()))
        assert removed.get(root, ())[:k] == order[:k]
        removed_values += values[root][list(order[:k])].tolist()
        kept_values += values[root][list(order[k:])].tolist()
    assert max(removed_values) <= min(kept_values)
    assert len(removed) > 1 and len({len(r) / len(orders[root]) for root, r in removed.items()}) > 1


def test_reference_engine_prunes_like_the_fast_engine():
    a, b = trained_like_resnet8(), trained_like_resnet8()
    x = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    fast = physical_pass(a, "cka", 0.5, x[:1], x)
    reference = physical_pass(b, "cka", 0.5, x[:1], x, engine="reference")
    assert [r.removed for r in fast.groups] == [r.removed for r in reference.groups]
    for f, r in zip(fast.groups, reference.groups):
        np.testing.assert_allclose(f.cka, r.cka, rtol=1e-9)


def test_debiased_interactions_match_the_engine_on_the_concatenation():
    from cka_prune.engines import interactions_from_activations
    model = trained_like_resnet8()
    x = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    for debiased in (False, True):
        importance = CKAImportance(debiased=debiased)
        importance.record(model, x)
        for group in all_groups(model, x[:1]):
            rep, columns = importance.representation(group)
            expected = interactions_from_activations(rep.numpy(), columns, debiased=debiased)
            np.testing.assert_allclose(importance.interactions(group), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_a_missing_or_stale_recording_is_refused():
    model = trained_like_resnet8()
    x = torch.rand(16, 1, 12, 12)
    importance = CKAImportance()
    with pytest.raises(ValueError, match="call record"):
        importance(all_groups(model, x[:1])[0])
    importance.record(model, x)
    physical_pass(model, "tp_l1", 0.5, x[:1], x)  # every layer's input or output shrinks
    for group in all_groups(model, x[:1]):
        with pytest.raises(ValueError, match="call record"):
            importance(group)


def test_the_recording_is_the_layers_output_even_when_the_model_changes_it_in_place():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(8, 1, 8, 8)
    importance = CKAImportance(engine="reference")
    importance.record(model, x)
    with torch.no_grad():
        assert torch.equal(importance.outputs[model[0]], model[0](x).flatten(2))  # before the ReLU: negatives kept
        assert torch.equal(importance.inputs[model[3]][0], torch.relu(model[0](x)).flatten(1))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


def test_an_unsupported_group_is_left_alone_with_its_reason():
    x = torch.rand(8, 1, 6, 6)
    model = GroupNormNet()
    with pytest.warns(UserWarning, match=r"the group of conv \(with fc, norm\) is left alone: it contains norm .GroupNorm."):
        result = physical_pass(model, "cka", 0.5, x[:1], x)
    (record,) = result.groups
    assert record.removed == () and "norm (GroupNorm)" in record.skipped and model.conv.out_channels == 4


class NumpyRoundTrip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.from_numpy(self.conv(x).mean((2, 3)).detach().numpy()))


@pytest.mark.parametrize("model, expected", [
    (NumpyRoundTrip(), "cannot trace NumpyRoundTrip: layer conv is not reached"),
    (nn.Sequential(nn.Flatten(), nn.Linear(5, 3)), "cannot trace Sequential (RuntimeError: mat1 and mat2"),
])
def test_an_untraceable_model_is_one_line(model, expected):
    x = torch.rand(8, 1, 6, 6)
    with pytest.raises(UserError) as info:
        physical_pass(model, "cka", 0.5, x[:1], x)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model: Torch-Pruning " + expected)


class GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.grouped(self.conv(x)).mean((2, 3)))


class SequenceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.hidden(x.flatten(1, 2)).mean(1))  # (N, 6 rows, 6) -> (N, 6, 8)


def test_a_grouped_convolution_is_left_alone():
    x = torch.rand(8, 1, 6, 6)
    with pytest.warns(UserWarning, match="grouped convolution grouped"):
        result = physical_pass(GroupedConvNet(), "cka", 0.5, x[:1], x)
    skipped = [record for record in result.groups if record.skipped]
    assert skipped and all(r.removed == () and "grouped convolution grouped" in r.skipped for r in skipped)


def test_a_linear_on_rows_of_a_sequence_is_scored_with_positions_as_samples():
    model = SequenceNet()
    x = torch.rand(8, 1, 6, 6)
    result = physical_pass(model, "cka", 0.5, x[:1], x)
    (record,) = result.groups
    assert record.root == "hidden" and len(record.removed) == 4 and model.hidden.out_features == 4
