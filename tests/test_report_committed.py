"""Every committed report equals, byte for byte, what its committed records give today (src.report.committed).

The reports are made again in a scratch copy of the repository's layout (the records linked, the
budget records unpacked from their archive once for the module) and every CSV and Markdown file,
and the printed text committed beside them, is compared; figures are neither rendered nor compared.
"""

import functools
import shutil
import tarfile
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from src import results
from src.errors import UserError
from src.report.committed import PACKED, REGENERATIONS, WITHOUT_RECORDS, extract_packed, regenerate, selected
from tests.report_helpers import ROOT

FOLDERS = list(dict.fromkeys(entry.folder for entry in REGENERATIONS))
LINKED = ("config", "docs/study/records", "docs/ex1-fmnist/records", *(packed.archive for packed in PACKED))


def text_outputs(folder: Path) -> dict[str, bytes]:
    """The folder's CSV and Markdown files (not its subfolders'), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".csv", ".md")}


def stale(committed_root: Path, regenerated_root: Path, folder: str) -> list[str]:
    """The text outputs of ``folder`` that differ between the two trees, or exist in only one."""
    entries = [e for e in REGENERATIONS if e.folder == folder]
    extra = [e.stdout for e in entries if e.stdout] + [copy for e in entries for _, copy in e.copies]
    names = {**{f"{folder}/{name}": None for name in text_outputs(regenerated_root / folder)},
             **{f"{folder}/{name}": None for name in text_outputs(committed_root / folder)},
             **{path: None for path in extra}}
    return [path for path in names
            if not (committed_root / path).is_file() or not (regenerated_root / path).is_file()
            or (committed_root / path).read_bytes() != (regenerated_root / path).read_bytes()]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """Every report made again from the committed records, in a scratch tree laid out like the repository."""
    root = tmp_path_factory.mktemp("repository")
    for path in LINKED:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(ROOT / path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the reports name their records by the paths the commands were given
        # Figures are not compared: laying them out and rendering them would be most of the time.
        patch.setattr(Figure, "tight_layout", lambda self, *args, **kwargs: None)
        patch.setattr(Figure, "savefig", lambda self, *args, **kwargs: None)
        # Several reports read the same records (each budget cell, then its grid): parse each file once.
        patch.setattr(results, "load", functools.cache(results.load))
        extract_packed()
        for entry in REGENERATIONS:
            regenerate(entry)
    return root


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_committed_report_is_what_its_records_give(regenerated, folder):
    assert text_outputs(ROOT / folder), f"{folder}: no committed report"
    assert stale(ROOT, regenerated, folder) == [], \
        f"make it again: python3 -m src.report.committed {folder}, and commit what changed"


def test_an_edited_committed_file_is_found(regenerated, tmp_path):
    copy = tmp_path / "docs" / "budget" / "e0-none"
    shutil.copytree(ROOT / "docs" / "budget" / "e0-none", copy)
    assert stale(tmp_path, regenerated, "docs/budget/e0-none") == []
    endpoints = copy / "endpoints.csv"
    endpoints.write_text(endpoints.read_text().replace("iteration:3", "iteration:4", 1))
    (copy / "notes.md").write_text("a Markdown file no command writes\n")
    (copy / "report.md").unlink()
    assert sorted(stale(tmp_path, regenerated, "docs/budget/e0-none")) == [
        "docs/budget/e0-none/endpoints.csv", "docs/budget/e0-none/notes.md", "docs/budget/e0-none/report.md"]


def test_every_committed_report_folder_is_listed():
    """A report.md or decisions.md under docs/ that nothing makes again would go stale unseen."""
    made = {path.parent.relative_to(ROOT).as_posix() for name in ("report.md", "decisions.md")
            for path in (ROOT / "docs").rglob(name)}
    assert made == set(FOLDERS) | set(WITHOUT_RECORDS)


def test_studies_are_selected_by_name():
    assert {e.folder for e in selected(["study-fmnist"])} == {"docs/study"}
    assert len(selected([])) == len(REGENERATIONS)
    with pytest.raises(UserError, match="budget: not a study with committed reports"):
        selected(["budget"])


def write_archive(path: Path, members: list[str]) -> None:
    """A tar.xz holding an empty file at each of ``members``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as archive:
        for name in members:
            archive.addfile(tarfile.TarInfo(name))


def test_records_copied_from_a_run_are_not_replaced_by_the_archives(tmp_path):
    # An archive laid out like the committed one, small enough not to spend seconds unpacking
    # (the regenerated reports above unpack the committed one).
    packed = next(p for p in PACKED if p.archive == "docs/budget/records.tar.xz")
    for other in PACKED:
        if other is not packed:
            write_archive(tmp_path / other.archive, [])
    resnet_cells = ("e0-none", "e0-lstsq", "e1-none", "e1-lstsq")
    write_archive(tmp_path / packed.archive, [
        "records/e0-none/cka/0.json", "records/e0-none/obs/0.json",
        *(f"resnet/records/{cell}/cka/0.json" for cell in resnet_cells)])
    fresh = tmp_path / "docs" / "budget" / "records" / "e0-none" / "cka" / "0.json"
    fresh.parent.mkdir(parents=True)
    fresh.write_text("{}")
    extract_packed(tmp_path)
    assert fresh.read_text() == "{}" and not (fresh.parent.parent / "obs").exists()
    assert sorted(p.name for p in (tmp_path / "docs" / "budget" / "resnet" / "records").iterdir()) == sorted(
        resnet_cells)
