"""The residual models: shapes, attention against a literal computation, causality, removable blocks."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from src.config import parse_config
from src.models import build_model
from src.residual_models import Decoder, ResMLP, SelfAttention, ViT

CONFIGS = {  # tiny sizes of each type, as configs say them
    "resmlp": ({"type": "resmlp", "depth": 3, "width": 8, "mlp_ratio": 2}, {"dataset": "mnist-5k"}),
    "vit": ({"type": "vit", "depth": 2, "width": 8, "heads": 2, "patch_size": 7, "mlp_ratio": 2}, {"dataset": "mnist-5k"}),
    "decoder": ({"type": "decoder", "depth": 2, "width": 8, "heads": 2, "mlp_ratio": 2},
                {"dataset": "python-stdlib", "context": 16}),
}


def built(name: str) -> nn.Module:
    model, data = CONFIGS[name]
    torch.manual_seed(0)
    return build_model(parse_config({"model": model, "data": data}, Path("x.json")).model).eval()


def test_configs_build_their_sizes():
    resmlp, vit, decoder = built("resmlp"), built("vit"), built("decoder")
    assert isinstance(resmlp, ResMLP) and isinstance(vit, ViT) and isinstance(decoder, Decoder)
    assert [len(m.blocks) for m in (resmlp, vit, decoder)] == [3, 2, 2]
    assert all(isinstance(m.blocks, nn.ModuleList) for m in (resmlp, vit, decoder))
    assert resmlp.embed.in_features == 784 and resmlp.blocks[0].fc1.out_features == 16
    assert vit.pos.shape == (1, 4 * 4 + 1, 8) and vit.blocks[0].attn.heads == 2
    assert decoder.pos.shape == (1, 16, 8) and decoder.head.out_features == 256


@pytest.mark.parametrize("name, x, out", [
    ("resmlp", torch.rand(5, 1, 28, 28), (5, 10)),
    ("vit", torch.rand(5, 1, 28, 28), (5, 10)),
    ("decoder", torch.randint(0, 256, (5, 16)), (5, 16, 256)),
])
def test_shapes_and_every_block_keeps_its_inputs_shape(name, x, out):
    model = built(name)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape))) for b in model.blocks]
    assert model(x).shape == out
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(model.blocks) and all(i == o for i, o in seen)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_softmax_attention_written_out(causal):
    torch.manual_seed(0)
    attn = SelfAttention(8, 2, causal)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(4)
        if causal:
            scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), -math.inf)
        heads.append(scores.softmax(-1) @ v[..., part])
    expected = attn.proj(torch.cat(heads, -1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_the_decoder_is_causal():
    model = built("decoder")
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    for t in (0, 7, 15):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        after = model(changed)
        assert torch.equal(after[:, :t], before[:, :t])
        assert not torch.allclose(after[:, t], before[:, t])


def test_the_decoder_takes_shorter_windows_as_their_prefix():
    model = built("decoder")
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(tokens[:, :9]), model(tokens)[:, :9])


def test_a_block_replaced_by_the_identity_is_skipped():
    model = built("resmlp")
    x = torch.rand(4, 1, 28, 28)
    model.blocks[1] = nn.Identity()
    h = model.embed(x.flatten(1))
    for i in (0, 2):  # the remaining blocks, written out: x + fc2(GELU(fc1(LN(x))))
        b = model.blocks[i]
        h = h + b.fc2(nn.functional.gelu(b.fc1(nn.functional.layer_norm(h, (8,), b.norm.weight, b.norm.bias))))
    torch.testing.assert_close(model(x), model.head(model.norm(h)))
