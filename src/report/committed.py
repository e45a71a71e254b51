"""The committed studies' reports, made again from their committed records:
``python3 -m src.report.committed [STUDY ...]`` (default: every one), from the repository root.

Each report under ``docs/`` is listed here once, with the command and options that make it (the
endpoint its study fixed before the run among them), so that a committed report can always be
checked against what its records give today. A study is named by its config folder
(``budget-fmnist``). The records of ``docs/budget``, ``docs/depth`` and ``docs/depth/lm`` are committed
packed (``records.tar.xz``) and unpacked into their git-ignored ``records/`` folders where those are
missing; delete a folder to unpack it again.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from src.cli import run
from src.errors import UserError
from src.io import atomic_write_text
from src.report import cli, depth_study, grid


@dataclass(frozen=True)
class Regeneration:
    """One command over committed records. ``study``: its config folder's name; ``folder``: the
    committed folder it writes; ``stdout``: the file its printed text is committed as; ``copies``:
    (written, committed) files copied afterwards (a run whose other outputs are not committed)."""

    study: str
    folder: str
    main: Callable[[Sequence[str] | None], int]
    args: tuple[str, ...]
    stdout: str | None = None
    copies: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Packed:
    archive: str
    into: str
    folders: tuple[str, ...]  # what the archive holds, relative to the repository root


# Committed before records were kept (docs/studies.md): these reports cannot be made again.
WITHOUT_RECORDS = ("docs/fmnist-cpu/report",)
PACKED = (Packed("docs/budget/records.tar.xz", "docs/budget", ("docs/budget/records", "docs/budget/resnet/records")),
          Packed("docs/depth/records.tar.xz", "docs/depth", ("docs/depth/records",)),
          Packed("docs/depth/lm/records.tar.xz", "docs/depth/lm", ("docs/depth/lm/records",)))

BUDGET, RESNET_BUDGET = "budget-fmnist", "budget-fmnist-resnet"
STUDY = ("cka", "apoz", "cka-global", "cka-independent", "cka-next", "cka-rewind", "l1", "random", "taylor")
STUDY_ALL_PAIRS = ("cka", "cka-global", "cka-independent", "cka-next", "cka-rewind", "l1", "apoz", "random", "taylor")
ONE_SHOT_CELLS = ("e0-none", "e0-bias", "e0-lstsq", "e1-none", "e1-bias", "e1-lstsq",
                  "e1-nodrop-none", "e1-nodrop-bias", "e1-nodrop-lstsq")
ONE_SHOT = ("cka", "cka-next", "cka-refit", "obs", "l1", "taylor", "apoz", "random")
ITERATIVE_CELLS = ("iterative-none", "iterative-lstsq")
ITERATIVE = ("cka", "cka-refit", "l1", "obs", "random", "taylor")
RESNET_CELLS = ("e0-none", "e0-lstsq", "e1-none", "e1-lstsq")
RESNET = ("cka", "tp_bn", "tp_l1", "tp_random", "tp_taylor")
# The endpoints each grid fixed before its run (config/budget-fmnist*/README.md): 90 % and 50 % removed.
ONE_SHOT_ENDPOINT = "iteration:3"
RESNET_ENDPOINT = "iteration:2"
# The depth study (config/depth-fmnist/README.md): 6 of 12 blocks removed; width at its matched rate.
DEPTH = "depth-fmnist"
DEPTH_CELLS = ("e0-none", "e0-lstsq", "e1-none", "e1-lstsq")
DEPTH_CRITERIA = ("angular", "cka", "cka-refit", "cosine", "loss", "pons", "random", "residual", "tail")
WIDTH_CELLS = ("width-e0-lstsq", "width-e1-lstsq")
WIDTH = ("cka", "tp_l1", "tp_taylor")
# The language model's depth study (config/depth-lm/README.md): validation loss with 1 of 8 blocks removed, in
# the same four cells (DEPTH_CELLS) and a span cell reported on its own.
DEPTH_LM = "depth-lm"
DEPTH_LM_CELLS = {"e0-none": DEPTH_CRITERIA, "e0-lstsq": DEPTH_CRITERIA, "e1-none": ("tail",),
                  "e1-lstsq": ("angular", "cka", "cka-refit", "cosine", "residual", "tail"),
                  "span-e0-lstsq": ("angular", "cka", "cka-refit", "cosine", "residual")}


def _folders(root: str, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{root}/{name}" for name in names)


def _cell(study: str, records: str, cell: str, criteria: Sequence[str], out: str,
          endpoint: str | None) -> Regeneration:
    fixed = () if endpoint is None else ("--fixed-endpoint", endpoint)
    return Regeneration(study, out, cli.main, (*_folders(f"{records}/{cell}", criteria), *fixed, "--all-pairs",
                                        "--out", out, "--format", "png"))


def _depth_cell(study: str, root: str, cell: str, criteria: Sequence[str]) -> Regeneration:
    """A depth cell's own report (``src.report``), from ``root/records/cell`` into ``root/cell``."""
    return Regeneration(study, f"{root}/{cell}", cli.main,
                        (*_folders(f"{root}/records/{cell}", criteria), "--out", f"{root}/{cell}"))


REGENERATIONS = (
    Regeneration("ex1-fmnist", "docs/ex1-fmnist", cli.main,
                 (*_folders("docs/ex1-fmnist/records", ("cka", "l1")), "--out", "docs/ex1-fmnist")),
    Regeneration("study-fmnist", "docs/study", cli.main,
                 (*_folders("docs/study/records", STUDY), "--out", "docs/study", "--format", "png,pdf"),
                 stdout="docs/study/report-output.txt"),
    Regeneration("study-fmnist", "docs/study", cli.main,
                 (*_folders("docs/study/records", STUDY_ALL_PAIRS), "--all-pairs",
                  "--out", "output/report/study-all-pairs"),
                 copies=(("output/report/study-all-pairs/endpoints.csv", "docs/study/all-pairs-endpoints.csv"),)),
    *(_cell(BUDGET, "docs/budget/records", cell, ONE_SHOT, f"docs/budget/{cell}", ONE_SHOT_ENDPOINT)
      for cell in ONE_SHOT_CELLS),
    *(_cell(BUDGET, "docs/budget/records", cell, ITERATIVE, f"docs/budget/{cell}", None)
      for cell in ITERATIVE_CELLS),
    Regeneration(BUDGET, "docs/budget", grid.main, (
        "docs/budget/records", "--cells", ",".join(ONE_SHOT_CELLS), "--endpoint", ONE_SHOT_ENDPOINT,
        "--out", "docs/budget", "--format", "png,pdf", "--compare",
        *(f"docs/budget/records/{cell}/{name}" for cell in sorted(ITERATIVE_CELLS) for name in ITERATIVE),
        *_folders("docs/study/records", sorted(STUDY)))),
    Regeneration(BUDGET, "docs/budget/iterative", grid.main, (
        "docs/budget/records", "--cells", ",".join(ITERATIVE_CELLS), "--out", "docs/budget/iterative",
        "--format", "png,pdf")),
    *(_cell(RESNET_BUDGET, "docs/budget/resnet/records", cell, RESNET, f"docs/budget/resnet/{cell}",
            RESNET_ENDPOINT) for cell in RESNET_CELLS),
    Regeneration(RESNET_BUDGET, "docs/budget/resnet", grid.main, (
        "docs/budget/resnet/records", "--cells", ",".join(RESNET_CELLS), "--endpoint", RESNET_ENDPOINT,
        "--at", "0.5", "--out", "docs/budget/resnet", "--format", "png,pdf")),
    *(_depth_cell(DEPTH, "docs/depth", cell, DEPTH_CRITERIA) for cell in DEPTH_CELLS),
    *(_cell(DEPTH, "docs/depth/records", cell, WIDTH, f"docs/depth/{cell}", "iteration:1") for cell in WIDTH_CELLS),
    Regeneration(DEPTH, "docs/depth/study", depth_study.main, (
        "docs/depth/records", "--cells", ",".join(DEPTH_CELLS), "--count", "6", "--secondary", "3,9",
        "--endpoints", "config/depth-fmnist/README.md", "--out", "docs/depth/study", "--format", "png")),
    *(_depth_cell(DEPTH_LM, "docs/depth/lm", cell, criteria) for cell, criteria in DEPTH_LM_CELLS.items()),
    Regeneration(DEPTH_LM, "docs/depth/lm/study", depth_study.main, (
        "docs/depth/lm/records", "--cells", ",".join(DEPTH_CELLS), "--count", "1", "--secondary", "2,4,6",
        "--metric", "val_loss", "--endpoints", "config/depth-lm/README.md", "--out", "docs/depth/lm/study",
        "--format", "png")),
)


def extract_packed(root: Path = Path(".")) -> None:
    """Unpack the records of every archive whose folder is missing (one freshly copied from a run is kept)."""
    for packed in PACKED:
        missing = [folder for folder in packed.folders if not (root / folder).exists()]
        if not missing:
            continue
        with tarfile.open(root / packed.archive) as archive:
            members = [m for m in archive.getmembers()
                       if any(f"{packed.into}/{m.name}".startswith(f"{folder}/") for folder in missing)]
            archive.extractall(root / packed.into, members=members, filter="data")


def regenerate(entry: Regeneration) -> None:
    """Run one command (its printed text kept only where it is committed), then copy what it commits."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        entry.main(list(entry.args))
    if entry.stdout is not None:
        atomic_write_text(Path(entry.stdout), printed.getvalue())
    for written, committed in entry.copies:
        shutil.copyfile(written, committed)


def selected(studies: Sequence[str]) -> list[Regeneration]:
    """The regenerations of ``studies`` (all for none); UserError naming an unknown study."""
    known = list(dict.fromkeys(entry.study for entry in REGENERATIONS))
    unknown = [s for s in studies if s not in known]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a study with committed reports; give one or more of "
                        f"{', '.join(known)}")
    return [entry for entry in REGENERATIONS if not studies or entry.study in studies]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m src.report.committed", description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", metavar="STUDY",
                        help="config folder names: ex1-fmnist, study-fmnist, budget-fmnist, budget-fmnist-resnet, "
                             "depth-fmnist, depth-lm (default: all)")
    entries = selected(parser.parse_args(argv).studies)
    extract_packed()
    for entry in entries:
        regenerate(entry)
        print(f"wrote {entry.folder}")
    return 0


if __name__ == "__main__":
    run(main)
