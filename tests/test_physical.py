import copy
import json

import pytest
import torch
from torch import nn

from src.models import VGG, CifarResNet, lenet5
from src.pruning.physical import physical_pass, rebuild
from src.pruning.shrink import network_size
from tests.test_tp_importance import RESNET8_GROUPS, trained_like_resnet8

X = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(0))
# The BatchNorm after each conv of CifarResNet(depth=8).
RESNET8_NORMS = {"conv1": "bn1", "layer2.0.shortcut.0": "layer2.0.shortcut.1", "layer3.0.shortcut.0": "layer3.0.shortcut.1",
                 **{f"layer{s}.0.conv{c}": f"layer{s}.0.bn{c}" for s in (1, 2, 3) for c in (1, 2)}}


def masked_copy(model: nn.Module, result, coupled: dict[str, list[str]]) -> nn.Module:
    """A copy of the unpruned ``model`` with the removed channels' parameters zeroed in every
    coupled layer (conv/linear weight rows and bias, the following BatchNorm's weight and bias)."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for record in result.groups:
        key = next(k for k, names in coupled.items() if record.root in names)
        index = list(record.removed)
        with torch.no_grad():
            for name in coupled[key]:
                layer = modules[name]
                layer.weight[index] = 0.0
                if layer.bias is not None:
                    layer.bias[index] = 0.0
                if name in RESNET8_NORMS:
                    norm = modules[RESNET8_NORMS[name]]
                    norm.weight[index] = 0.0
                    norm.bias[index] = 0.0
    return masked


@pytest.mark.parametrize("importance", ["cka", "tp_l1", "tp_bn", "tp_taylor", "tp_random"])
def test_physical_resnet_computes_what_the_masked_resnet_computes(importance):
    model = trained_like_resnet8()
    pruned = copy.deepcopy(model)
    result = physical_pass(pruned, importance, 0.5, X[:1], X, labels=torch.arange(40) % 10, seed=1)
    assert {len(r.removed) for r in result.groups} == {2, 4, 8}  # half of 4, 8, 16 channels per group
    expected = masked_copy(model, result, RESNET8_GROUPS)
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), expected(X), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(X), expected(X), atol=1e-3)  # something was removed


def test_physical_lenet5_with_biases_computes_what_the_masked_lenet5_computes():
    torch.manual_seed(0)
    model = lenet5((1, 28, 28)).eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(model)
    result = physical_pass(pruned, "cka", 0.4, x[:1], x)
    assert sorted((r.root, r.channels_before, len(r.removed)) for r in result.groups) == [
        ("classifier.0", 120, 48), ("classifier.2", 84, 34), ("features.0", 6, 3), ("features.3", 16, 7)]
    coupled = {name: [name] for name in ("features.0", "features.3", "classifier.0", "classifier.2")}
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_copy(model, result, coupled)(x), rtol=1e-5, atol=1e-5)


def test_physical_vgg_computes_what_the_masked_vgg_computes():
    torch.manual_seed(0)
    model = VGG(11, 8, (1, 12, 12), 10)
    with torch.no_grad():
        model.train()(X)
    model.eval()
    pruned = copy.deepcopy(model)
    result = physical_pass(pruned, "cka", 0.5, X[:1], X, global_pruning=True)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(len(r.removed) for r in result.groups) == sum(widths) - int(sum(widths) * 0.5)
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for record in result.groups:  # features.i is a conv, features.(i+1) its BatchNorm
            conv, norm = modules[record.root], modules[f"features.{int(record.root.split('.')[1]) + 1}"]
            conv.weight[list(record.removed)] = 0.0
            norm.weight[list(record.removed)] = 0.0
            norm.bias[list(record.removed)] = 0.0
        torch.testing.assert_close(pruned(X), masked(X), rtol=1e-5, atol=1e-5)


def resnet8_counts(s1, b1, s2, b2, s3, b3, classes=10, size=12):
    """Parameters and MACs of CifarResNet(depth=8) on 1 x size x size inputs, by hand, as
    Torch-Pruning counts them (:func:`src.pruning.shrink.network_size`).

    s: a stage's residual width, b: its block's inner width. 3x3 convs, no bias, each followed by
    a BatchNorm (2 parameters per channel, 2 MACs per element); stages at size, size/2, size/4
    pixels. ReLU: 1 per element (the stem's, each block's inner and outer); the global average
    pool: 1 per input element; the residual addition: 0; the Linear: ``in * out + out``.
    """
    h1, h2, h3 = size**2, (size // 2) ** 2, (size // 4) ** 2
    convs = [  # (in, out, kernel area, output pixels)
        (1, s1, 9, h1), (s1, b1, 9, h1), (b1, s1, 9, h1),
        (s1, b2, 9, h2), (b2, s2, 9, h2), (s1, s2, 1, h2),
        (s2, b3, 9, h3), (b3, s3, 9, h3), (s2, s3, 1, h3),
    ]
    params = sum(i * o * k for i, o, k, _ in convs) + 2 * (s1 + b1 + s1 + b2 + 2 * s2 + b3 + 2 * s3)
    params += s3 * classes + classes
    relus = s1 * h1 + (b1 + s1) * h1 + (b2 + s2) * h2 + (b3 + s3) * h3
    macs = sum(i * o * k * p + 2 * o * p for i, o, k, p in convs) + relus + s3 * h3 + s3 * classes + classes
    return params, macs


def test_parameter_and_mac_counts_after_pruning_match_a_hand_count():
    model = trained_like_resnet8()
    assert network_size(model, (1, 12, 12)) == resnet8_counts(4, 4, 8, 8, 16, 16)
    result = physical_pass(model, "cka", 0.3, X[:1], X, iterative_steps=2)
    width = {"conv1": 4, "layer1.0.conv1": 4, "layer2.0.conv2": 8, "layer2.0.conv1": 8,
             "layer3.0.conv2": 16, "layer3.0.conv1": 16}
    for record in result.groups:
        name = next(n for n in width if n in record.layers)
        width[name] -= len(record.removed)
    assert list(width.values()) == [2, 2, 5, 5, 11, 11]  # floor(n (1 - 0.3)) kept after step 2
    counts = resnet8_counts(*width.values())
    assert network_size(model, (1, 12, 12)) == counts


def test_a_rebuilt_model_loads_the_pruned_checkpoint(tmp_path):
    model = trained_like_resnet8()
    first = physical_pass(model, "cka", 0.25, X[:1], X)
    second = physical_pass(model, "tp_l1", 0.5, X[:1], X)
    history = json.loads(json.dumps(first.history + second.history))
    torch.save(model.state_dict(), tmp_path / "pruned.pt")

    fresh = rebuild(CifarResNet(8, 4, 1, 10), X[:1], history)
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(X), model(X))
    with pytest.raises(RuntimeError, match="size mismatch"):
        CifarResNet(8, 4, 1, 10).load_state_dict(model.state_dict())


def test_bn_scale_baseline_removes_the_smallest_gammas():
    model = trained_like_resnet8()
    gamma = model.layer3[0].bn1.weight.detach().abs()
    result = physical_pass(model, "tp_bn", 0.5, X[:1], X)
    record = next(r for r in result.groups if r.root == "layer3.0.conv1")
    assert list(record.removed) == torch.argsort(gamma)[:8].tolist()


def test_random_baseline_follows_its_seed():
    removed = [[r.removed for r in physical_pass(trained_like_resnet8(), "tp_random", 0.5, X[:1], X, seed=s).groups]
               for s in (0, 0, 1)]
    assert removed[0] == removed[1] != removed[2]


def two_convs(first_gammas, second_gammas) -> nn.Module:
    """Two conv groups (conv 0 with BatchNorm 1, conv 3 with BatchNorm 4) of 4 channels, then the classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(first_gammas))
        model[4].weight.copy_(torch.tensor(second_gammas))
    return model.eval()


def test_global_pruning_removes_exactly_the_budget_when_importances_tie_across_groups():
    # tp_bn's importance is |gamma|: the least, 1.0, is channel 1 of the first group and channel 2 of
    # the second. The budget is 8 - int(8 * (1 - 1/8)) = 1 channel; Torch-Pruning alone removes both.
    removed = [(r.root, c) for r in physical_pass(two_convs([3., 1., 4., 2.], [2., 4., 1., 3.]), "tp_bn", 0.125,
                                                  X[:1], X, global_pruning=True).groups for c in r.removed]
    assert len(removed) == 1 and removed[0] in {("0", 1), ("3", 2)}
    again = physical_pass(two_convs([3., 1., 4., 2.], [2., 4., 1., 3.]), "tp_bn", 0.125, X[:1], X, global_pruning=True)
    assert [(r.root, c) for r in again.groups for c in r.removed] == removed  # ties broken the same way every time
    # All gammas equal (as at initialisation): half of the channels go, not all of them.
    model = two_convs([1.] * 4, [1.] * 4)
    result = physical_pass(model, "tp_bn", 0.5, X[:1], X, global_pruning=True)
    assert sum(len(r.removed) for r in result.groups) == 4 and model[0].out_channels + model[3].out_channels == 4


def test_a_group_whose_outputs_do_not_vary_is_left_alone_and_recorded_as_skipped():
    model = two_convs([1., 2., 3., 4.], [1., 2., 3., 4.])
    with torch.no_grad():
        model[3].weight.zero_()  # conv 3 outputs its bias on every sample: CKA is undefined
    for global_pruning in (False, True):
        pruned = copy.deepcopy(model)
        result = physical_pass(pruned, "cka", 0.5, X[:1], X, global_pruning=global_pruning)
        records = {r.root: r for r in result.groups}
        assert records["3"].removed == () and records["3"].channels_before == 4 and records["3"].layers == ("3",)
        assert "no variation" in records["3"].skipped and pruned[3].out_channels == 4
        assert len(records["0"].removed) == 2 and records["0"].skipped is None and pruned[0].out_channels == 2
    assert result.engine == "fast"
    # tp_bn scores no group without a BatchNorm: each is left alone, with a record saying so.
    result = physical_pass(lenet5(), "tp_bn", 0.5, torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28))
    assert result.groups and all(r.removed == () and "tp_bn gives this group no importance" in r.skipped
                                 for r in result.groups)
    assert result.engine == "torch-pruning"
