"""Notes on how the compared records were made: provenance changes and layers a pass skipped.

Two iterations of one seed made under different conditions (a resume with another thread
count, another commit) need not give the numbers one uninterrupted run would; neither need
two seeds of one comparison made with different code or libraries. The report names both, and
names every layer a pass could not score (``LayerStep.skipped``) instead of hiding it.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Sequence

from src.provenance import Provenance
from src.report.records import Experiment, seed_list
from src.results import SeedResult

# What makes the numbers: code, libraries and the CPU kernels they run (docs/reproducibility.md: the
# same code trains another model with other kernels). Device and threads vary between machines of one
# study without changing the numbers.
CODE_FIELDS = ("commit", "dirty", "python", "torch", "numpy", "torch_pruning", "cpu_capability", "kernel_settings")


def _ranges(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> ``1-3, 5``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _describe(values: dict[str, Any] | None, keys: Sequence[str]) -> str:
    """``threads 2`` (``commit`` shortened to 12 hex digits, as git shows it)."""
    if values is None:
        return "provenance not recorded"
    return ", ".join(f"{key} {values[key][:12] if key == 'commit' and values[key] else values[key]}" for key in keys)


def _differing(records: Sequence[dict[str, Any] | None], keys: Sequence[str]) -> list[str]:
    """The keys whose values differ among the recorded provenances (as dicts; None: not recorded), or
    the first key when none does (then only whether it was recorded differs)."""
    known = [r for r in records if r is not None]
    return [k for k in keys if len({repr(v[k]) for v in known}) > 1] or list(keys[:1])


def seed_provenance_note(exp: Experiment, seed: SeedResult) -> str | None:
    """``seed 0 of study/cka: iterations 1-4 threads 2, 5-15 threads 1`` when its iterations differ in provenance."""
    segments: list[tuple[Provenance | None, list[int]]] = []
    for it in seed.iterations:
        if segments and segments[-1][0] == it.provenance:
            segments[-1][1].append(it.iteration)
        else:
            segments.append((it.provenance, [it.iteration]))
    if len({repr(p) for p, _ in segments}) < 2:
        return None
    keys = _differing([None if p is None else asdict(p) for p, _ in segments], [f.name for f in fields(Provenance)])
    parts = [f"{'iteration' if len(numbers) == 1 else 'iterations'} {_ranges(numbers)} "
             f"{_describe(None if p is None else asdict(p), keys)}"
             for p, numbers in segments]
    return f"seed {seed.seed} of {exp.name}: made under different conditions: {'; '.join(parts)}"


def provenance_notes(experiments: Sequence[Experiment]) -> list[str]:
    """Seeds whose iterations differ in provenance, then whether the compared seeds differ in code, libraries or kernels."""
    notes = [note for exp in experiments for seed in exp.all_seeds
             if (note := seed_provenance_note(exp, seed)) is not None]
    groups: dict[str, tuple[dict[str, Any] | None, dict[str, list[int]]]] = {}
    for exp in experiments:
        for seed in exp.all_seeds:
            for it in seed.iterations:
                code = None if it.provenance is None else {k: getattr(it.provenance, k) for k in CODE_FIELDS}
                entry = groups.setdefault(repr(code), (code, {}))
                seeds = entry[1].setdefault(exp.label, [])
                if seed.seed not in seeds:
                    seeds.append(seed.seed)
    if len(groups) > 1:
        keys = _differing([code for code, _ in groups.values()], CODE_FIELDS)
        parts = [f"{_describe(code, keys)} ({'; '.join(f'{label} seed(s) {seed_list(s)}' for label, s in who.items())})"
                 for code, who in groups.values()]
        notes.append("the compared results were made with different code, library versions or CPU kernels: " + " | ".join(parts))
    return notes


def skipped_notes(exp: Experiment) -> list[str]:
    """One note per layer and reason: the iterations and seeds whose pass skipped that layer."""
    found: dict[tuple[int, str], tuple[set[int], set[int]]] = {}
    for seed in exp.all_seeds:
        for it in seed.iterations:
            for step in it.layers:
                if step.skipped:
                    iterations, seeds = found.setdefault((step.index, step.skipped), (set(), set()))
                    iterations.add(it.iteration)
                    seeds.add(seed.seed)
    return [f"layer L{index} was skipped (nothing removed) in iteration(s) {_ranges(sorted(iterations))} of seed(s) "
            f"{seed_list(seeds)}: {reason}" for (index, reason), (iterations, seeds) in sorted(found.items())]
