"""One physical pruning pass through Torch-Pruning, and rebuilding a pruned architecture.

A pass builds Torch-Pruning's dependency graph of the model, then runs its pruner
(``BasePruner``, the class behind ``MetaPruner``) with one importance for ``iterative_steps``
steps to ``ratio``. Channels are removed for real: the model's layers shrink in place, so
retraining and inference get cheaper. Torch-Pruning's step s (1-based) keeps
floor(n0 * (1 - ratio * s / steps)) of a group's n0 initial channels (local pruning), or of
all groups' channels together (global pruning); the classifier's outputs are never pruned.

Global pruning ranks every channel of every group by importance and removes the lowest
``n`` (Torch-Pruning's budget). Torch-Pruning removes every channel whose importance is <= the
n-th lowest, so channels tied with it would be removed on top of the budget; the pruner is
therefore given each channel's rank instead of its importance (ties broken by the groups'
order, then by channel index), which removes exactly ``n`` channels and otherwise the same ones.
(Ranks rather than a tiny offset added to tied importances: an offset below a value's float
resolution would leave the tie, and ranks need no scale.) Each group's most important channel
is ranked after all others: Torch-Pruning silently leaves alone a group it would empty, so a
group is never emptied (as the masked path's global allocation never empties a layer).

A group the importance cannot score (Torch-Pruning's importance gives None: e.g. CKA of outputs
that do not vary, tp_bn of a group without BatchNorm) is left alone, and recorded as skipped.

Each removed set is returned as a :class:`GroupRecord`, with the layers whose input channels
it removed (its consumers, for ``compensate``: :mod:`src.pruning.physical_compensate`). A
pass's ``history`` (Torch-Pruning's pruning history: layer name, output or input, indices; the
group's root only) is plain JSON; replaying the
histories of all passes on a freshly built model (:func:`rebuild`) gives the pruned
architecture, into which a checkpoint's ``state_dict`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.tp import CKAImportance, baseline_importance
from src.errors import UserError, brief


@dataclass(frozen=True)
class GroupRecord:
    """The channels one step removed from one group.

    removed: channel indices of the root layer (numbered as before this step), in removal
        order (lowest importance first; for cka, the greedy order).
    cka: for the cka importance, CKA of the group's representation after each removal; else None.
    skipped: why the group was left alone, when the importance could not score it.
    """

    step: int
    root: str                 # name of the group's root layer
    layers: tuple[str, ...]   # the Conv2d/Linear layers whose output channels were removed
    channels_before: int
    removed: tuple[int, ...]
    cka: tuple[float, ...] | None
    skipped: str | None = None
    consumers: tuple[str, ...] = ()  # the Conv2d/Linear layers whose input channels were removed


@dataclass(frozen=True)
class PassResult:
    groups: tuple[GroupRecord, ...]
    history: list[list[Any]]  # [layer name, output channels?, indices] per pruned group, in order
    engine: str  # what scored the groups: the CKA engine that ran ("fast", "reference") or "torch-pruning"
    # per Conv2d/Linear layer that lost output channels: its channels at the start of the pass
    # that remain, in their order now
    kept_outputs: dict[str, tuple[int, ...]]


class _Logged(tp.importance.Importance):
    """Keeps this step's importance vector of each group's root layer, and the groups it gave none.

    With ranks (:meth:`rank`, global pruning) it answers the pruner with each channel's rank
    among all channels of the step instead of its importance.
    """

    def __init__(self, inner: tp.importance.Importance):
        self.inner = inner
        self.last: dict[nn.Module, torch.Tensor] = {}
        self.unscored: dict[nn.Module, tp.Group] = {}
        self.keys: dict[nn.Module, object] = {}  # CKA's key of the group scored at each root
        self.ranks: dict[nn.Module, torch.Tensor] | None = None

    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        root = group[0].dep.target.module
        if self.ranks is not None:
            return self.ranks.get(root)
        imp = self.inner(group)
        if isinstance(self.inner, CKAImportance):
            self.keys[root] = self.inner.key(group)
        if imp is None:
            self.unscored[root] = group
        else:
            self.last[root] = imp.detach().cpu()
        return imp

    def start_step(self) -> None:
        self.last, self.unscored, self.ranks = {}, {}, None

    def rank(self, groups: list[tp.Group]) -> None:
        """Score ``groups`` now; the pruner then gets the ranks 0, 1, ... of their channels' importances
        over all groups, equal importances ordered by group (as given), then by channel index, and
        each group's most important channel after all the others."""
        for group in groups:
            self(group)
        imps = [self.last[root].double().numpy() for root in self.last]
        if not imps:
            self.ranks = {}
            return
        top = np.concatenate([np.arange(len(imp)) == np.argsort(imp, kind="stable")[-1] for imp in imps])
        flat = np.concatenate(imps)
        order = np.lexsort((np.arange(len(flat)), flat, top))  # last key first: top, importance, position
        ranks = np.empty(len(flat))
        ranks[order] = np.arange(len(flat))
        self.ranks = dict(zip(self.last, torch.from_numpy(ranks).split([len(imp) for imp in imps])))


def classifier(model: nn.Module) -> nn.Linear:
    """The model's output layer: its last ``nn.Linear`` in definition order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"model: {type(model).__name__} has no Linear output layer to keep")
    return linears[-1]


def build_pruner(model: nn.Module, importance: tp.importance.Importance, ratio: float,
                 example_inputs: torch.Tensor, iterative_steps: int = 1, global_pruning: bool = False,
                 ignored_layers: list[nn.Module] | None = None) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner for ``model``; a model it cannot trace is a one-line UserError.

    Tracing follows autograd from the output back: a Conv2d/Linear layer it does not reach
    (e.g. behind a detach or a NumPy round trip) would silently stay unpruned, so it is an error.
    """
    try:
        with torch.enable_grad():  # the dependency graph is traced through autograd
            pruner = tp.pruner.BasePruner(
                model, example_inputs, importance=importance, pruning_ratio=ratio,
                iterative_steps=iterative_steps, global_pruning=global_pruning,
                ignored_layers=[classifier(model)] if ignored_layers is None else ignored_layers)
    except UserError:
        raise
    except Exception as err:  # the tracer fails in many ways; all mean "this model cannot be traced"
        raise UserError(f"model: Torch-Pruning cannot trace {type(model).__name__} ({brief(err)})") from err
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module not in pruner.DG.module2node:
            raise UserError(f"model: Torch-Pruning cannot trace {type(model).__name__}: layer {name} is not "
                            "reached from the output through autograd")
    return pruner


def group_roots(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[str, str, int]]:
    """``(name, kind, channels)`` of each group's root layer a pass may prune, in the model's order.

    kind: ``"conv"`` or ``"linear"``. The classifier's outputs are never pruned.
    """
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    roots = {group[0].dep.target.module for group in graph.get_all_groups(
        ignored_layers=[classifier(model)], root_module_types=[nn.Conv2d, nn.Linear])}
    return [(name, "conv" if isinstance(module, nn.Conv2d) else "linear", _out_channels(module))
            for name, module in model.named_modules() if module in roots]


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def physical_pass(model: nn.Module, importance: str, ratio: float, example_inputs: torch.Tensor,
                  scoring_inputs: torch.Tensor, *, labels: torch.Tensor | None = None, engine: str = "fast",
                  kernel: str = "linear", debiased: bool = False, iterative_steps: int = 1,
                  global_pruning: bool = False, ignored_layers: list[nn.Module] | None = None,
                  seed: int = 0, batch_size: int = 1024) -> PassResult:
    """Prune ``model`` in place by ``ratio`` of each group's channels (all groups' with
    ``global_pruning``) in ``iterative_steps`` steps, scoring each step on ``scoring_inputs`` (N, ...).

    importance: 'cka' (:class:`CKAImportance` with engine, kernel, debiased) or a TP_CRITERIA name.
    labels (N,): the scoring samples' classes, needed by 'tp_taylor' (gradients of the
    cross-entropy). ignored_layers: layers whose output channels stay (default: the classifier).
    seed: the random state of 'tp_random'.
    """
    scorer = (CKAImportance(engine, kernel, debiased, max_samples=None) if importance == "cka"
              else baseline_importance(importance))
    if importance == "tp_taylor" and labels is None:
        raise ValueError("physical_pass: tp_taylor needs the scoring samples' labels")
    logged = _Logged(scorer)
    pruner = build_pruner(model, logged, ratio, example_inputs, iterative_steps, global_pruning, ignored_layers)
    names = {module: name for name, module in model.named_modules()}
    unscored = f"{importance} gives this group no importance; group left alone"
    reasons = scorer.skipped if isinstance(scorer, CKAImportance) else {}  # filled in as groups are scored
    records, kept = [], {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(1, iterative_steps + 1):
            if isinstance(scorer, CKAImportance):
                scorer.record(model, scoring_inputs, batch_size, pruner=pruner)
            elif importance == "tp_taylor":
                _gradients(model, scoring_inputs, labels, batch_size)
            logged.start_step()
            if global_pruning:  # exactly the budget: see the module docstring
                logged.rank(list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                          root_module_types=pruner.root_module_types)))
            for group in pruner.step(interactive=True):
                records.append(_prune_group(group, step, names, logged, scorer, kept))
            records += [GroupRecord(step, names[root], _output_layers(group, names), _out_channels(root), (), None,
                                    skipped=reasons.get(logged.keys.get(root), unscored))
                        for root, group in logged.unscored.items()]
            if importance == "tp_taylor":
                model.zero_grad(set_to_none=True)
    history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()]
    engine = scorer.engine if isinstance(scorer, CKAImportance) else "torch-pruning"
    return PassResult(tuple(records), history, engine, {name: tuple(channels) for name, channels in kept.items()})


_OUTPUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)
_INPUT_HANDLERS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels, tp.prune_linear_in_channels)


def _output_layers(group: tp.Group, names: dict[nn.Module, str]) -> tuple[str, ...]:
    """The names of the group's Conv2d/Linear layers whose output channels it removes."""
    return tuple(names[item.dep.target.module] for item in group if item.dep.handler in _OUTPUT_HANDLERS)


def _input_layers(group: tp.Group, names: dict[nn.Module, str]) -> tuple[str, ...]:
    """The names of the group's Conv2d/Linear layers whose input channels it removes, in the model's order."""
    found = {item.dep.target.module for item in group if item.dep.handler in _INPUT_HANDLERS}
    return tuple(name for module, name in names.items() if module in found)


def _track_outputs(group: tp.Group, names: dict[nn.Module, str], kept: dict[str, list[int]]) -> None:
    """Drop the channels ``group`` removes (numbered as now) from ``kept``: per layer, its output
    channels at the start of the pass that remain."""
    for item in group:
        if item.dep.handler in _OUTPUT_HANDLERS:
            module, gone = item.dep.target.module, set(int(i) for i in item.idxs)
            channels = kept.setdefault(names[module], list(range(_out_channels(module))))
            channels[:] = [c for position, c in enumerate(channels) if position not in gone]


def _prune_group(group: tp.Group, step: int, names: dict[nn.Module, str], logged: _Logged,
                 scorer: tp.importance.Importance, kept: dict[str, list[int]]) -> GroupRecord:
    root = group[0].dep.target.module
    pruned = [int(i) for i in group[0].idxs]
    layers = _output_layers(group, names)
    before = _out_channels(root)
    imp = logged.last[root]
    removed = tuple(sorted(pruned, key=lambda c: (float(imp[c]), c)))
    cka = None
    if isinstance(scorer, CKAImportance) and scorer.scores[logged.keys[root]].cka is not None:
        cka = scorer.scores[logged.keys[root]].cka[:len(removed)]
    _track_outputs(group, names, kept)
    try:
        group.prune()
    except Exception as err:  # a layer type Torch-Pruning cannot shrink
        raise UserError(f"model: Torch-Pruning cannot prune the group of {names[root]} ({brief(err)})") from err
    return GroupRecord(step, names[root], layers, before, removed, cka, consumers=_input_layers(group, names))


def _gradients(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    """Accumulate d(mean cross-entropy)/d(weights) over the scoring samples (eval mode)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for start in range(0, len(inputs), batch_size):
                x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
                loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / len(inputs)
                loss.backward()
    finally:
        model.train(was_training)


def rebuild(model: nn.Module, example_inputs: torch.Tensor, history: list[list[Any]]) -> nn.Module:
    """Shrink a freshly built ``model`` in place to the architecture left by ``history`` (the
    concatenated histories of its passes); its weights are then meaningless until a state
    dict is loaded."""
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    graph.load_pruning_history([[name, out, list(idxs)] for name, out, idxs in history])
    return model
