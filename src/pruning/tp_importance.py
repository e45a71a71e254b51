"""CKA as a Torch-Pruning importance, and Torch-Pruning's own importances as baselines.

Torch-Pruning (DepGraph) prunes *groups*: every layer coupled to a root layer's output
channels, e.g. in a ResNet stage the stem conv, each block's second conv, their BatchNorms,
the residual additions and the next layers' inputs. Channel c of a group is removed from all
of them at once. An importance maps a group to one score per channel; the pruner removes the
lowest.

:class:`CKAImportance` scores a group by the exact greedy CKA pass of ``src.pruning.greedy``:

- Representation preserved: the concatenated outputs, on the scoring samples, of every
  Conv2d/Linear layer whose output channels the group removes ("output layers"; for a
  ResNet stage group: the stem conv and every block's second conv and shortcut projection
  of that stage), each from its recorded input. This is the masked path's per-layer view
  applied jointly to coupled layers. Channel c of the group = the union of its columns in
  every output layer (a conv channel owns its H*W columns).
- Why the fast engine stays exact: zeroing channel c's weights in every output layer makes
  exactly c's columns constant (the bias) and leaves every other column unchanged, since each
  output layer is evaluated on its recorded input. Centered linear CKA ignores constant
  columns, so removing a set S of channels from the group = zeroing the columns of S in the
  concatenation: the column groups the fast engine already takes. The interaction matrix
  M[g, h] = <K_g, K_h>, K_g = sum over output layers of X_g X_g^T (X column-centered), is
  the engine's (``interactions_from_activations`` on the concatenation; for conv groups
  accumulated layer by layer with batched per-channel Grams instead of concatenating), and
  the greedy pass over it is ``fast_greedy_from_interactions``, step for step the literal
  loop (``reference_greedy``).
- Removal order -> importance: the greedy runs over all n channels of the group; the channel
  removed at step t (0-based) gets importance v_t, strictly increasing in t. Any pruner that
  removes the k lowest (local pruning) therefore removes exactly the greedy's first k, and a
  threshold on v (global pruning) removes a prefix of each group's order: the conditional
  greedy is preserved either way.
- Global pruning rule: v_t is the CKA loss 1 - CKA(group output, group output with the first
  t + 1 channels of the order removed), made strictly increasing along the order (a running
  maximum, nudged up by one float64 ulp where equal). CKA is invariant to the number of
  columns and to isotropic scaling, so a loss of 0.05 means the same share of a group's
  representation lost in a 16-channel group as in a 64-channel one; the global threshold
  takes channels where the least of their own group's representation is lost.

A group whose outputs do not vary over the scoring samples has no CKA: the importance gives
None, which Torch-Pruning takes as "leave this group alone" (as the masked path leaves such a
layer alone), and the pass records the group as skipped (``NO_VARIATION``).

Scoring samples: call :meth:`CKAImportance.record` with the model and inputs before each
pruner step (Torch-Pruning's Taylor importance likewise needs ``loss.backward()`` first).
Groups whose output layers are not Conv2d/Linear (with BatchNorm), or grouped convolutions,
raise a one-line :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from lib.cka import center_gram
from src.errors import UserError
from src.pruning.greedy import (DEFAULT_MEMORY_BYTES, choose_route, fast_greedy_from_interactions,
                                interactions_from_activations, reference_greedy)

# Torch-Pruning's pruning functions of Conv2d/Linear layers by role. (A normalisation layer's
# in- and out-channel functions are one and the same, so norms are told apart by type.)
OUTPUT_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)
CONSUMER_FNS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels, tp.prune_linear_in_channels)
NO_VARIATION = "no variation on the scoring samples (CKA undefined); group left alone"


@dataclass(frozen=True)
class GroupScore:
    """The last scoring of a group: channel positions in greedy order, CKA after each removal."""

    order: tuple[int, ...]
    cka: tuple[float, ...] | None  # None when the group's outputs do not vary (no order: left alone)


@dataclass(frozen=True)
class _OutputLayer:
    module: nn.Module
    channels: list[int]   # the module's output channels in the group
    positions: list[int]  # their positions in the group's importance vector


def _parameterised(module: object) -> bool:
    return isinstance(module, nn.Parameter) or (
        isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)))


def _monotone_importance(order: list[int], cka: list[float], n: int) -> torch.Tensor:
    """(n,) float64 importance: the CKA loss after each removal, strictly increasing along ``order``."""
    values = np.empty(n)
    previous = -np.inf
    for channel, score in zip(order, cka):
        previous = max(1.0 - score, np.nextafter(previous, np.inf))
        values[channel] = previous
    return torch.from_numpy(values)


class CKAImportance(tp.importance.Importance):
    """Torch-Pruning importance from the exact greedy CKA pass over a group's output layers.

    engine: 'fast' (closed form; linear kernel) or 'reference' (the literal loop, re-running
    each output layer on its recorded input with the candidate channels' weights zeroed).
    kernel 'rbf' always runs the reference engine (:attr:`engine` is the one that runs).
    debiased: unbiased HSIC. After each call, ``scores[root module]`` holds the group's
    :class:`GroupScore`.
    """

    def __init__(self, engine: str = "fast", kernel: str = "linear", debiased: bool = False):
        self.fast = engine == "fast" and kernel == "linear"
        self.kernel = kernel
        self.debiased = debiased
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.names: dict[nn.Module, str] = {}
        self.shapes: dict[nn.Module, tuple[int, ...]] = {}  # weight shapes when recorded
        self.scores: dict[nn.Module, GroupScore] = {}

    @torch.no_grad()
    def record(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> None:
        """Record every Conv2d/Linear layer's output (and input, for the reference engine) on
        ``inputs`` (N, ...), in eval mode, replacing earlier recordings."""
        self.names = {module: name for name, module in model.named_modules()}
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        outputs: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}
        inputs_seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

        def hook(module, args, output):
            # A copy: the model may change the output in place later (Conv2d -> ReLU(inplace=True)).
            outputs[module].append(output.detach().to("cpu", copy=True))
            if not self.fast:
                inputs_seen[module].append(args[0].detach().to("cpu", copy=True))

        handles = [m.register_forward_hook(hook) for m in layers]
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        self.shapes = {m: tuple(m.weight.shape) for m in layers}
        # One batch (the common case) is kept as it is: concatenating would copy every output.
        self.outputs = {m: v[0] if len(v) == 1 else torch.cat(v) for m, v in outputs.items() if v}
        self.inputs = {m: v[0] if len(v) == 1 else torch.cat(v) for m, v in inputs_seen.items() if v}

    @property
    def engine(self) -> str:
        return "fast" if self.fast else "reference"

    def _name(self, module: object) -> str:
        return self.names.get(module, type(module).__name__)

    def output_layers(self, group: tp.Group) -> list[_OutputLayer]:
        """The group's Conv2d/Linear layers whose output channels it removes, with channel maps."""
        root = group[0].dep.target.module
        position = {r: j for j, r in enumerate(group[0].root_idxs)}
        layers = []
        for item in group:
            dep, idxs = item.dep, list(item.idxs)
            module, fn = dep.target.module, dep.handler
            if fn in OUTPUT_FNS and isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Conv2d) and module.groups not in (1, module.out_channels):
                    raise UserError(f"model: the Torch-Pruning group of {self._name(root)} contains the grouped "
                                    f"convolution {self._name(module)}, which the CKA importance does not support")
                if any(r is None for r in item.root_idxs):
                    raise UserError(f"model: the Torch-Pruning group of {self._name(root)} maps channels of "
                                    f"{self._name(module)} to no root channel; the CKA importance cannot score it")
                layers.append(_OutputLayer(module, idxs, [position[r] for r in item.root_idxs]))
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) or not _parameterised(module):
                continue  # a BatchNorm of a constant column is constant; parameterless ops follow
            elif fn in CONSUMER_FNS and isinstance(module, (nn.Conv2d, nn.Linear)):
                continue  # the next layers' inputs
            else:
                raise UserError(f"model: the Torch-Pruning group of {self._name(root)} contains {self._name(module)} "
                                f"({type(module).__name__}); the CKA importance handles groups of Conv2d, Linear "
                                "and BatchNorm layers only")
        if not layers:
            raise UserError(f"model: the Torch-Pruning group of {self._name(root)} removes no Conv2d or Linear "
                            "output channels; the CKA importance cannot score it")
        return layers

    def _recorded(self, layer: _OutputLayer) -> torch.Tensor:
        y = self.outputs.get(layer.module)
        stale = self.shapes.get(layer.module) != tuple(layer.module.weight.shape)  # pruned since recording
        if y is None or stale or (not self.fast and layer.module not in self.inputs):
            raise ValueError(f"CKAImportance: no current recording of {self._name(layer.module)}; "
                             "call record(model, inputs) before each pruner step")
        if isinstance(layer.module, nn.Linear) and y.dim() != 2:
            raise UserError(f"model: the Linear layer {self._name(layer.module)} gives outputs of shape "
                            f"{list(y.shape)}; the CKA importance scores (N, features) outputs only")
        return y

    @staticmethod
    def _columns(y: torch.Tensor, channels: list[int]) -> torch.Tensor:
        """(N, len(channels) * P) float64: the channels' columns, channel-major (P positions each)."""
        return y[:, channels].reshape(len(y), -1).double()

    def representation(self, group: tp.Group) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The group's representation X (N, D) and, per channel position, its column indices."""
        layers = self.output_layers(group)
        n = len(group[0].idxs)
        blocks, columns, offset = [], [[] for _ in range(n)], 0
        for layer in layers:
            block = self._columns(self._recorded(layer), layer.channels)
            per_channel = block.shape[1] // len(layer.channels)
            for t, pos in enumerate(layer.positions):
                columns[pos].append(np.arange(offset + t * per_channel, offset + (t + 1) * per_channel))
            blocks.append(block)
            offset += block.shape[1]
        return torch.cat(blocks, dim=1), [np.concatenate(c) for c in columns]

    def recompute(self, group: tp.Group, removed: list[int]) -> torch.Tensor:
        """X with the ``removed`` channel positions' weights really zeroed in every output layer."""
        blocks = []
        for layer in self.output_layers(group):
            weight = layer.module.weight.detach().clone()
            weight[[c for c, pos in zip(layer.channels, layer.positions) if pos in removed]] = 0.0
            params = {"weight": weight}
            if layer.module.bias is not None:
                params["bias"] = layer.module.bias.detach()
            with torch.no_grad():
                y = torch.func.functional_call(layer.module, params, (self.inputs[layer.module],))
            blocks.append(self._columns(y, layer.channels))
        return torch.cat(blocks, dim=1)

    def _selected(self, layer: _OutputLayer) -> torch.Tensor:
        """The layer's recorded output restricted to its channels in the group (no copy if all)."""
        y = self._recorded(layer)
        return y if layer.channels == list(range(y.shape[1])) else y[:, layer.channels]

    def interactions(self, group: tp.Group) -> np.ndarray:
        """The fast engine's interaction matrix M (n, n) of the group's representation.

        Gram route (``choose_route``), when the n per-channel Grams (n, N, N) fit in memory:
        K_g = sum over output layers of X_g X_g^T from batched products of each layer's
        column-centered channels (N, P); M = F F^T, F the (n, N^2) flattened Grams
        (U-centered for debiased). Otherwise ``interactions_from_activations`` on the
        concatenation.
        """
        layers = self.output_layers(group)
        n = len(group[0].idxs)
        samples = len(self._recorded(layers[0]))
        width = sum(len(l.channels) * self._recorded(l)[0, 0].numel() for l in layers)
        route = choose_route(samples, width, n, self.debiased)
        if route == "covariance" or 8 * n * samples**2 > DEFAULT_MEMORY_BYTES:
            x, columns = self.representation(group)
            return interactions_from_activations(x.numpy(), columns, debiased=self.debiased, route=route)
        grams = torch.zeros(n, samples, samples, dtype=torch.float64)
        for layer in layers:
            y = self._selected(layer)
            k = len(layer.channels)
            z = torch.empty(k, samples, y[0].numel() // k, dtype=torch.float64)
            z.copy_(y.reshape(samples, k, -1).transpose(0, 1))  # (k, N, P)
            z -= z.mean(dim=1, keepdim=True)  # centered over samples
            if layer.positions == list(range(n)):
                grams.baddbmm_(z, z.transpose(1, 2))
            else:
                grams[torch.tensor(layer.positions)] += torch.bmm(z, z.transpose(1, 2))
        flat = grams.reshape(n, -1)
        if self.debiased:
            flat = torch.from_numpy(np.stack([center_gram(k.reshape(samples, samples), unbiased=True).ravel()
                                              for k in flat.numpy()]))
        return torch.mm(flat, flat.T).numpy()

    def _varies(self, layers: list[_OutputLayer]) -> bool:
        """Whether the group's outputs vary across the scoring samples."""
        return any(bool((y != y[:1]).any()) for y in map(self._selected, layers))

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        root = group[0].dep.target.module
        layers = self.output_layers(group)
        n = len(group[0].idxs)
        if len({pos for layer in layers for pos in layer.positions}) != n:
            raise UserError(f"model: a channel of the Torch-Pruning group of {self._name(root)} appears in no "
                            "Conv2d/Linear output; the CKA importance cannot score it")
        if not self._varies(layers):  # CKA undefined: no importance, the group is left alone
            self.scores[root] = GroupScore((), None)
            return None
        if self.fast:
            order, cka = fast_greedy_from_interactions(self.interactions(group), n)
        else:
            x, _ = self.representation(group)
            order, cka = reference_greedy(x.numpy(), lambda removed: self.recompute(group, removed), n, n,
                                          kernel=self.kernel, debiased=self.debiased)
        self.scores[root] = GroupScore(tuple(order), tuple(cka))
        return _monotone_importance(order, cka, n)


def baseline_importance(name: str) -> tp.importance.Importance:
    """Torch-Pruning's importance for a ``TP_CRITERIA`` name (src.config).

    tp_l1: group L1 norm (MagnitudeImportance(p=1), mean over the group's layers, mean-normalised);
    tp_bn: BatchNorm scale |gamma| (BNScaleImportance, network slimming); tp_taylor: first-order
    Taylor |w * dL/dw| (TaylorImportance; needs gradients); tp_random: RandomImportance.
    """
    return {
        "tp_l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "tp_bn": tp.importance.BNScaleImportance,
        "tp_taylor": tp.importance.TaylorImportance,
        "tp_random": tp.importance.RandomImportance,
    }[name]()
