"""Retraining on the physically smaller network (``prune.params.shrink``).

After a pass, the masked model is cut down to the dense network of the surviving widths
(:func:`src.pruning.surgery.smaller_dense`: each removed neuron's constant output, ``relu(bias)`` or its
BatchNorm'd value, is folded into the next layer's bias, exactly), that network is retrained,
and its weights are carried back into the masked model (:func:`carry_back`), so the next pass,
the checkpoints and the results see the same kind of model as with masked retraining.

How this differs from retraining the masked network: with masks, a removed neuron still has
a trainable bias and trainable outgoing weights, so its constant output keeps acting as an
extra, trainable bias of the next layer (``W_next[:, removed] @ relu(b_removed)``). After
folding, that constant is part of the next layer's bias, which trains as usual; the removed
neurons' own parameters are gone. The function class is the same (a constant added to the
next pre-activation); only its parametrisation, and so the optimiser's path, differ. Carrying
back sets the removed neurons' outgoing weights to zero (their constant is already in the
bias), so the masked model computes exactly what the retrained small one does.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from src.config import ModelConfig
from src.models import Net, prunable_layers
from src.pruning.masks import alive_neurons, refresh_weight
from src.pruning.surgery import smaller_dense


def shrunk(masked: Net, model_cfg: ModelConfig) -> Net:
    """The dense network of ``masked``'s surviving neurons, in train mode on ``masked``'s device."""
    return smaller_dense(masked, model_cfg).model.to(masked.output.weight.device).train()


def model_input_shape(cfg: ModelConfig) -> tuple[int, ...]:
    """The shape of one input sample: ``(input_size,)`` for an MLP, ``(C, H, W)`` otherwise."""
    return (cfg.input_size,) if cfg.type == "mlp" else tuple(cfg.input_shape)


def network_size(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameters and MACs of one ``input_shape`` sample, as Torch-Pruning counts them.

    ``torch_pruning.utils.count_ops_and_params`` on an eval-mode copy (``model`` is left alone).
    Parameters: every entry of ``model.parameters()`` (a masked weight counts in full; BatchNorm's
    running statistics do not). MACs: per sample, summed over the modules it knows:
    Linear ``in * out + out`` (one add per bias), Conv2d ``(in / groups * k_h * k_w + 1) * out``
    per output position (the ``+ 1`` only with a bias), BatchNorm ``2`` per input element
    (affine), ReLU ``1`` per output element, max/average pooling ``1`` per input element;
    dropout, flatten and functional operations (a residual ``+``) count 0.
    """
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return int(params), int(macs)


def remaining_size(model: nn.Module, model_cfg: ModelConfig) -> tuple[int, int]:
    """Parameters and MACs per sample (:func:`network_size`) of the network a pruned ``model`` amounts to.

    A masked model counts as its smaller dense network (:func:`shrunk`: the surviving neurons'
    weights and biases, the removed ones' constants folded into the next biases); a physically
    pruned (Torch-Pruning) model is already that network.
    """
    dense = model if model_cfg.uses_torch_pruning else smaller_dense(model, model_cfg).model
    return network_size(dense, model_input_shape(model_cfg))


def carry_back(masked: Net, small: Net) -> None:
    """Write ``small``'s parameters into the surviving rows and inputs of ``masked``, in place.

    Inputs that come from removed neurons get zero weights. ``small`` must be
    ``shrunk(masked)`` after training (same surviving neurons, same architecture otherwise).
    """
    big_layers = [layer.block for layer in prunable_layers(masked)]
    small_layers = [layer.block for layer in prunable_layers(small)]
    keeps = [alive_neurons(block.layer) for block in big_layers]
    modules = [*(block.layer for block in big_layers), masked.output]
    targets = [*(block.layer for block in small_layers), small.output]
    with torch.no_grad():
        for i, (module, target) in enumerate(zip(modules, targets)):
            rows = keeps[i] if i < len(keeps) else torch.ones_like(module.bias, dtype=torch.bool)
            weight = module.weight_orig if hasattr(module, "weight_orig") else module.weight
            if i > 0:
                _zero_inputs_of_removed(module, weight, keeps[i - 1])
                cols = _input_columns(module, weight, keeps[i - 1])
                weight[rows.nonzero()[:, 0, None], cols] = target.weight.to(weight.dtype)
            else:
                weight[rows] = target.weight.to(weight.dtype)
            module.bias[rows] = target.bias.to(module.bias.dtype)
            if hasattr(module, "weight_mask"):
                refresh_weight(module)
        for big, little, keep in zip(big_layers, small_layers, keeps):
            if isinstance(big.norm, nn.BatchNorm2d):
                for name, value in little.norm.state_dict().items():
                    target = big.norm.state_dict()[name]
                    if value.dim() == 0:
                        target.copy_(value)
                    else:
                        target[keep] = value.to(target.dtype)


def _input_columns(module: nn.Module, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Indices of ``weight``'s input columns (Linear) or channels (Conv2d) fed by kept neurons."""
    if isinstance(module, nn.Conv2d):
        return keep.nonzero()[:, 0]
    positions = weight.shape[1] // keep.numel()  # a Linear after the last conv block: C*H*W columns
    return keep.repeat_interleave(positions).nonzero()[:, 0]


def _zero_inputs_of_removed(module: nn.Module, weight: torch.Tensor, keep: torch.Tensor) -> None:
    columns = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    columns[_input_columns(module, weight, keep)] = False
    weight[:, columns] = 0
