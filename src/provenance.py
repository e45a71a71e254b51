"""What produced a result: the code's version, the libraries', and where it ran.

Two runs of one config on one trained model can still differ: other code, another torch,
another thread count (float sums in another order). The run identity (:mod:`src.results`)
says *what* was computed; :class:`Provenance` says *how*, so that a resumed or extended run
made under other conditions says so, and a report can name it.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path

import numpy
import torch

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Provenance:
    """``commit``: git HEAD of the checkout the code ran from (None outside a git checkout);
    ``dirty``: whether tracked files differed from it; ``device``: ``cpu`` or the GPU's name;
    ``threads``: PyTorch's intra-op threads."""

    commit: str | None
    dirty: bool | None
    python: str
    torch: str
    numpy: str
    torch_pruning: str | None
    device: str
    threads: int

    def changes(self, other: Provenance) -> list[str]:
        """``key: self -> other`` for every field that differs."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{f.name}: {mine[f.name]} -> {theirs[f.name]}" for f in fields(self) if mine[f.name] != theirs[f.name]]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def current(device: torch.device) -> Provenance:
    """The provenance of work about to run on ``device`` in this process."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return Provenance(
        commit=commit.strip() if commit else None,
        dirty=None if status is None else bool(status.strip()),
        python=platform.python_version(),
        torch=str(torch.__version__),  # a str subclass, which weights_only checkpoints refuse
        numpy=numpy.__version__,
        torch_pruning=_version("torch-pruning"),
        device=name,
        threads=torch.get_num_threads(),
    )
