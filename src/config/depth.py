"""The ``prune`` section of depth pruning (``"strategy": "depth"``): whole residual blocks removed
by a criterion of :mod:`cka_prune.depth`, optionally patched by a least-squares map, then
evaluated and optionally retrained (:mod:`src.pruning.depth` runs it).

A run prunes the trained model once per removal count (``blocks``, or ``fractions`` of the
model's removable blocks), each count from the trained model, so count k is the same whether or
not other counts are asked for. The counts, ``damage`` and ``latency`` are what to measure, not
how: they stay out of the run identity, so adding a count or the damage table extends a run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from src.config.options import DEPTH_COMPENSATIONS, DEPTH_CRITERIA, DEPTH_STRATEGY, DEPTH_TYPES
from src.config.reader import in_open_unit, int_list, is_int, is_number, positive_int, Section
from src.config.schema import ModelConfig, TrainParams
from src.errors import UserError


@dataclass(frozen=True)
class DepthParams:
    """``criterion``: which blocks go first (:data:`DEPTH_CRITERIA`); ``blocks``: the removal counts,
    or ``fractions`` of the removable blocks (exactly one is set); ``greedy``: record again on the
    network after each removal (else rank once on the trained one); ``span``: blocks removed
    together, contiguous (true: the whole count as one span, Gromov et al.);
    ``compensate``/``ridge``: the least-squares patch of each removed span and its ridge;
    ``samples``: calibration samples from the training split, drawn once per seed;
    ``retrain_epochs``/``retrain_lr``: fine-tuning after each removal (0: none; lr None:
    ``params.lr``); ``recalibrate_bn``: BatchNorm statistics re-estimated before evaluating;
    ``damage``: also record every removable block's damage alone, with and without the patch,
    and every criterion's scores on the trained model; ``latency``: time the pruned networks."""

    criterion: str = "cka"
    blocks: tuple[int, ...] | None = None
    fractions: tuple[float, ...] | None = None
    greedy: bool = True
    span: int | bool = 1
    compensate: str = "none"
    ridge: float = 1e-3
    samples: int = 512
    retrain_epochs: int = 0
    retrain_lr: float | None = None
    recalibrate_bn: bool = False
    damage: bool = False
    latency: bool = True

    def counts(self, removable: int) -> tuple[int, ...]:
        """The removal counts for a model with ``removable`` blocks: ``blocks``, or each fraction f
        as the nearest count (halves up), at least 1, repeats dropped."""
        if self.blocks is not None:
            return self.blocks
        return tuple(dict.fromkeys(max(1, math.floor(f * removable + 0.5)) for f in self.fractions))

    @property
    def library_span(self) -> int | bool:
        """``span`` as :func:`cka_prune.depth.select` takes it: False for single blocks."""
        single = self.span is not True and self.span == 1  # True == 1 in Python
        return False if single else self.span

    def retraining(self, training: TrainParams) -> TrainParams:
        """The recipe retraining runs: ``training`` for exactly ``retrain_epochs`` epochs, no early
        stopping, at ``retrain_lr``."""
        lr = training.lr if self.retrain_lr is None else self.retrain_lr
        return replace(training, lr=lr, epochs=self.retrain_epochs, patience=None)


# What a run measures rather than how it prunes: outside its identity.
_MEASUREMENTS = ("blocks", "fractions", "damage", "latency")


@dataclass(frozen=True)
class DepthConfig:
    params: DepthParams
    strategy: str = DEPTH_STRATEGY

    def identity(self) -> dict[str, Any]:
        """The section as it defines a run: without :data:`_MEASUREMENTS`."""
        params = {k: v for k, v in asdict(self.params).items() if k not in _MEASUREMENTS}
        return {"strategy": self.strategy, "params": params}


def read_depth(s: Section, model: ModelConfig, training: TrainParams) -> DepthConfig:
    """The ``prune`` section ``s`` of a depth config (its strategy is "depth")."""
    s.values.pop("strategy")
    if model.type not in DEPTH_TYPES:
        s.fail(s.key("strategy"), f'"depth" needs a model with residual blocks (model.type '
                                  f'{", ".join(DEPTH_TYPES)}), got {model.type}')
    if "modules" in s.values:
        s.fail(s.key("modules"), 'does not apply to strategy "depth" (the removable blocks are found in the model)')
    p = s.section("params")
    given = set(p.values)
    d = DepthParams(recalibrate_bn=model.has_batch_norm)
    blocks = p.get("blocks", None, lambda v: positive_int(v) or (int_list(v) and len(v) > 0 and _increasing(v)),
                   "must be a positive integer or an increasing list of them (blocks removed)")
    fractions = p.get("fractions", None, lambda v: isinstance(v, list) and len(v) > 0 and _increasing(v)
                      and all(map(in_open_unit, v)), "must be an increasing list of numbers in (0, 1)")
    if (blocks is None) == (fractions is None):
        p.fail(p.path, "needs exactly one of blocks and fractions")
    compensate = p.choice("compensate", d.compensate, DEPTH_COMPENSATIONS)
    ridge = p.get("ridge", d.ridge, lambda v: is_number(v) and v >= 0, "must be a number >= 0")
    criterion = p.choice("criterion", d.criterion, DEPTH_CRITERIA)
    if "ridge" in given and compensate != "lstsq" and criterion not in ("residual", "cka-refit"):
        p.fail(p.key("ridge"), 'applies to compensate "lstsq" and criteria residual and cka-refit only')
    epochs = p.get("retrain_epochs", d.retrain_epochs, lambda v: is_int(v) and v >= 0,
                   "must be an integer >= 0 (0: no retraining)")
    if epochs and epochs <= training.warmup_epochs:
        p.fail(p.key("retrain_epochs"), f"must be > params.warmup_epochs ({training.warmup_epochs}): "
                                        "retraining runs the params recipe's schedule", epochs)
    lr = p.get("retrain_lr", d.retrain_lr, lambda v: is_number(v) and v > 0, "must be a positive number")
    if lr is not None and not epochs:
        p.fail(p.key("retrain_lr"), "applies to retraining, but retrain_epochs is 0")
    recalibrate = p.get("recalibrate_bn", d.recalibrate_bn, lambda v: isinstance(v, bool), "must be true or false")
    if recalibrate and not model.has_batch_norm:
        p.fail(p.key("recalibrate_bn"), f"needs a model with BatchNorm; this {model.type} has none")
    params = DepthParams(
        criterion=criterion,
        blocks=None if blocks is None else tuple(blocks) if isinstance(blocks, list) else (blocks,),
        fractions=None if fractions is None else tuple(float(f) for f in fractions),
        greedy=p.get("greedy", d.greedy, lambda v: isinstance(v, bool), "must be true or false"),
        span=p.get("span", d.span, lambda v: v is True or positive_int(v),
                   "must be a positive integer (blocks removed together) or true (the whole count as one span)"),
        compensate=compensate, ridge=float(ridge),
        samples=p.get("samples", d.samples, positive_int, "must be a positive integer (calibration samples)"),
        retrain_epochs=epochs, retrain_lr=None if lr == training.lr else lr, recalibrate_bn=recalibrate,
        damage=p.get("damage", d.damage, lambda v: isinstance(v, bool), "must be true or false"),
        latency=p.get("latency", d.latency, lambda v: isinstance(v, bool), "must be true or false"),
    )
    p.done()
    s.done()
    return DepthConfig(params=params)


def check_counts(params: DepthParams, removable: int, source: str) -> tuple[int, ...]:
    """The removal counts for a model with ``removable`` blocks; UserError (one line naming the
    key) when one exceeds them or is not a multiple of ``span``."""
    counts = params.counts(removable)
    key = "blocks" if params.blocks is not None else "fractions"
    where = f"{source}: prune.params.{key}"
    if max(counts) > removable:
        raise UserError(f"{where} asks for {max(counts)} blocks, but the model has {removable} removable blocks")
    uneven = [] if params.span is True else [k for k in counts if k % params.span]
    if uneven:
        raise UserError(f"{where} gives {uneven[0]} blocks, not a multiple of prune.params.span ({params.span})")
    return counts


def _increasing(v: list) -> bool:
    return all(is_number(x) for x in v) and all(a < b for a, b in zip(v, v[1:]))
