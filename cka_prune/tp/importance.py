"""CKA as a Torch-Pruning importance: the exact greedy CKA pass over what a group removes.

Torch-Pruning (DepGraph) prunes *groups*: every layer coupled to a root layer's output
channels, e.g. in a ResNet stage the stem conv, each block's second conv, their BatchNorms,
the residual additions and the next layers' inputs. Channel c of a group is removed from all
of them at once. An importance maps a group to one score per channel, or to None, which
Torch-Pruning takes as "leave this group alone"; the pruner removes the lowest scores.

:class:`CKAImportance` scores a group by the exact greedy CKA pass of ``cka_prune.greedy``:

- Representation preserved: the concatenated outputs, on the scoring samples, of every
  Conv2d/Linear layer whose output channels the group removes ("output layers"; for a
  ResNet stage group: the stem conv and every block's second conv and shortcut projection
  of that stage), each from its recorded input. Channel c of the group = the union of its
  columns in every output layer (a conv channel owns its H*W columns).
- Samples (the rows): one per input image for a Conv2d; for a Linear, one per position of
  its output's leading dimensions, so a Linear on tokens (B, T, D) gives B*T rows (tokens as
  samples: a transformer block's MLP hidden units are scored this way). At most
  ``max_samples`` rows are kept, the same seeded subset for every layer with the same number
  of rows. A module called several times (shared weights) contributes every call: each call
  is one more output of the group, on the same samples (channel c owns its columns in every
  call), so a shared layer can sit in a group beside layers called once.
- Why the fast engine stays exact: zeroing channel c's weights in every output layer makes
  exactly c's columns constant (the bias) and leaves every other column unchanged, since each
  output layer is evaluated on its recorded input. Centered linear CKA ignores constant
  columns, so removing a set S of channels from the group = zeroing the columns of S in the
  concatenation: the column groups the fast engine already takes. The interaction matrix
  M[g, h] = <K_g, K_h>, K_g = sum over output layers of X_g X_g^T (X column-centered), is
  the engine's (``cka_prune.channel_interactions``: from the layers' blocks by the
  cross-covariances or the per-channel Grams, whichever is cheaper), and
  the greedy pass over it is ``fast_greedy_from_interactions``, step for step the literal
  loop (``reference_greedy``).
- Removal order -> importance: the greedy runs over all n channels of the group; the channel
  removed at step t (0-based) gets importance v_t = 1 - CKA(group output, group output with
  the first t + 1 channels of the order removed), made strictly increasing along the order
  (a running maximum, nudged up by one float64 ulp where equal). A pruner that removes the k
  lowest (local pruning) therefore removes exactly the greedy's first k.
- Global pruning: a threshold on the importances of all groups removes a prefix of each
  group's greedy order, so the conditional greedy is preserved. With ``normalizer=None`` the
  threshold compares CKA losses: CKA is invariant to the number of columns and to isotropic
  scaling, so a loss of 0.05 is the same share of a 16- or a 64-channel group's
  representation, and the threshold takes channels where the least of their own group's
  representation is lost. Torch-Pruning's own importances are normalised per group (its
  ``MagnitudeImportance`` divides by the group's mean by default); to rank CKA in one global
  pool with them, give the same ``normalizer`` ('mean', 'max', 'sum', 'standarization',
  'gaussian' or a callable, as Torch-Pruning defines them): each group's loss curve is then
  rescaled the same way. Every normaliser is increasing, so each group's order is kept. The
  values stay cumulative (the loss after removing a channel and every channel before it in
  its group's order), not one channel's own effect as a magnitude is: in a shared ranking a
  CKA group's first channels, whose removal costs almost nothing, go before the others.

Groups it cannot score get None and one warning naming the group's root layer and why
(:attr:`CKAImportance.skipped` keeps the reason): groups containing parameterised layers
other than Conv2d, Linear and BatchNorm (LayerNorm, GroupNorm, ``nn.MultiheadAttention``:
attention heads are not scored), grouped (not depthwise) convolutions, output layers with
different numbers of samples, fewer than 2 samples (4 debiased), and outputs that do not vary
over the samples (``NO_VARIATION``: CKA is undefined).

Scoring samples: call :meth:`CKAImportance.record` with the model and inputs before each
pruner step (Torch-Pruning's Taylor importance likewise needs ``loss.backward()`` first).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.channel_interactions import PRECISIONS, ChannelBlock, channel_interactions
from cka_prune.checks import NO_VARIATION
from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.reference import reference_greedy
from cka_prune.tp.groups import OUTPUT_FNS, OutputLayer, Skip, module_name, output_layers
from cka_prune.tp.recording import channels_last_positions, record_layers

NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")
Normalizer = str | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class GroupScore:
    """The last scoring of a group: channel positions in greedy order, CKA after each removal."""

    order: tuple[int, ...]
    cka: tuple[float, ...] | None  # None when the group was left alone (no order)


def _monotone_importance(order: list[int], cka: list[float], n: int) -> torch.Tensor:
    """(n,) float64 importance: the CKA loss after each removal, strictly increasing along ``order``."""
    values = np.empty(n)
    previous = -np.inf
    for channel, score in zip(order, cka):
        previous = max(1.0 - score, np.nextafter(previous, np.inf))
        values[channel] = previous
    return torch.from_numpy(values)


def normalize(importance: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    """A group's importance rescaled as Torch-Pruning's importances do (``normalizer`` as theirs)."""
    if normalizer is None:
        return importance
    if callable(normalizer):
        return normalizer(importance)
    return {
        "mean": lambda v: v / v.mean(),
        "max": lambda v: v / v.max(),
        "sum": lambda v: v / v.sum(),
        "standarization": lambda v: (v - v.min()) / (v.max() - v.min() + 1e-8),
        "gaussian": lambda v: (v - v.mean()) / (v.std() + 1e-8),
    }[normalizer](importance)


class CKAImportance(tp.importance.Importance):
    """Torch-Pruning importance from the exact greedy CKA pass over a group's output layers.

    engine: 'fast' (closed form; linear kernel) or 'reference' (the literal loop, re-running
    each output layer, on its own device, on its recorded input with the candidate channels'
    weights zeroed). kernel 'rbf' always runs the reference engine (:attr:`engine` is the one
    that runs). debiased: unbiased HSIC. normalizer: as Torch-Pruning's importances (module
    docstring, global pruning). max_samples: the most rows scored per layer (None: all).
    precision: the fast engine's products, 'float64' (exact) or 'float32' (about twice as fast,
    biased only; its agreement with float64 is measured in docs/benchmarks.md). After each call, ``scores[root module]`` holds the group's :class:`GroupScore`, and
    ``skipped[root module]`` the reason for a group left alone.
    """

    def __init__(self, engine: str = "fast", kernel: str = "linear", debiased: bool = False,
                 normalizer: Normalizer = None, max_samples: int | None = 4096, precision: str = "float64"):
        if engine not in ("fast", "reference") or kernel not in ("linear", "rbf"):
            raise ValueError(f"CKAImportance: engine must be 'fast' or 'reference' and kernel 'linear' or 'rbf', "
                             f"got {engine!r}, {kernel!r}")
        if not callable(normalizer) and normalizer not in NORMALIZERS:
            raise ValueError(f"CKAImportance: normalizer must be one of {NORMALIZERS} or a callable, got {normalizer!r}")
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"CKAImportance: max_samples must be >= 2 or None, got {max_samples!r}")
        self.fast = engine == "fast" and kernel == "linear"
        self.kernel = kernel
        if precision not in PRECISIONS or (debiased and precision != "float64"):
            raise ValueError(f"CKAImportance: precision must be one of {PRECISIONS} ('float32' with debiased=False), "
                             f"got {precision!r}")
        self.debiased = debiased
        self.precision = precision
        self.normalizer = normalizer
        self.max_samples = max_samples
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {}  # per call (reference engine)
        self.unequal: set[nn.Module] = set()  # recorded layers whose calls gave different numbers of rows
        self.names: dict[nn.Module, str] = {}
        self.shapes: dict[nn.Module, tuple[int, ...]] = {}  # weight shapes when recorded
        self.scores: dict[nn.Module, GroupScore] = {}
        self.skipped: dict[nn.Module, str] = {}

    @property
    def engine(self) -> str:
        return "fast" if self.fast else "reference"

    @torch.no_grad()
    def record(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024, *,
               pruner: tp.pruner.BasePruner | None = None) -> None:
        """Record the scoring samples: run ``inputs`` (N, ...) through ``model`` in eval mode in
        batches, replacing earlier recordings.

        Holds, on the CPU, for each output layer of the groups ``pruner`` will score (with no
        pruner: every Conv2d/Linear layer), its outputs on ``inputs`` as (rows, channels,
        positions x calls) (rows as in the module docstring, at most ``max_samples``), and for
        the reference engine its inputs of every call too; ignored layers are not recorded.
        """
        self.names = {module: name for name, module in model.named_modules()}
        layers = self._layers_to_record(model, pruner)

        def forward(new_batch):
            for start in range(0, len(inputs), batch_size):
                new_batch()
                model(inputs[start:start + batch_size])

        recording = record_layers(model, layers, forward, not self.fast, self.max_samples)
        self.outputs, self.inputs = recording.outputs, recording.inputs
        self.unequal, self.shapes = recording.unequal, recording.shapes

    def _layers_to_record(self, model: nn.Module, pruner: tp.pruner.BasePruner | None) -> list[nn.Module]:
        if pruner is None:
            return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        needed = {item.dep.target.module
                  for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                        root_module_types=pruner.root_module_types)
                  for item in group
                  if item.dep.handler in OUTPUT_FNS and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))}
        return [m for m in model.modules() if m in needed]

    def _name(self, module: object, group: tp.Group | None = None) -> str:
        return module_name(module, self.names, group)

    def output_layers(self, group: tp.Group) -> list[OutputLayer]:
        """The group's output layers with channel maps (:func:`cka_prune.tp.groups.output_layers`)."""
        return output_layers(group, self.names)

    def _recorded(self, layer: OutputLayer) -> torch.Tensor:
        if layer.module in self.unequal:
            raise Skip(f"the calls of {self._name(layer.module)} gave different numbers of samples")
        y = self.outputs.get(layer.module)
        stale = self.shapes.get(layer.module) != tuple(layer.module.weight.shape)  # pruned since recording
        if y is None or stale or (not self.fast and layer.module not in self.inputs):
            raise ValueError(f"CKAImportance: no current recording of {self._name(layer.module)}; "
                             "call record(model, inputs, pruner=pruner) before each pruner step")
        return y

    def _samples(self, layers: list[OutputLayer]) -> int:
        """The group's number of samples (rows); :class:`Skip` unless every output layer has the
        same number and there are enough for CKA."""
        rows = {self._name(layer.module): len(self._recorded(layer)) for layer in layers}
        if len(set(rows.values())) > 1:
            raise Skip(f"its output layers have different numbers of samples ({rows})")
        samples, least = next(iter(rows.values())), 4 if self.debiased else 2
        if samples < least:
            raise Skip(f"{samples} scoring sample(s); CKA needs at least {least}")
        return samples

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
        """X with the ``removed`` channel positions' weights really zeroed in every output layer,
        each layer re-run on its own device."""
        blocks = []
        for layer in self.output_layers(group):
            weight = layer.module.weight.detach().clone()
            weight[[c for c, pos in zip(layer.channels, layer.positions) if pos in removed]] = 0.0
            params = {"weight": weight}
            if layer.module.bias is not None:
                params["bias"] = layer.module.bias.detach()
            with torch.no_grad():
                y = torch.cat([channels_last_positions(torch.func.functional_call(
                    layer.module, params, (x.to(weight.device),)).cpu()) for x in self.inputs[layer.module]], dim=2)
            blocks.append(self._columns(y, layer.channels))
        return torch.cat(blocks, dim=1)

    def _selected(self, layer: OutputLayer) -> torch.Tensor:
        """The layer's recorded output restricted to its channels in the group (no copy if all)."""
        y = self._recorded(layer)
        return y if layer.channels == list(range(y.shape[1])) else y[:, layer.channels]

    def interactions(self, group: tp.Group) -> np.ndarray:
        """The fast engine's interaction matrix M (n, n) of the group's representation: each
        output layer's recorded channels one block (``cka_prune.channel_interactions``)."""
        blocks = [ChannelBlock(self._selected(layer), layer.positions) for layer in self.output_layers(group)]
        return channel_interactions(blocks, len(group[0].idxs), debiased=self.debiased, precision=self.precision)

    def _varies(self, layers: list[OutputLayer]) -> bool:
        """Whether the group's outputs vary across the scoring samples."""
        return any(bool((y != y[:1]).any()) for y in map(self._selected, layers))

    def _skip(self, group: tp.Group, reason: str) -> None:
        root = group[0].dep.target.module
        self.scores[root] = GroupScore((), None)
        self.skipped[root] = reason
        warnings.warn(f"CKAImportance: the group of {self._name(root, group)} is left alone: {reason}",
                      UserWarning, stacklevel=4)

    def _greedy(self, group: tp.Group, n: int) -> tuple[list[int], list[float]]:
        try:
            if self.fast:
                return fast_greedy_from_interactions(self.interactions(group), n)
            x, _ = self.representation(group)
            return reference_greedy(x.numpy(), lambda removed: self.recompute(group, removed), n, n,
                                    kernel=self.kernel, debiased=self.debiased)
        except ValueError as err:  # CKA undefined on these samples: debiased self-similarity <= 0
            raise Skip(str(err)) from err

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        root = group[0].dep.target.module
        self.skipped.pop(root, None)
        n = len(group[0].idxs)
        try:
            layers = self.output_layers(group)
            self._samples(layers)
            if not self._varies(layers):
                raise Skip(NO_VARIATION)
            order, cka = self._greedy(group, n)
        except Skip as skip:
            self._skip(group, str(skip))
            return None
        self.scores[root] = GroupScore(tuple(order), tuple(cka))
        return normalize(_monotone_importance(order, cka, n), self.normalizer)
