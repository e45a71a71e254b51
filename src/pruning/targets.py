"""The representation a pass preserves: one small object per target.

Each target is recorded from the one scoring forward pass (``record``: it registers the hooks
it needs on a `src.pruning.taps.Taps`, and once the pass has run builds itself from what they
captured), and then answers, for one layer:

- ``varies()``: whether the representation varies across the scoring samples (CKA is
  undefined otherwise);
- ``search(params, alive) -> Search``: the greedy search of the configured engine
  (``params.scoring_engine``) over the alive neurons (`cka_prune.greedy_search`);
- ``path(params, alive) -> Path``: a removal order -> the CKA between the original and the
  pruned representation after each prefix of it (the damage curve of every criterion).

The targets:

- "layer" (`LayerTarget`): the layer's output (``hook="module"``: the Linear/Conv2d output;
  "nonlinearity": after BatchNorm and ReLU). A conv channel owns H*W consecutive columns.
- "next" (`NextTarget`): Z = A W^T, A the next Linear layer's input (the layer's post-activation
  output, pooled and flattened after a conv layer) and W that layer's weight at the start of
  the pass (its bias is a constant and drops out of centered CKA).
- "refit" (`RefitTarget`): the least-squares refit of Z from the kept units (`cka_prune.refit`).
- "logits" (`LogitsTarget`): the network's output.

The reference engine really zeroes the removed neurons' weights and re-runs the layer (and, for
"next" and "logits", what follows it) on the recorded layer input (`Rerun`). With ``samples
"all"`` the fast linear engine streams a Linear layer's covariance instead of keeping its
activations. Adding a target is one class here and its entry in `TARGETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from cka_prune.cka import cka, feature_space_linear_cka, gram_rbf, to_float64
from cka_prune.fast import cka_path, fast_search
from cka_prune.greedy import channel_groups
from cka_prune.greedy_search import Search
from cka_prune.interactions import interactions_from_activations, interactions_from_covariance
from cka_prune.next_layer import next_layer_cka_path, next_layer_search
from cka_prune.reference import reference_search
from cka_prune.refit import reference_refit_cka_path, reference_refit_search, refit_cka_path, refit_search
from src.config import PruneParams
from src.models import Block, Net, PrunableLayer, next_layer
from src.pruning.masks import neurons_zeroed
from src.pruning.taps import Taps

Path = Callable[[list[int]], list[float]]


def _groups(layer: PrunableLayer, values: torch.Tensor | None, covariance: np.ndarray | None) -> list[np.ndarray]:
    width = covariance.shape[0] if values is None else values.shape[1]
    return channel_groups(layer.width, width // layer.width)


@dataclass(frozen=True, eq=False)
class ConsumerRecording:
    """The next Linear layer of a pruned layer, as "next", "refit" and the criterion "obs" read it.

    inputs: (N, D) its input A (the pruned layer's post-activation output, flattened), or None
        when only the covariance was streamed.
    covariance: (D, D) centred float64 covariance of A when streamed, else None.
    weight: (p, D) its weight W at the start of the pass.
    groups: per neuron, its columns of A.
    """

    inputs: torch.Tensor | None
    covariance: np.ndarray | None
    weight: torch.Tensor
    groups: list[np.ndarray]

    @staticmethod
    def record(model: Net, layer: PrunableLayer, taps: Taps, streams: bool) -> Callable[[], ConsumerRecording]:
        following = next_layer(model, layer.index)
        weight = following.weight.detach().clone()
        captured = taps.flat(following, streams, of_input=True)

        def build() -> ConsumerRecording:
            values, covariance = captured()
            return ConsumerRecording(values, covariance, weight, _groups(layer, values, covariance))
        return build

    def centred_covariance(self) -> np.ndarray:
        """C = X^T X (D, D), X the column-centred A, float64."""
        if self.covariance is not None:
            return self.covariance
        x = self.inputs.double()
        x = x - x.mean(dim=0)
        return (x.T @ x).numpy()

    def varies(self) -> bool:
        """Whether Z = A W^T varies: the trace of its covariance W C W^T when streamed."""
        if self.covariance is not None:
            weight = to_float64(self.weight)
            return bool(np.sum((weight @ self.covariance) * weight) > 0)
        z = self.inputs.double() @ self.weight.double().T
        return bool((z != z[:1]).any())


class Target(Protocol):
    name: ClassVar[str]
    layer: PrunableLayer
    covariance: np.ndarray | None  # the streamed covariance of what was recorded, None when kept
    consumer: ConsumerRecording | None  # the next Linear layer, for the targets that read it

    @classmethod
    def record(cls, model: Net, layer: PrunableLayer, params: PruneParams, taps: Taps,
               streams: bool) -> Callable[[], Target]:
        """Register the hooks the target needs on ``taps``; the returned call builds it after the pass."""

    def varies(self) -> bool: ...

    def search(self, params: PruneParams, alive: np.ndarray) -> Search: ...

    def path(self, params: PruneParams, alive: np.ndarray) -> Path: ...


class Rerun:
    """The reference engine of a target that can be recomputed: zero the removed neurons' weights
    and re-run the layer's block (and what follows it) on its recorded input."""

    layer: PrunableLayer
    inputs: torch.Tensor | None

    def original(self) -> torch.Tensor:
        """The preserved representation before this pass: (N, D')."""
        raise NotImplementedError

    def rerun(self, block: Block) -> torch.Tensor:
        """The representation from the recorded inputs through ``block`` as it is now: (N, D')."""
        raise NotImplementedError

    def eval_scope(self) -> nn.Module:
        """The module put in eval mode while recomputing."""
        return self.layer.block

    def recompute(self, removed: list[int]) -> torch.Tensor:
        """The preserved representation with ``removed`` neurons' weights really zeroed: (N, D')."""
        block, scope = self.layer.block, self.eval_scope()
        was_training = scope.training
        scope.eval()  # BatchNorm and dropout as when the outputs were recorded
        try:
            with torch.no_grad(), neurons_zeroed(block.layer, removed):
                return self.rerun(block)
        finally:
            scope.train(was_training)

    def reference_search(self, params: PruneParams, alive: np.ndarray) -> Search:
        return reference_search(self.original(), self.recompute, self.layer.width, alive=alive,
                                kernel=params.kernel, debiased=params.debiased, greedy=params.greedy)

    def reference_path(self, params: PruneParams) -> Path:
        """CKA after each prefix of ``order``, by really zeroing weights and re-running the layer."""
        def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
            if params.kernel == "linear":
                return float(feature_space_linear_cka(a, b, debiased=params.debiased))
            return float(cka(gram_rbf(a), gram_rbf(b), debiased=params.debiased))

        def path(order: list[int]) -> list[float]:
            original = self.original()
            return [similarity(original, self.recompute(order[: t + 1])) for t in range(len(order))]
        return path


def layer_output(block: Block, x: torch.Tensor, hook: str) -> torch.Tensor:
    y = block.layer(x)
    return block.act(block.norm(y)) if hook == "nonlinearity" else y


def _recorded_inputs(layer: PrunableLayer, params: PruneParams, taps: Taps) -> Callable[[], torch.Tensor | None]:
    """The layer's input when the reference engine will re-run it, else nothing."""
    if params.scoring_engine == "reference":
        return taps.inputs(layer.block.layer)
    return lambda: None


@dataclass(frozen=True, eq=False)
class LayerTarget(Rerun):
    """The layer's own output (hook "module" or "nonlinearity"): outputs (N, D), or its streamed
    covariance (D, D); groups: per neuron, its columns."""

    name: ClassVar[str] = "layer"
    consumer: ClassVar[None] = None
    layer: PrunableLayer
    hook: str
    outputs: torch.Tensor | None
    covariance: np.ndarray | None
    groups: list[np.ndarray]
    inputs: torch.Tensor | None

    @classmethod
    def record(cls, model: Net, layer: PrunableLayer, params: PruneParams, taps: Taps,
               streams: bool) -> Callable[[], LayerTarget]:
        inputs = _recorded_inputs(layer, params, taps)
        block = layer.block
        captured = taps.flat(block.act if params.hook == "nonlinearity" else block.layer, streams)

        def build() -> LayerTarget:
            values, covariance = captured()
            return cls(layer, params.hook, values, covariance, _groups(layer, values, covariance), inputs())
        return build

    def original(self) -> torch.Tensor:
        return self.outputs

    def rerun(self, block: Block) -> torch.Tensor:
        return layer_output(block, self.inputs, self.hook).flatten(1)

    def varies(self) -> bool:
        if self.covariance is not None:
            return bool(np.trace(self.covariance) > 0)
        return bool((self.outputs != self.outputs[:1]).any())

    def interactions(self, params: PruneParams) -> np.ndarray:
        """The fast engine's interaction matrix M (`cka_prune.interactions`)."""
        if self.covariance is not None:
            return interactions_from_covariance(self.covariance, self.groups)
        return interactions_from_activations(self.outputs, self.groups, debiased=params.debiased)

    def search(self, params: PruneParams, alive: np.ndarray) -> Search:
        if params.scoring_engine == "reference":
            return self.reference_search(params, alive)
        return fast_search(self.interactions(params), alive, params.greedy)

    def path(self, params: PruneParams, alive: np.ndarray) -> Path:
        if params.scoring_engine == "reference":
            return self.reference_path(params)
        return lambda order: cka_path(self.interactions(params), order)


@dataclass(frozen=True, eq=False)
class NextTarget(Rerun):
    """Z = A W^T at the next Linear layer (`ConsumerRecording`: A and W)."""

    name: ClassVar[str] = "next"
    layer: PrunableLayer
    consumer: ConsumerRecording
    inputs: torch.Tensor | None

    @classmethod
    def record(cls, model: Net, layer: PrunableLayer, params: PruneParams, taps: Taps,
               streams: bool) -> Callable[[], NextTarget]:
        inputs = _recorded_inputs(layer, params, taps)
        consumer = ConsumerRecording.record(model, layer, taps, streams)
        return lambda: cls(layer, consumer(), inputs())

    @property
    def covariance(self) -> np.ndarray | None:
        return self.consumer.covariance

    def original(self) -> torch.Tensor:
        """Z, float64."""
        return self.consumer.inputs.double() @ self.consumer.weight.double().T

    def rerun(self, block: Block) -> torch.Tensor:
        return block(self.inputs).flatten(1).double() @ self.consumer.weight.double().T

    def varies(self) -> bool:
        return self.consumer.varies()

    def covariance_of_a(self) -> np.ndarray:
        """The fast engine's input: A's centred covariance C (numpy float64, streamed or from A)."""
        if self.consumer.covariance is not None:
            return self.consumer.covariance
        x = to_float64(self.consumer.inputs)
        x = x - x.mean(axis=0)  # not in place: A may be float64 already, and shared
        return x.T @ x

    def search(self, params: PruneParams, alive: np.ndarray) -> Search:
        if params.scoring_engine == "reference":
            return self.reference_search(params, alive)
        return next_layer_search(self.covariance_of_a(), to_float64(self.consumer.weight), alive, params.greedy)

    def path(self, params: PruneParams, alive: np.ndarray) -> Path:
        if params.scoring_engine == "reference":
            return self.reference_path(params)
        return lambda order: next_layer_cka_path(self.covariance_of_a(), to_float64(self.consumer.weight), order)


@dataclass(frozen=True, eq=False)
class RefitTarget:
    """The consumer's ridge least-squares refit of Z = A W^T from the kept units, with ridge
    ``params.compensate_ridge`` (`cka_prune.refit`; a refit, not a recomputation: both engines
    read A)."""

    name: ClassVar[str] = "refit"
    layer: PrunableLayer
    consumer: ConsumerRecording

    @classmethod
    def record(cls, model: Net, layer: PrunableLayer, params: PruneParams, taps: Taps,
               streams: bool) -> Callable[[], RefitTarget]:
        consumer = ConsumerRecording.record(model, layer, taps, streams)
        return lambda: cls(layer, consumer())

    @property
    def covariance(self) -> np.ndarray | None:
        return self.consumer.covariance

    def varies(self) -> bool:
        return self.consumer.varies()

    def search(self, params: PruneParams, alive: np.ndarray) -> Search:
        c, ridge = self.consumer, params.compensate_ridge
        if params.scoring_engine == "reference":
            return reference_refit_search(c.inputs, c.weight, c.groups, alive, ridge, params.greedy)
        return refit_search(c.centred_covariance(), c.weight, c.groups, alive, ridge, params.greedy)

    def path(self, params: PruneParams, alive: np.ndarray) -> Path:
        """CKA of the kept units' refit after each prefix; ``alive``: the units it starts from."""
        c, ridge = self.consumer, params.compensate_ridge
        if params.scoring_engine == "reference":
            return lambda order: reference_refit_cka_path(c.inputs, c.weight, order, c.groups, alive, ridge)
        return lambda order: refit_cka_path(c.centred_covariance(), c.weight, order, c.groups, alive, ridge)


@dataclass(frozen=True, eq=False)
class LogitsTarget(Rerun):
    """The network's output (N, classes); reference engine only (there is no exact fast form)."""

    name: ClassVar[str] = "logits"
    covariance: ClassVar[None] = None  # never streamed
    consumer: ClassVar[None] = None
    layer: PrunableLayer
    outputs: torch.Tensor
    inputs: torch.Tensor | None
    model: Net

    @classmethod
    def record(cls, model: Net, layer: PrunableLayer, params: PruneParams, taps: Taps,
               streams: bool) -> Callable[[], LogitsTarget]:
        inputs = _recorded_inputs(layer, params, taps)
        captured = taps.flat(model.output, streams=False)
        return lambda: cls(layer, captured()[0], inputs(), model)

    def original(self) -> torch.Tensor:
        return self.outputs

    def eval_scope(self) -> nn.Module:
        return self.model

    def rerun(self, block: Block) -> torch.Tensor:
        return downstream(self.model, self.layer.index)(block(self.inputs))

    def varies(self) -> bool:
        return bool((self.outputs != self.outputs[:1]).any())

    def search(self, params: PruneParams, alive: np.ndarray) -> Search:
        self._require_reference(params)
        return self.reference_search(params, alive)

    def path(self, params: PruneParams, alive: np.ndarray) -> Path:
        self._require_reference(params)
        return self.reference_path(params)

    @staticmethod
    def _require_reference(params: PruneParams) -> None:
        if params.scoring_engine != "reference":
            raise ValueError('target "logits" needs engine "reference" (there is no exact fast form)')


def downstream(model: Net, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The part of ``model`` after prunable block ``index``: that block's output -> logits."""
    n_conv = len(model.conv)

    def run(x: torch.Tensor) -> torch.Tensor:
        for block in model.conv[index + 1:]:
            x = block(x)
        x = x.flatten(1)
        for block in model.hidden[max(index + 1 - n_conv, 0):]:
            x = block(x)
        return model.output(x)
    return run


TARGETS: dict[str, type[Target]] = {t.name: t for t in (LayerTarget, NextTarget, RefitTarget, LogitsTarget)}
