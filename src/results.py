"""One seed's prune result: the typed record ``main_prune.py`` writes and the report reads.

A result is ``output/<experiment>/<seed>.json``, the serialised :class:`SeedResult`. This
module is its only writer and reader: ``to_dict`` / ``from_dict`` round-trip it, and a file of
another schema version is refused with one line instead of being half-understood.

**Run identity.** A prune run is defined by the trained model it starts from (the model
file's sha256), the settings that trained it (``ExperimentConfig.training_identity``: they
also drive retraining and the scoring data) and the prune section, except the number of
iterations: raising ``iterations`` extends a run, it does not make a new one. Options added
later (the retraining budget) enter it only where they change what runs
(:meth:`src.config.PruneParams.identity`), so earlier runs keep their identity.
:func:`run_identity` describes exactly that and hashes it; every result carries both the
description and the digest, so a rerun can say precisely what changed
(:func:`identity_changes`), and results of different runs are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from src.config import ExperimentConfig
from src.errors import UserError
from src.io import atomic_write_json, read_json
from src.provenance import Provenance

SCHEMA_VERSION = 5
# Schema 2 lacks the iterations' provenance, schemas 2 and 3 the sizes (parameters, MACs) of
# the network, schemas before 5 the sweep points' rates and the layers' compensation; their
# records are read with those None.
READABLE_SCHEMAS = (2, 3, 4, SCHEMA_VERSION)
Metrics = dict[str, float]  # {train,val,test}_{loss,acc} as src.train.evaluate_all returns them


@dataclass(frozen=True)
class RunIdentity:
    """``description``: what defines the run (JSON values); ``digest``: its sha256, shortened."""

    description: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, description: dict[str, Any]) -> RunIdentity:
        plain = json.loads(json.dumps(description))  # tuples -> lists: equal to what a file reads back
        return cls(plain, digest(plain))

    @property
    def config_digest(self) -> str:
        """The digest without the model: the same for every seed of one config."""
        return digest(self.config_part)

    @property
    def config_part(self) -> dict[str, Any]:
        return {k: v for k, v in self.description.items() if k != "model_sha256"}


def digest(description: Any) -> str:
    """A short, stable hash of a JSON-serialisable value (key order does not matter)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def config_description(cfg: ExperimentConfig) -> dict[str, Any]:
    """The part of a run's identity that the config gives: the same for all its seeds."""
    prune = cfg.require_prune().identity()
    del prune["params"]["iterations"]
    return {"training": cfg.training_identity(), "prune": prune}


def run_identity(cfg: ExperimentConfig, model_file: Path) -> RunIdentity:
    """The identity of pruning ``model_file`` as ``cfg`` says (see the module docstring)."""
    return RunIdentity.of({"model_sha256": file_sha256(model_file), **config_description(cfg)})


def identity_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two run descriptions."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += identity_changes(a, b, f"{path}.")
        elif a != b:
            changes.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")
    return changes


@dataclass(frozen=True)
class LayerInfo:
    """A pruned layer as built: its number among the prunable layers, module name, kind, width."""

    index: int
    name: str
    kind: str
    width: int


@dataclass(frozen=True)
class ConsumerFit:
    """How the consumer of a pruned layer reproduces its pre-activation Z of the start of the pass
    (``prune.params.compensate``, :mod:`src.pruning.compensate`).

    ``consumer``: its module name; ``error_before``, ``error_after``: the relative error
    ||Z_current - Z||_F / ||Z - mean(Z)||_F (centred denominator) on the fitting samples after
    the layer was pruned, before and after the consumer was compensated.
    """

    consumer: str
    error_before: float
    error_after: float


@dataclass(frozen=True)
class LayerStep:
    """One layer in one pass; neuron indices are the layer's original ones.

    ``scores``: the criterion's value at each removal (None for random); ``cka``: CKA(layer
    output at the start of the pass, after) after each removal; ``skipped``: why the pass
    removed nothing from this layer, when it could not score it; ``compensation``: with
    ``compensate``, its consumer's fit (a masked layer), or the fits of all its consumers, in
    the model's module order (a Torch-Pruning group: a tuple, a JSON list; NaN errors for a
    consumer left alone); None without it, and before schema 5.
    """

    index: int
    alive_before: int
    alive_after: int
    removed: tuple[int, ...]
    scores: tuple[float | None, ...]
    cka: tuple[float, ...]
    seconds: float
    engine: str
    skipped: str | None = None
    compensation: ConsumerFit | tuple[ConsumerFit, ...] | None = None

    @property
    def fits(self) -> tuple[ConsumerFit, ...]:
        """The consumers' fits, whichever path recorded them (() without compensation)."""
        if self.compensation is None:
            return ()
        return self.compensation if isinstance(self.compensation, tuple) else (self.compensation,)


@dataclass(frozen=True)
class RetrainSummary:
    epochs: int
    best_epoch: int
    diverged: bool
    seconds: float


@dataclass(frozen=True)
class IterationRecord:
    """One iteration: a pass over the layers, evaluated, then (optionally) retrained and evaluated.

    ``provenance``: the code, libraries and device it ran with (None in schema 2 records).
    ``parameters``, ``macs``: the size of the pruned network, as the smaller dense network its
    surviving neurons make (:func:`src.pruning.shrink.remaining_size`); None before schema 4.
    ``rate``: for a point of a sparsity sweep (``prune.params.rates``), the rate this one-shot pass
    pruned the *trained* model at; None for an iteration that continues the previous one.
    """

    iteration: int
    layers: tuple[LayerStep, ...]
    after_prune: Metrics
    after_retrain: Metrics | None = None  # None when retraining is off
    retrain: RetrainSummary | None = None
    seconds_scoring: float = 0.0
    seconds_retraining: float = 0.0
    provenance: Provenance | None = None
    parameters: int | None = None
    macs: int | None = None
    rate: float | None = None

    @property
    def diverged(self) -> bool:
        return self.retrain is not None and self.retrain.diverged

    @property
    def epochs_retrained(self) -> int:
        """Retraining epochs actually run after this pass (0 without retraining)."""
        return 0 if self.retrain is None else self.retrain.epochs

    def step(self, layer: int) -> LayerStep | None:
        return next((s for s in self.layers if s.index == layer), None)


@dataclass(frozen=True)
class SeedResult:
    run: RunIdentity
    experiment: str
    seed: int
    criterion: str
    strategy: str
    model_file: str
    layers: tuple[LayerInfo, ...]
    baseline: Metrics  # the trained model before pruning
    planned_iterations: int
    iterations: tuple[IterationRecord, ...] = ()
    schema: int = field(default=SCHEMA_VERSION)
    baseline_parameters: int | None = None  # the trained model's size (None before schema 4)
    baseline_macs: int | None = None

    @property
    def model_sha256(self) -> str:
        return self.run.description["model_sha256"]

    @property
    def diverged_at(self) -> int | None:
        """The iteration whose retraining diverged; the run stopped there (None: it did not)."""
        return next((it.iteration for it in self.iterations if it.diverged), None)

    @property
    def complete(self) -> bool:
        """Nothing is left to run: every planned iteration is done, or the run stopped at a divergence."""
        return len(self.iterations) >= self.planned_iterations or self.diverged_at is not None

    def with_iteration(self, record: IterationRecord) -> SeedResult:
        return replace(self, iterations=(*self.iterations, record))

    def iteration(self, number: int) -> IterationRecord | None:
        return next((it for it in self.iterations if it.iteration == number), None)

    def test_acc(self, number: int, retrained: bool) -> float | None:
        """Test accuracy after iteration ``number`` (0: the unpruned model)."""
        if number == 0:
            return self.baseline["test_acc"]
        it = self.iteration(number)
        if it is None:
            return None
        metrics = it.after_retrain if retrained else it.after_prune
        return None if metrics is None else metrics["test_acc"]

    @property
    def sweep(self) -> bool:
        """Whether the iterations are the points of a sparsity sweep, each pruned from the trained model."""
        return any(it.rate is not None for it in self.iterations)

    def lineage(self, number: int | None = None) -> tuple[IterationRecord, ...]:
        """The iterations whose removals the network after iteration ``number`` (default: the last one
        done; 0: the trained model) carries: all up to it, or for a sweep point only that one."""
        done = tuple(it for it in self.iterations if number is None or it.iteration <= number)
        return done[-1:] if done and done[-1].rate is not None else done

    def alive(self, number: int | None = None) -> dict[int, int]:
        """Neurons alive per layer after iteration ``number`` (default: the last one done)."""
        alive = {layer.index: layer.width for layer in self.layers}
        for it in self.lineage(number):
            alive.update({step.index: step.alive_after for step in it.layers})
        return alive

    def removed_up_to(self, number: int, layer: int) -> set[int]:
        """The layer's neurons missing after iteration ``number`` (see :meth:`lineage`)."""
        return {n for it in self.lineage(number) for step in it.layers if step.index == layer for n in step.removed}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["complete"] = self.complete  # for readers of the JSON; derived, not read back
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> SeedResult:
        """The record of ``raw`` (a parsed JSON object); ValueError when it is not one of this schema."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"result schema {raw.get('schema', 1)}, this version reads schemas "
                             f"{', '.join(map(str, READABLE_SCHEMAS))}")
        try:
            fields = {k: v for k, v in raw.items() if k != "complete"}
            fields["schema"] = SCHEMA_VERSION  # read as this schema; written back as it
            return cls(**{
                **fields,
                "run": RunIdentity(**fields["run"]),
                "baseline": _metrics(fields["baseline"], "baseline"),
                "layers": tuple(LayerInfo(**layer) for layer in fields["layers"]),
                "iterations": tuple(_iteration(it) for it in fields["iterations"]),
            })
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a result record ({type(err).__name__}: {err})") from None


def _metrics(raw: Any, where: str) -> Metrics:
    if not (isinstance(raw, dict) and all(isinstance(v, (int, float)) for v in raw.values()) and "test_acc" in raw):
        raise KeyError(f"{where}.test_acc")
    return raw


def _iteration(raw: dict[str, Any]) -> IterationRecord:
    retrain, after_retrain, provenance = raw.get("retrain"), raw.get("after_retrain"), raw.get("provenance")
    where = f"iterations[{raw.get('iteration')}]"
    return IterationRecord(**{
        **raw,
        "after_prune": _metrics(raw.get("after_prune"), f"{where}.after_prune"),
        "after_retrain": None if after_retrain is None else _metrics(after_retrain, f"{where}.after_retrain"),
        "layers": tuple(_step(step) for step in raw["layers"]),
        "retrain": None if retrain is None else RetrainSummary(**retrain),
        "provenance": None if provenance is None else Provenance(**provenance),
    })


def _step(raw: dict[str, Any]) -> LayerStep:
    fit = raw.get("compensation")
    # A list from JSON, a tuple from a checkpoint (which keeps to_dict()'s objects as they are).
    fits = (None if fit is None else tuple(ConsumerFit(**f) for f in fit) if isinstance(fit, (list, tuple))
            else ConsumerFit(**fit))
    return LayerStep(**{**raw, "removed": tuple(raw["removed"]), "scores": tuple(raw["scores"]),
                        "cka": tuple(raw["cka"]), "compensation": fits})


def same(a: SeedResult | None, b: SeedResult | None) -> bool:
    """Whether two results would be written identically (NaN equals NaN here, unlike ``==``)."""
    return a is not None and b is not None and json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def result_path(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"{seed}.json"


def save(result: SeedResult, out_dir: Path) -> Path:
    return atomic_write_json(result_path(out_dir, result.seed), result.to_dict())


def load(path: Path) -> SeedResult:
    """Read one result file; UserError (one line naming the file) when it is not a result of this schema."""
    try:
        return SeedResult.from_dict(read_json(path))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except ValueError as err:  # json.JSONDecodeError is a ValueError too
        raise UserError(f"{path}: not a result file this version can read: {err}") from None


def seed_files(directory: Path) -> list[Path]:
    """``<seed>.json`` files of a result folder, by seed."""
    return sorted((p for p in Path(directory).glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))
