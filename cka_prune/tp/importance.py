"""CKA as a Torch-Pruning importance: the exact greedy CKA pass over what a group removes.

Torch-Pruning (DepGraph) prunes *groups*: every layer coupled to a root layer's output
channels, e.g. in a ResNet stage the stem conv, each block's second conv, their BatchNorms,
the residual additions and the next layers' inputs. Channel c of a group is removed from all
of them at once. An importance maps a group to one score per channel, or to None, which
Torch-Pruning takes as "leave this group alone"; the pruner removes the lowest scores.

:class:`CKAImportance` scores a group by the exact greedy CKA pass of ``cka_prune.greedy``:

- Representation preserved: the concatenated recorded tensors of the group's sites
  (:mod:`cka_prune.tp.plan`): by default the outputs, on the scoring samples, of every
  Conv2d/Linear layer whose output channels the group removes ("output layers"; for a
  ResNet stage group: the stem conv and every block's second conv and shortcut projection
  of that stage), each from its recorded input; in a transformer what the next layer reads
  (an MLP's down projection's input, an attention's output projection's input, with heads
  as units). Unit u of the group (a channel, or a head) = the union of its columns in every
  site (a conv channel owns its H*W columns).
- Samples (the rows): :mod:`cka_prune.tp.recording` (images for a Conv2d, tokens otherwise,
  padding tokens excluded; at most ``max_samples``, the same seeded rows for every site with
  the same rows per batch). A module called several times (shared weights) contributes every
  call: each call is one more output of the group, on the same samples (channel c owns its
  columns in every call), so a shared layer can sit in a group beside layers called once.
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

Groups it cannot score get None and one warning naming the group's root layer and its layers
and why (:attr:`CKAImportance.skipped` keeps the reason under the group's :class:`GroupKey`):
groups containing parameterised layers other than Conv2d, Linear and BatchNorm (GroupNorm,
``nn.MultiheadAttention``), a residual stream unless ``residual='cka'``, attention heads
unless the pruner removes whole heads, grouped (not depthwise) convolutions, sites with
different numbers of samples, fewer than 2 samples (4 debiased), and outputs that do not vary
over the samples (``NO_VARIATION``: CKA is undefined).

Scoring samples: run the model inside :meth:`CKAImportance.recording` (or call
:meth:`CKAImportance.record` with inputs) before each pruner step (Torch-Pruning's Taylor
importance likewise needs ``loss.backward()`` first).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.channel_interactions import PRECISIONS, ChannelBlock, channel_interactions
from cka_prune.checks import NO_VARIATION
from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.reference import reference_greedy
from cka_prune.tp.groups import GroupKey, Site, Skip, Tap, group_key, module_name, output_modules
from cka_prune.tp.plan import RESIDUAL, HeadPruning, Plan, is_norm, plan
from cka_prune.tp.recording import MaskFrom, Recorder, Recording, batches, channels_last_positions, weight_shape
from cka_prune.tp.transformers import Blocks, check_no_conv1d, find_blocks

NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")
Normalizer = str | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class GroupScore:
    """The last scoring of a group: units (channels or heads) in greedy order, CKA after each removal."""

    order: tuple[int, ...]
    cka: tuple[float, ...] | None  # None when the group was left alone (no order)


def monotone_importance(order: list[int], cka: list[float], units: list[list[int]], n: int) -> torch.Tensor:
    """(n,) float64 importance: the CKA loss after each removal, strictly increasing along ``order``,
    every position of a unit given the unit's value."""
    values = np.empty(n)
    previous = -np.inf
    for unit, score in zip(order, cka):
        previous = max(1.0 - score, np.nextafter(previous, np.inf))
        values[units[unit]] = previous
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
    """Torch-Pruning importance from the exact greedy CKA pass over a group's sites.

    engine: 'fast' (closed form; linear kernel) or 'reference' (the literal loop, re-running
    each output layer, on its own device, on its recorded input with the candidate channels'
    weights zeroed; a read site's removed columns zeroed). kernel 'rbf' always runs the
    reference engine (:attr:`engine` is the one that runs). debiased: unbiased HSIC.
    normalizer: as Torch-Pruning's importances (module docstring, global pruning).
    max_samples: the most rows kept per site (None: all). residual: 'skip' (residual streams
    left alone) or 'cka' (scored at their norms' inputs, :mod:`cka_prune.tp.plan`).
    precision: the fast engine's products, 'float64' (exact) or 'float32' (faster, biased
    only; its agreement with float64 is measured in docs/benchmarks.md).
    After each call, ``scores[key]`` holds the group's :class:`GroupScore` and ``skipped[key]``
    the reason for a group left alone, ``key = imp.key(group)`` (:class:`GroupKey`).
    """

    def __init__(self, engine: str = "fast", kernel: str = "linear", debiased: bool = False,
                 normalizer: Normalizer = None, max_samples: int | None = 4096, residual: str = "skip",
                 precision: str = "float64"):
        if engine not in ("fast", "reference") or kernel not in ("linear", "rbf"):
            raise ValueError(f"CKAImportance: engine must be 'fast' or 'reference' and kernel 'linear' or 'rbf', "
                             f"got {engine!r}, {kernel!r}")
        if not callable(normalizer) and normalizer not in NORMALIZERS:
            raise ValueError(f"CKAImportance: normalizer must be one of {NORMALIZERS} or a callable, got {normalizer!r}")
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"CKAImportance: max_samples must be >= 2 or None, got {max_samples!r}")
        if residual not in RESIDUAL:
            raise ValueError(f"CKAImportance: residual must be one of {RESIDUAL}, got {residual!r}")
        if precision not in PRECISIONS or (debiased and precision != "float64"):
            raise ValueError(f"CKAImportance: precision must be one of {PRECISIONS} ('float32' with debiased=False), "
                             f"got {precision!r}")
        self.fast = engine == "fast" and kernel == "linear"
        self.kernel = kernel
        self.debiased = debiased
        self.precision = precision
        self.normalizer = normalizer
        self.max_samples = max_samples
        self.residual = residual
        self.recorded = Recording({}, {}, set(), {})
        self.blocks = Blocks((), ())
        self.heads = HeadPruning.of(None)
        self.names: dict[nn.Module, str] = {}
        self.scores: dict[GroupKey, GroupScore] = {}
        self.skipped: dict[GroupKey, str] = {}

    @property
    def engine(self) -> str:
        return "fast" if self.fast else "reference"

    @property
    def outputs(self) -> dict[nn.Module, torch.Tensor]:
        """The recorded outputs of output layers, by module."""
        return {tap.module: y for tap, y in self.recorded.outputs.items() if not tap.reads}

    @property
    def inputs(self) -> dict[nn.Module, list[torch.Tensor]]:
        """The recorded inputs of output layers, per call (reference engine)."""
        return self.recorded.inputs

    @contextlib.contextmanager
    def recording(self, model: nn.Module, *, pruner: tp.pruner.BasePruner | None = None,
                  mask_from: MaskFrom = "attention_mask") -> Iterator[None]:
        """Record the scoring samples of every model call made inside, replacing earlier recordings::

            with imp.recording(model, pruner=pruner):
                for batch in loader:
                    model(**batch)

        Runs in eval mode without gradients. Keeps, on the CPU, each site of the groups
        ``pruner`` will score (with no pruner: every Conv2d/Linear output and transformer
        read site), at most ``max_samples`` rows (:mod:`cka_prune.tp.recording`); ignored
        layers are not recorded. mask_from: the keyword argument (or key of a dict first
        argument) holding a (B, T) mask of the tokens to keep, e.g. 'attention_mask' (padding
        excluded), or a function (args, kwargs) -> mask; None: every token.
        """
        check_no_conv1d(model)
        self.names = {module: name for name, module in model.named_modules()}
        self.blocks = find_blocks(model)
        self.heads = HeadPruning.of(pruner)
        recorder = Recorder(model, self._taps(model, pruner), not self.fast, self.max_samples, mask_from)
        with recorder:
            yield
        self.recorded = recorder.result()

    def record(self, model: nn.Module, inputs: object, batch_size: int = 1024, *,
               pruner: tp.pruner.BasePruner | None = None, mask_from: MaskFrom = "attention_mask") -> None:
        """Record ``inputs`` (a tensor (N, ...), a tuple of them, or a dict/``BatchEncoding`` of
        keyword arguments) run through ``model`` in batches: :meth:`recording` around
        ``model(*args)`` / ``model(**kwargs)``."""
        with self.recording(model, pruner=pruner, mask_from=mask_from):
            for args, kwargs in batches(inputs, batch_size):
                model(*args, **kwargs)

    def _taps(self, model: nn.Module, pruner: tp.pruner.BasePruner | None) -> list[Tap]:
        if pruner is None:
            taps = [Tap(m, False) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            taps += [Tap(a.out, True) for a in self.blocks.attentions] + [Tap(m.down, True) for m in self.blocks.mlps]
            return taps + [Tap(m, True) for m in model.modules() if is_norm(m) and self.residual == "cka"]
        taps = {}
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
            attention = self.blocks.attention_of(output_modules(group))
            if attention is not None:  # the pruner scores it re-rooted at the output projection's input
                taps[Tap(attention.out, True)] = None
                continue
            try:
                taps.update(dict.fromkeys(site.tap for site in self.plan(group).sites))
            except Skip:
                continue  # said when the group is scored
        return list(taps)

    def key(self, group: tp.Group) -> GroupKey:
        """The group's key in :attr:`scores` and :attr:`skipped`."""
        return group_key(group, self.names)

    def _name(self, module: object, group: tp.Group | None = None) -> str:
        return module_name(module, self.names, group)

    def plan(self, group: tp.Group) -> Plan:
        """The group's sites and units (:func:`cka_prune.tp.plan.plan`); :class:`Skip` if left alone."""
        found = plan(group, self.names, self.blocks, self.heads, self.residual)
        if sorted(p for unit in found.units for p in unit) != list(range(len(group[0].idxs))) or (
                len({p for site in found.sites for p in site.positions}) != len(group[0].idxs)):
            raise Skip("a channel of it appears in none of its scored tensors")
        return found

    def _recorded(self, site: Site) -> torch.Tensor:
        tap = site.tap
        if tap in self.recorded.unequal:
            raise Skip(f"the calls of {self._name(tap.module)} gave different numbers of samples")
        y = self.recorded.outputs.get(tap)
        stale = self.recorded.shapes.get(tap.module) != weight_shape(tap.module)  # pruned since recording
        if y is None or stale or (not self.fast and not tap.reads and tap.module not in self.recorded.inputs):
            raise ValueError(f"CKAImportance: no current recording of {self._name(tap.module)}; "
                             "call record(model, inputs, pruner=pruner) before each pruner step")
        return y

    def _samples(self, sites: list[Site]) -> int:
        """The group's number of samples (rows); :class:`Skip` unless every site has the same
        number and there are enough for CKA."""
        rows = {self._name(site.tap.module): len(self._recorded(site)) for site in sites}
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

    def _representation(self, found: Plan, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[np.ndarray]]:
        position_columns = [[] for _ in range(sum(map(len, found.units)))]
        blocks, offset = [], 0
        for site, y in zip(found.sites, tensors):
            block = self._columns(y, site.channels)
            per_channel = block.shape[1] // len(site.channels)
            for t, pos in enumerate(site.positions):
                position_columns[pos].append(np.arange(offset + t * per_channel, offset + (t + 1) * per_channel))
            blocks.append(block)
            offset += block.shape[1]
        columns = [np.concatenate([c for p in unit for c in position_columns[p]]) for unit in found.units]
        return torch.cat(blocks, dim=1), columns

    def representation(self, group: tp.Group) -> tuple[torch.Tensor, list[np.ndarray]]:
        """The group's representation X (N, D) and, per unit, its column indices."""
        found = self.plan(group)
        return self._representation(found, [self._recorded(site) for site in found.sites])

    def _recompute(self, found: Plan, removed: list[int]) -> torch.Tensor:
        """X with the ``removed`` units really removed: an output layer re-run, on its own device,
        with their weights zeroed; a read site's tensor with their columns zeroed."""
        gone = {p for unit in removed for p in found.units[unit]}
        tensors = []
        for site in found.sites:
            dropped = [c for c, pos in zip(site.channels, site.positions) if pos in gone]
            if site.tap.reads:
                y = self._recorded(site).clone()
                y[:, dropped] = 0.0
                tensors.append(y)
                continue
            module = site.tap.module
            weight = module.weight.detach().clone()
            weight[dropped] = 0.0
            params = {"weight": weight}
            if module.bias is not None:
                params["bias"] = module.bias.detach()
            with torch.no_grad():
                tensors.append(torch.cat([channels_last_positions(torch.func.functional_call(
                    module, params, (x.to(weight.device),)).cpu()) for x in self.recorded.inputs[module]], dim=2))
        return self._representation(found, tensors)[0]

    def recompute(self, group: tp.Group, removed: list[int]) -> torch.Tensor:
        """X with the ``removed`` units' weights really zeroed in every output layer (columns in read sites)."""
        return self._recompute(self.plan(group), removed)

    def _selected(self, site: Site) -> torch.Tensor:
        """The site's recorded tensor restricted to its channels in the group (no copy if all)."""
        y = self._recorded(site)
        return y if site.channels == list(range(y.shape[1])) else y[:, site.channels]

    def interactions(self, group: tp.Group) -> np.ndarray:
        """The fast engine's interaction matrix M (u, u) of the group's units.

        Per channel from the sites' recorded blocks (``cka_prune.channel_interactions``), then
        summed over each unit's channels: a unit's K is the sum of its channels' K_c, and both
        <., .>_F and U-centering are linear, so M_units = A M A^T, A the (units, channels)
        indicator (the identity when units are channels).
        """
        found = self.plan(group)
        n = len(group[0].idxs)
        blocks = [ChannelBlock(self._selected(site), site.positions) for site in found.sites]
        m = channel_interactions(blocks, n, debiased=self.debiased, precision=self.precision)
        if found.units == [[c] for c in range(n)]:
            return m
        a = np.zeros((len(found.units), n))
        for u, unit in enumerate(found.units):
            a[u, unit] = 1.0
        return a @ m @ a.T

    def _varies(self, sites: list[Site]) -> bool:
        """Whether the group's tensors vary across the scoring samples."""
        return any(bool((y != y[:1]).any()) for y in map(self._selected, sites))

    def _skip(self, group: tp.Group, reason: str) -> None:
        key = self.key(group)
        self.scores[key] = GroupScore((), None)
        self.skipped[key] = reason
        warnings.warn(f"CKAImportance: the group of {key} is left alone: {reason}", UserWarning, stacklevel=4)

    def _greedy(self, group: tp.Group, found: Plan) -> tuple[list[int], list[float]]:
        n = len(found.units)
        try:
            if self.fast:
                return fast_greedy_from_interactions(self.interactions(group), n)
            x, _ = self._representation(found, [self._recorded(site) for site in found.sites])
            return reference_greedy(x.numpy(), lambda removed: self._recompute(found, removed), n, n,
                                    kernel=self.kernel, debiased=self.debiased)
        except ValueError as err:  # CKA undefined on these samples: debiased self-similarity <= 0
            raise Skip(str(err)) from err

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        key = self.key(group)
        self.skipped.pop(key, None)
        n = len(group[0].idxs)
        try:
            found = self.plan(group)
            self._samples(found.sites)
            if not self._varies(found.sites):
                raise Skip(NO_VARIATION)
            order, cka = self._greedy(group, found)
        except Skip as skip:
            self._skip(group, str(skip))
            return None
        self.scores[key] = GroupScore(tuple(order), tuple(cka))
        return normalize(monotone_importance(order, cka, found.units, n), self.normalizer)
