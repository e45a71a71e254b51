"""A report: the folders loaded, paired and aggregated (pure once loaded)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Sequence

from src.errors import UserError
from src.report.aggregate import GapRow, IterationRow, OverlapRow, accuracy_gaps, iteration_rows, removal_overlaps
from src.report.endpoints import MEAN, Endpoint, EndpointTest, endpoint_tests
from src.report.notes import provenance_notes, skipped_notes
from src.report.records import Experiment, configured_seeds, load_experiment, pair_seeds, seed_status, with_unique_labels
from src.results import LayerInfo

DEFAULT_CONFIG_ROOT = Path("config")


@dataclass(frozen=True)
class ReportOptions:
    """``fixed``: the endpoint the study fixed before its run (tested first; only its tests can be
    significant); ``endpoints``: further, descriptive ones (the mean over iterations is always
    tested); ``all_pairs``: every pair of folders, not only each against the first; ``bootstrap``:
    BCa intervals of the gaps from 10 seeds on."""

    endpoints: tuple[Endpoint, ...] = ()
    fixed: Endpoint = MEAN
    all_pairs: bool = False
    bootstrap: bool = False


@dataclass(frozen=True)
class Report:
    experiments: tuple[Experiment, ...]  # the first is the reference for gaps and overlaps
    rows: tuple[IterationRow, ...]
    gaps: tuple[GapRow, ...]
    overlaps: tuple[OverlapRow, ...]
    notes: tuple[str, ...]  # about the inputs as a whole (folders without results, unpaired seeds, provenance)
    endpoints: tuple[EndpointTest, ...] = ()
    bootstrap: bool = False

    @property
    def layers(self) -> dict[int, LayerInfo]:
        return {i: info for exp in reversed(self.experiments) for i, info in exp.layers.items()}


def build_report(result_dirs: Sequence[Path], config_root: Path | None = DEFAULT_CONFIG_ROOT,
                 options: ReportOptions = ReportOptions()) -> Report:
    """Load every folder and aggregate. ``config_root``: where to look up each experiment's config
    (its seed list; the run to report when a folder holds several).

    Raises UserError when a folder does not exist, holds several runs no config decides between,
    or no folder holds a readable result.
    """
    unique = list(dict.fromkeys(Path(d) for d in result_dirs))
    loaded = [load_experiment(d, config_root) for d in unique]
    if not any(exp.all_seeds for exp in loaded):
        raise UserError(f"no readable result files (<seed>.json) in {', '.join(str(d) for d in unique)}; "
                        "run main_prune.py first")
    notes = [f"{exp.directory}: no result files yet" for exp in loaded if not exp.all_seeds]
    experiments = with_unique_labels([exp for exp in loaded if exp.all_seeds])
    every_seed = {s.seed for exp in experiments for s in exp.all_seeds}
    experiments = [replace(exp, notes=tuple(seed_status(exp, every_seed | set(configured_seeds(exp.name, config_root))))
                           + exp.notes + tuple(skipped_notes(exp))) for exp in experiments]
    pairs = (list(combinations(experiments, 2)) if options.all_pairs else
             [(experiments[0], other) for other in experiments[1:]])
    pairings = [pair_seeds(a, b) for a, b in pairs]
    notes += [note for p in pairings for note in p.notes] + provenance_notes(experiments)
    return Report(
        experiments=tuple(experiments),
        rows=tuple(row for exp in experiments for row in iteration_rows(exp)),
        gaps=tuple(row for p in pairings for row in accuracy_gaps(p, options.bootstrap)),
        overlaps=tuple(row for p in pairings for row in removal_overlaps(p)),
        notes=tuple(notes),
        endpoints=tuple(endpoint_tests(pairings, options.fixed, (MEAN, *options.endpoints))),
        bootstrap=options.bootstrap)
