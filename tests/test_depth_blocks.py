"""cka_prune.depth.blocks: finding removable blocks, spans, Skip, and the model with blocks removed."""

import copy

import pytest
import torch
from torch import nn

from cka_prune import depth
from cka_prune.depth.blocks import Skip
from src.export import save_program
from src.models import CifarResNet
from tests.depth_helpers import ConvNet, Decoder, ViT, models, randomize_bn, sequential_without


def test_find_blocks_in_the_tiny_models_with_and_without_an_example():
    for _, model, batches, blocks in models():
        assert depth.find_blocks(model) == blocks
        assert depth.find_blocks(model, batches[0]) == blocks


def test_find_blocks_in_the_projects_resnet_leaves_out_the_blocks_that_change_the_shape():
    model = CifarResNet(depth=20, width=4, in_channels=3, num_classes=10)
    removable = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert depth.find_blocks(model) == removable
    assert depth.find_blocks(model, torch.randn(2, 3, 8, 8)) == removable


def test_a_sequential_of_layers_is_no_stack_of_blocks_and_stages_are_searched_for_blocks():
    assert depth.find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))) == []
    model = ConvNet()
    stages = nn.Sequential(model.stem, model.layer1, model.layer2)
    assert depth.find_blocks(stages) == ["1.0", "1.1", "1.2", "2.1", "2.2"]


def test_contiguous_spans_follow_one_container_and_jump_removed_blocks():
    names = ["a.0", "a.1", "a.2", "b.1", "b.2"]
    assert depth.contiguous_spans(names, 1) == [(n,) for n in names]
    assert depth.contiguous_spans(names, 2) == [("a.0", "a.1"), ("a.1", "a.2"), ("b.1", "b.2")]
    assert depth.contiguous_spans(names, 3) == [("a.0", "a.1", "a.2")]
    assert depth.contiguous_spans(names, 2, removed=["a.1"]) == [("a.0", "a.2"), ("b.1", "b.2")]
    # a.0 and a.2 are not adjacent while a.1, which is not among the names, is still there
    assert depth.contiguous_spans(["a.0", "a.2"], 2) == []
    assert depth.contiguous_spans(["encoder", "a.0"], 1) == [("encoder",), ("a.0",)]  # any submodule alone
    with pytest.raises(ValueError, match="'encoder' is not an item of an nn.Sequential or nn.ModuleList"):
        depth.contiguous_spans(["encoder", "a.0"], 2)


def test_skip_accepts_the_extra_arguments_and_returns_the_blocks_structure():
    x = torch.randn(2, 3, 4)
    assert Skip()(x, attention_mask=None, position_embeddings=(x, x)) is x
    assert Skip()(hidden_states=x) is x
    y, *rest = Skip(tuple_len=3)(x, None)
    assert y is x and rest == [None, None]


def _literal_decoder(model, skip):
    def forward(tokens):
        x = model.embed(tokens) + model.pos[:, :tokens.shape[1]]
        for i, layer in enumerate(model.layers):
            if i not in skip:
                x = layer(x)
        return model.head(model.norm(x))
    return forward


def _literal(name, model, skip):
    """The dense model run with the blocks at the indices `skip` (of its first stack) skipped."""
    if name == "mlp":
        return lambda x: model.head(sequential_without(model.blocks, skip)(model.embed(x)))
    if name == "vit":
        def vit(x):
            x = model.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([model.cls.expand(x.shape[0], -1, -1), x], 1) + model.pos
            return model.head(model.norm(sequential_without(model.blocks, skip)(x))[:, 0])
        return vit
    if name == "decoder":
        return _literal_decoder(model, skip)
    return lambda x: model.fc(model.layer2(sequential_without(model.layer1, skip)(model.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("greedy", [True, False])
def test_the_pruned_model_is_the_dense_model_with_those_blocks_skipped(greedy):
    for name, model, batches, blocks in models():
        first_stack = blocks[:3]
        plan = depth.select(model, first_stack, batches, "cka", 2, greedy=greedy, compensate="none")
        pruned = depth.apply(model, plan)
        skip = {int(n.rsplit(".", 1)[1]) for n in plan.removed}
        x = batches[0]
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), _literal(name, model, skip)(x), rtol=0, atol=1e-12)
        removed = sum(p.numel() for n in plan.removed for p in model.get_submodule(n).parameters())
        assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - removed
        assert all(isinstance(pruned.get_submodule(n), Skip) for n in plan.removed)


def test_the_patched_model_applies_x_w_plus_b_where_the_span_was():
    for name, model, batches, blocks in models():
        plan = depth.select(model, blocks[:3], batches, "residual", 2, span=True, compensate="lstsq", ridge=0.1)
        (span,) = plan.spans
        patch = plan.patches[depth.label(span)]
        w, b = torch.from_numpy(patch.weight), torch.from_numpy(patch.bias)
        first = int(span[0].rsplit(".", 1)[1])
        container = model.get_submodule(span[0].rsplit(".", 1)[0])
        patched = copy.deepcopy(model)
        stack = patched.get_submodule(span[0].rsplit(".", 1)[0])

        class Affine(nn.Module):
            def forward(self, x):
                if x.dim() == 4:  # channels at each pixel
                    return (x.permute(0, 2, 3, 1) @ w + b).permute(0, 3, 1, 2)
                return x @ w + b

        stack[first] = Affine()
        skip = {int(n.rsplit(".", 1)[1]) for n in span[1:]}
        x = batches[0]
        with torch.no_grad():
            expected = _literal(name, patched, skip)(x)
            torch.testing.assert_close(depth.apply(model, plan)(x), expected, rtol=0, atol=1e-10)
        assert len(container) == len(stack)


def test_apply_leaves_the_model_alone():
    _, model, batches, blocks = models()[0]
    before = copy.deepcopy(model.state_dict())
    depth.apply(model, depth.select(model, blocks, batches, "tail", 2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not isinstance(m, Skip) for m in model.modules())


def test_the_pruned_models_export_with_the_projects_torch_export_path(tmp_path):
    torch.manual_seed(0)
    cases = [(ViT(), (1, 4, 4)), (randomize_bn(ConvNet()), (3, 6, 6))]  # Linear and 1x1-conv patches
    for i, (model, shape) in enumerate(cases):
        model.eval()
        batches = [torch.randn(8, *shape) for _ in range(2)]
        pruned = depth.apply(model, depth.select(model, depth.find_blocks(model), batches, "cosine", 2))
        save_program(tmp_path / f"{i}.pt2", pruned, shape)
        program = torch.export.load(tmp_path / f"{i}.pt2").module()
        x = torch.randn(5, *shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), pruned(x))


def test_a_decoder_with_blocks_removed_exports():
    model = Decoder().eval()
    tokens = [torch.randint(0, 11, (4, 5)) for _ in range(2)]
    pruned = depth.apply(model, depth.select(model, depth.find_blocks(model), tokens, "angular", 2, span=True))
    program = torch.export.export(pruned, (tokens[0],)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(tokens[1]), pruned(tokens[1]))
