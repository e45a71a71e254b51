"""The classifiers: an MLP and a small CNN, both built from prunable blocks.

Every hidden layer lives in a :class:`Block` (layer -> [BatchNorm] -> ReLU -> [pool] ->
[dropout]) so pruning code can find a layer, the nonlinearity after it and the next layer
without knowing the architecture. Prunable layers are numbered in forward order: conv
blocks first, then hidden Linear blocks; the output layer is never prunable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.config import ModelConfig
from src.errors import UserError


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


def build_model(cfg: ModelConfig) -> Net:
    """A freshly initialised model (seed the global RNG first for repeatable weights)."""
    return _mlp(cfg) if cfg.type == "mlp" else _cnn(cfg)


def check_model_fits_data(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, source: str) -> None:
    """Raise a one-line :class:`UserError` when the model cannot take the dataset."""
    features = 1
    for size in input_shape:
        features *= size
    if cfg.type == "mlp" and cfg.input_size != features:
        raise UserError(f"{source}: model.input_size is {cfg.input_size}, but the dataset has {features} features per sample {list(input_shape)}")
    if cfg.type == "cnn" and tuple(cfg.input_shape) != tuple(input_shape):
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
