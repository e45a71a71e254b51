#!/usr/bin/env python3
"""Build data/python-stdlib.tar.xz: the text corpus of ``data.dataset: "python-stdlib"``.

The selection: the top-level modules of the standard library of the running interpreter
(``<stdlib>/*.py``, no packages) smaller than MAX_BYTES bytes each, sorted by name. They are
written into an uncompressed-ustar tar with every header field that varies between machines
zeroed (mtime, owner, mode), then xz-compressed at preset 9, so the archive is the same bytes
for the same interpreter version. The committed archive came from CPython 3.11.7; its SHA-256
is ``CORPUS_SHA256["python-stdlib"]`` in src/config/options.py, which src.text_data checks.

Usage: python3 scripts/make_stdlib_corpus.py [--output PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import sys
import sysconfig
import tarfile
from pathlib import Path

MAX_BYTES = 30_000
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "python-stdlib.tar.xz"


def selection(stdlib: Path) -> list[Path]:
    """The top-level modules under ``MAX_BYTES`` bytes, sorted by name."""
    return sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < MAX_BYTES)


def archive(files: list[Path]) -> bytes:
    """The files as an xz-compressed ustar archive with fixed headers."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(raw.getvalue(), preset=9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    files = selection(Path(sysconfig.get_paths()["stdlib"]))
    blob = archive(files)
    args.output.write_bytes(blob)
    print(f"{args.output}: {len(files)} files of Python {sys.version.split()[0]}, "
          f"{sum(p.stat().st_size for p in files)} bytes, {len(blob)} compressed, "
          f"sha256 {hashlib.sha256(blob).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
