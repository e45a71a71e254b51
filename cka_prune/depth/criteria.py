"""Selection criteria: each a callable context -> {label: score}, the lowest removed first."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    """What a criterion may read at one step."""


class Criterion:
    """context -> {label: score}; lowest first."""

    def __call__(self, context: Context) -> dict[str, float]:
        raise NotImplementedError


CRITERIA: dict[str, Criterion] = {}
