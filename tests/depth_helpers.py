"""Tiny residual models for the depth-pruning tests, and the literal forward with blocks skipped."""

import torch
from torch import nn


class MLPBlock(nn.Module):
    """Pre-norm residual MLP block: x + fc2(relu(fc1(ln(x))))."""

    def __init__(self, width):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.ln(x))))


class ResidualMLP(nn.Module):
    def __init__(self, inputs=6, width=8, depth=4, classes=3):
        super().__init__()
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.Sequential(*[MLPBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


class Attention(nn.Module):
    def __init__(self, width, heads, causal):
        super().__init__()
        self.attn, self.causal = nn.MultiheadAttention(width, heads, batch_first=True), causal

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


class TransformerBlock(nn.Module):
    """Pre-norm: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, width, heads=2, causal=False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patches (a strided conv), a class token, position embeddings, pre-norm blocks, a head."""

    def __init__(self, width=8, depth=4, patch=2, size=4, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(1, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*[TransformerBlock(width) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class Decoder(nn.Module):
    """A byte-level pre-norm decoder: its blocks in an nn.ModuleList, logits (B, T, vocab)."""

    def __init__(self, vocab=11, width=8, depth=4, length=5):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, width), nn.Parameter(torch.randn(1, length, width))
        self.layers = nn.ModuleList([TransformerBlock(width, causal=True) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class ConvBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); a stride or a channel change projects."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ConvNet(nn.Module):
    """A stem, two stages of three blocks (the second stage's first block strides), a pool, a head."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layer1 = nn.Sequential(*[ConvBlock(width, width) for _ in range(3)])
        self.layer2 = nn.Sequential(ConvBlock(width, 2 * width, 2), ConvBlock(2 * width, 2 * width),
                                    ConvBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


def randomize_bn(model, seed=0):
    """Non-trivial BatchNorm statistics and affines, so that eval-mode blocks are no near-copies."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def sequential_without(seq, skip):
    """The literal forward of an nn.Sequential's items, without the indices in `skip`."""
    def forward(x):
        for i, block in enumerate(seq):
            if i not in skip:
                x = block(x)
        return x
    return forward


def models():
    """(name, model, batches, blocks) for each tiny model: eval mode, float64, seeded."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    mlp = ResidualMLP().double().eval()
    vit = ViT().double().eval()
    dec = Decoder().double().eval()
    conv = randomize_bn(ConvNet()).double()
    return [
        ("mlp", mlp, [torch.randn(16, 6, generator=g, dtype=torch.float64) for _ in range(3)],
         [f"blocks.{i}" for i in range(4)]),
        ("vit", vit, [torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)],
         [f"blocks.{i}" for i in range(4)]),
        ("decoder", dec, [torch.randint(0, 11, (4, 5), generator=g) for _ in range(2)],
         [f"layers.{i}" for i in range(4)]),
        ("conv", conv, [torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(2)],
         ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2"]),
    ]
