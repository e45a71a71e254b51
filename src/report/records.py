"""Result folders as the report reads them: which run a folder reports, and which seeds pair.

A folder ``output/<experiment>/`` holds one ``<seed>.json`` per seed (:mod:`src.results`).

**The run.** Results of several runs (the config was edited, another trained model) are never
mixed. When a folder holds several, the run is the one whose config digest matches its config
(``<config root>/<experiment>.json``, as written, or with the values of a finished search, as
main_prune.py runs it); without a config that decides, the folder is refused with the runs
listed. File times are never used: copying files changes them.

**Pairs.** Two runs' seeds are compared only when both pruned the same trained model (same
model file sha256); a seed that cannot be paired is named. A seed whose retraining diverged
(:attr:`SeedResult.diverged_at`) is kept apart (``Experiment.diverged``): it is named and enters
no statistic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from src import results
from src.config import ExperimentConfig, load_config
from src.errors import UserError
from src.results import LayerInfo, SeedResult


@dataclass(frozen=True)
class Experiment:
    """The results of one folder, all of one run. ``label`` names it in tables and legends (unique in a report).

    ``seeds``: the seeds every statistic uses; ``diverged``: seeds whose retraining diverged, kept out.
    """

    directory: Path
    name: str
    criterion: str
    label: str
    seeds: tuple[SeedResult, ...]
    notes: tuple[str, ...] = ()
    diverged: tuple[SeedResult, ...] = ()

    @property
    def layers(self) -> dict[int, LayerInfo]:
        return {layer.index: layer for seed in self.seeds for layer in seed.layers}

    def iteration_numbers(self) -> list[int]:
        return sorted({it.iteration for seed in self.seeds for it in seed.iterations})

    @property
    def all_seeds(self) -> tuple[SeedResult, ...]:
        return tuple(sorted((*self.seeds, *self.diverged), key=lambda s: s.seed))

    @property
    def run(self) -> str:
        return self.all_seeds[0].run.config_digest if self.all_seeds else ""


def seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(seeds))


def _config(experiment: str, config_root: Path | None) -> ExperimentConfig | None:
    """``<config_root>/<experiment>.json`` when it exists and is valid, else None."""
    if config_root is None:
        return None
    path = config_root / f"{experiment}.json"
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except (UserError, OSError, ValueError):
        return None


def configured_seeds(experiment: str, config_root: Path | None) -> tuple[int, ...]:
    """The seeds config/<experiment>.json asks for, when that file exists and is valid, else ()."""
    cfg = _config(experiment, config_root)
    return () if cfg is None else tuple(cfg.seeds)


def config_digests(cfg: ExperimentConfig, output_root: Path | None) -> list[str]:
    """The config digests ``cfg`` may have run under: with a finished search's values (as main_prune.py
    applies them, when ``output_root`` holds one), and as written."""
    from src.points import searched_config  # reads search results: only when a folder holds several runs

    candidates = [cfg]
    if output_root is not None and cfg.prune is not None:
        candidates.insert(0, searched_config(cfg, True, output_root)[0])
    return list(dict.fromkeys(results.RunIdentity.of(results.config_description(c)).config_digest
                              for c in candidates if c.prune is not None))


def _output_root(directory: Path, experiment: str) -> Path | None:
    """The results root of ``directory`` = ``<root>/<experiment>``, when its path ends so."""
    parts = Path(experiment).parts
    return directory.parents[len(parts) - 1] if directory.parts[-len(parts):] == parts else None


def choose_run(directory: Path, loaded: Sequence[SeedResult], config_root: Path | None) -> tuple[str, list[str]]:
    """The config digest of the run a folder reports, and notes on the results left out.

    UserError (listing every run: digest and seeds) when the folder holds several and no config decides.
    """
    runs: dict[str, list[int]] = {}
    for result in loaded:
        runs.setdefault(result.run.config_digest, []).append(result.seed)
    if len(runs) == 1:
        return next(iter(runs)), []
    listing = "; ".join(f"run {digest}: seed(s) {seed_list(seeds)}" for digest, seeds in runs.items())
    name = loaded[0].experiment
    cfg = _config(name, config_root)
    chosen = next((d for d in config_digests(cfg, _output_root(directory, name)) if d in runs), None) if cfg else None
    if chosen is None:
        why = (f"none matches {config_root}/{name}.json" if cfg is not None else
               f"no config {name}.json under {config_root} to choose by" if config_root is not None else
               "no config to choose by")
        raise UserError(f"{directory}: results of {len(runs)} runs ({listing}) and {why}; "
                        "give the config's folder with --config-root, or move the other run's files away")
    other = sorted(s for digest, seeds in runs.items() if digest != chosen for s in seeds)
    return chosen, [f"seed(s) {seed_list(other)} are results of another run than {name}.json asks for (run "
                    f"{chosen}) and are left out; rerun main_prune.py with --fresh to replace them"]


def load_experiment(directory: Path, config_root: Path | None = None) -> Experiment:
    """Every readable ``<seed>.json`` in ``directory`` of its run (:func:`choose_run`); the others become notes."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory (expected an output/<experiment>/ folder written by main_prune.py)")
    loaded: list[SeedResult] = []
    notes: list[str] = []
    for path in results.seed_files(directory):
        try:
            loaded.append(results.load(path))
        except UserError as err:
            notes.append(f"skipped {err}")
    if not loaded:
        return Experiment(directory, directory.name, "", directory.name, (), tuple(notes))
    run, run_notes = choose_run(directory, loaded, config_root)
    chosen = [r for r in loaded if r.run.config_digest == run]
    first = chosen[0]
    return Experiment(directory, first.experiment, first.criterion, first.criterion,
                      tuple(r for r in chosen if r.diverged_at is None), tuple(notes + run_notes),
                      tuple(r for r in chosen if r.diverged_at is not None))


def with_unique_labels(experiments: Sequence[Experiment]) -> list[Experiment]:
    """Label by criterion; where two share one, by experiment name (its last part, ``cka-next`` for
    ``study-fmnist/cka-next``, where that is unique); where names clash too, by folder."""
    def clashes(key: Callable[[Experiment], str], exp: Experiment) -> bool:
        return sum(key(other) == key(exp) for other in experiments) > 1

    def short(exp: Experiment) -> str:
        return exp.name.rsplit("/", 1)[-1]

    out = []
    for exp in experiments:
        label = exp.criterion
        if clashes(lambda e: e.criterion, exp):
            label = (str(exp.directory) if clashes(lambda e: e.name, exp) else
                     exp.name if clashes(short, exp) else short(exp))
        out.append(replace(exp, label=label))
    return out


def seed_status(exp: Experiment, expected: Iterable[int]) -> list[str]:
    """One line per kind of seed: complete, diverged, still running (with progress), missing."""
    done = [s.seed for s in exp.seeds if s.complete]
    lines = [f"{len(done)} seed(s) complete" + (f": {seed_list(done)}" if done else "")]
    for s in exp.diverged:
        lines.append(f"seed {s.seed}: DIVERGED in the retraining of iteration {s.diverged_at}; the run stopped "
                     "there and the seed is left out of every statistic")
    for s in exp.seeds:
        if not s.complete:
            lines.append(f"seed {s.seed}: {len(s.iterations)} of {s.planned_iterations} iterations done "
                         "(running or stopped)")
    missing = sorted(set(expected) - {s.seed for s in exp.all_seeds})
    if missing:
        lines.append(f"no results yet for seed(s) {seed_list(missing)}")
    return lines


@dataclass(frozen=True)
class Pairing:
    """Seeds of two runs that pruned the same trained model, and a note naming those that could not be paired."""

    first: Experiment
    second: Experiment
    pairs: tuple[tuple[SeedResult, SeedResult], ...]
    notes: tuple[str, ...]


def pair_seeds(first: Experiment, second: Experiment) -> Pairing:
    """Pair each seed of ``first`` with the seed of ``second`` that pruned the same model file (same sha256),
    the one of the same number where several did. Diverged seeds are not paired."""
    unused = list(second.seeds)
    pairs = []
    for a in first.seeds:
        same_model = [b for b in unused if b.model_sha256 == a.model_sha256]
        if same_model:
            b = next((b for b in same_model if b.seed == a.seed), same_model[0])
            unused.remove(b)
            pairs.append((a, b))
    paired_first, paired_second = {a.seed for a, _ in pairs}, {b.seed for _, b in pairs}
    notes = []
    left_out = "left out of this pair's gaps, endpoints and overlaps"
    for exp, paired, other in ((first, paired_first, second), (second, paired_second, first)):
        lone = [s for s in exp.seeds if s.seed not in paired]
        diverged_models = {d.model_sha256 for d in other.diverged}
        orphaned = [s.seed for s in lone if s.model_sha256 in diverged_models]
        unmatched = [s.seed for s in lone if s.model_sha256 not in diverged_models]
        if orphaned:
            notes.append(f"{first.label} vs {second.label}: seed(s) {seed_list(orphaned)} of {exp.label}: the "
                         f"{other.label} run of the same trained model diverged; {left_out}")
        if unmatched:
            notes.append(f"{first.label} vs {second.label}: seed(s) {seed_list(unmatched)} of {exp.label} did not "
                         f"prune the same trained model as any seed of {other.label} (no result with the same model "
                         f"file sha256): {left_out}")
    return Pairing(first, second, tuple(pairs), tuple(notes))
