"""The classifiers.

``mlp`` and ``cnn``: the project's own :class:`Net`. Every hidden layer lives in a
:class:`Block` (layer -> [BatchNorm] -> ReLU -> [pool] -> [dropout]) so pruning code can find
a layer, the nonlinearity after it and the next layer without knowing the architecture.
Prunable layers are numbered in forward order: conv blocks first, then hidden Linear blocks;
the output layer is never prunable. These are pruned with masks (``src.pruning.masks``).

``resnet``, ``vgg``, ``lenet5``: a small zoo of the architectures the literature prunes,
plain ``nn.Module``s pruned physically through Torch-Pruning (``cka_prune.tp``):

- ``cifar_resnet(depth)``: He et al. (2016) CIFAR ResNet, depth = 6n + 2 (20, 32, 56, ...),
  three stages of n basic blocks at width w, 2w, 4w, option B shortcuts (1x1 conv + BatchNorm
  where the shape changes, identity elsewhere), as in Torch-Pruning's ResNet-56 benchmark.
- ``vgg(depth)``: VGG-11/13/16/19 with BatchNorm (Simonyan & Zisserman 2015 configurations,
  widths scaled by w / 64), global average pooling and one Linear classifier; a max-pool is
  skipped once the feature map is 1 pixel wide, so 28 x 28 inputs work too.
- ``lenet5``: LeCun et al. (1998) with ReLU and max-pooling: conv 5x5 (6, padded to keep
  the input size) -> pool -> conv 5x5 (16) -> pool -> 120 -> 84 -> classes.

The input's channel count and the class count come from ``ModelConfig.input_shape`` and
``output_size``, which default to the dataset's for these types (``src.config``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.config import RESIDUAL_TYPES, ModelConfig
from src.errors import UserError
from src.residual_models import build_residual_model


class Block(nn.Module):
    """One prunable layer and what follows it.

    ``layer`` is an ``nn.Linear`` (a neuron = an output unit) or an ``nn.Conv2d`` (a neuron
    = an output channel).
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, *, batch_norm: bool = False,
                 pool: bool = False, dropout: float = 0.0):
        super().__init__()
        self.layer = layer
        self.norm = nn.BatchNorm2d(layer.out_channels) if batch_norm else nn.Identity()
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def width(self) -> int:
        return self.layer.out_features if isinstance(self.layer, nn.Linear) else self.layer.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.act(self.norm(self.layer(x)))))


class Net(nn.Module):
    """conv blocks -> flatten -> hidden Linear blocks -> output Linear."""

    def __init__(self, conv: list[Block], hidden: list[Block], output: nn.Linear):
        super().__init__()
        self.conv = nn.ModuleList(conv)
        self.hidden = nn.ModuleList(hidden)
        self.output = output

    def blocks(self) -> list[Block]:
        """The prunable blocks in forward order."""
        return [*self.conv, *self.hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        x = x.flatten(1)
        for block in self.hidden:
            x = block(x)
        return self.output(x)


@dataclass(frozen=True)
class PrunableLayer:
    index: int
    name: str          # the layer's name in ``model.named_modules()``
    kind: str          # "linear" or "conv"
    width: int         # neurons (Linear) or channels (Conv2d)
    block: Block


def _conv_output_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    channels, height, width = cfg.input_shape
    pad = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    for i, out_channels in enumerate(cfg.conv_channels):
        height = height + 2 * pad - cfg.kernel_size + 1
        width = width + 2 * pad - cfg.kernel_size + 1
        if cfg.pool_every and (i + 1) % cfg.pool_every == 0:
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise UserError(f"model: conv layer {i} leaves no spatial extent for input {list(cfg.input_shape)}")
        channels = out_channels
    return channels, height, width


def _mlp(cfg: ModelConfig) -> Net:
    sizes = [cfg.input_size, *cfg.hidden_sizes]
    hidden = [Block(nn.Linear(a, b), dropout=cfg.dropout_rate) for a, b in zip(sizes, sizes[1:])]
    return Net([], hidden, nn.Linear(sizes[-1], cfg.output_size))


def _cnn(cfg: ModelConfig) -> Net:
    pad = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    in_channels = cfg.input_shape[0]
    conv = []
    for i, out_channels in enumerate(cfg.conv_channels):
        pool = bool(cfg.pool_every) and (i + 1) % cfg.pool_every == 0
        layer = nn.Conv2d(in_channels, out_channels, cfg.kernel_size, padding=pad)
        conv.append(Block(layer, batch_norm=cfg.batch_norm, pool=pool))
        in_channels = out_channels
    c, h, w = _conv_output_shape(cfg)
    sizes = [c * h * w, *cfg.fc_sizes]
    hidden = [Block(nn.Linear(a, b), dropout=cfg.dropout_rate) for a, b in zip(sizes, sizes[1:])]
    return Net(conv, hidden, nn.Linear(sizes[-1], cfg.output_size))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        # Option B: a projection only where the shape changes. (Option A's zero-padded identity
        # pads channels, which a channel-pruning dependency graph cannot follow.)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """stem conv3x3 (w) -> 3 stages of n BasicBlocks (w, 2w, 4w; stride 2 entering stages 2, 3)
    -> global average pool -> Linear."""

    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            layers = [BasicBlock(channels if b == 0 else out, out, 2 if stage > 0 and b == 0 else 1)
                      for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            channels = out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


VGG_LAYERS = {  # channels at width 64; "M": max-pool
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """(conv3x3 -> BN -> ReLU)* with max-pools -> global average pool -> Linear."""

    def __init__(self, depth: int, width: int, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for item in VGG_LAYERS[depth]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = max(1, item * width // 64)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        if (height // 2 - 4) // 2 < 1 or (width // 2 - 4) // 2 < 1:
            raise UserError(f"model: lenet5 needs images of at least 12 x 12 pixels, got {list(input_shape)}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def cifar_resnet_20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, 16, in_channels, num_classes)


def cifar_resnet_32(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(32, 16, in_channels, num_classes)


def cifar_resnet_56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, 16, in_channels, num_classes)


def vgg_11(input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> VGG:
    return VGG(11, 64, input_shape, num_classes)


def vgg_16(input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> VGG:
    return VGG(16, 64, input_shape, num_classes)


def lenet5(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> LeNet5:
    return LeNet5(input_shape, num_classes)


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model (seed the global RNG first for repeatable weights).

    ``mlp`` and ``cnn`` give a :class:`Net`; the zoo types a plain ``nn.Module`` (the residual
    ones from :mod:`src.residual_models`).
    """
    if cfg.type in RESIDUAL_TYPES:
        return build_residual_model(cfg)
    if cfg.type == "mlp":
        return _mlp(cfg)
    if cfg.type == "cnn":
        return _cnn(cfg)
    if cfg.type == "resnet":
        return CifarResNet(cfg.depth, cfg.width, cfg.input_shape[0], cfg.output_size)
    if cfg.type == "vgg":
        return VGG(cfg.depth, cfg.width, cfg.input_shape, cfg.output_size)
    return LeNet5(cfg.input_shape, cfg.output_size)


def check_model_fits_data(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, source: str) -> None:
    """Raise a one-line :class:`UserError` when the model cannot take the dataset."""
    features = 1
    for size in input_shape:
        features *= size
    if cfg.type == "mlp" and cfg.input_size != features:
        raise UserError(f"{source}: model.input_size is {cfg.input_size}, but the dataset has {features} features per sample {list(input_shape)}")
    if cfg.type != "mlp" and tuple(cfg.input_shape) != tuple(input_shape):
        raise UserError(f"{source}: model.input_shape is {list(cfg.input_shape)}, but the dataset's images are {list(input_shape)}")
    if cfg.output_size != num_classes:
        raise UserError(f"{source}: model.output_size is {cfg.output_size}, but the dataset has {num_classes} classes")


def prunable_layers(model: Net) -> list[PrunableLayer]:
    """The prunable layers with their widths, numbered as ``prune.modules`` numbers them."""
    names = {id(module): name for name, module in model.named_modules()}
    return [
        PrunableLayer(
            index=i,
            name=names[id(block.layer)],
            kind="linear" if isinstance(block.layer, nn.Linear) else "conv",
            width=block.width,
            block=block,
        )
        for i, block in enumerate(model.blocks())
    ]


def next_layer(model: Net, index: int) -> nn.Linear | nn.Conv2d:
    """The layer that consumes block ``index``'s output (a later block's layer or the output)."""
    blocks = model.blocks()
    return blocks[index + 1].layer if index + 1 < len(blocks) else model.output
