"""Byte-level text datasets for the decoder: a committed corpus cut into windows of next-byte targets.

``python-stdlib``: ``data/python-stdlib.tar.xz``, the top-level standard-library modules of
CPython 3.11.7 under 30,000 bytes (118 files, 1,409,961 bytes; scripts/make_stdlib_corpus.py
builds it). Its SHA-256 is checked on load against ``CORPUS_SHA256`` and is part of the data
identity, so a model trained on other bytes never shares a name with one trained on these.

Split by file, so no validation or test text was seen in training: the files are ordered by
``torch.randperm`` seeded with ``split_seed``; validation takes files from the front of that
order until it holds at least ``val_split`` of the corpus's bytes, test takes the next files
until it holds as much, training the rest. Each split's files are concatenated in name order
into one byte stream ``b_0 .. b_{L-1}``, cut into the ``N = (L - 1) // T`` windows
``w_i = b_{iT} .. b_{iT+T}`` of ``T + 1`` bytes (``T = context``): the input is the first
``T`` bytes, the target at position t the byte after, so every byte but the first is predicted
exactly once per epoch.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from src.config import BYTES
from src.errors import UserError

CORPUS_FILES = {"python-stdlib": "python-stdlib.tar.xz"}


@dataclass(frozen=True)
class TokenSplit:
    """One subset of a text dataset: ``tokens`` uint8 ``(N, T + 1)``, overlapping by one byte."""

    tokens: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.dtype != torch.uint8 or self.tokens.dim() != 2 or self.tokens.shape[1] < 2:
            raise ValueError(f"TokenSplit.tokens must be uint8 (N, T + 1), "
                             f"got {self.tokens.dtype} {tuple(self.tokens.shape)}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(T,)``: the tokens of one input."""
        return (int(self.tokens.shape[1]) - 1,)

    def to(self, device: torch.device | str) -> TokenSplit:
        return TokenSplit(self.tokens.to(device))

    def take(self, index: torch.Tensor) -> TokenSplit:
        return TokenSplit(self.tokens[index.to(self.tokens.device)])

    def batch(self, index: slice | torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 inputs ``(B, T)`` and next-byte targets ``(B, T)`` of the windows at ``index``."""
        windows = self.tokens[index].to(device, non_blocking=True).long()
        return windows[:, :-1], windows[:, 1:]


def read_corpus(path: Path, sha256: str) -> dict[str, bytes]:
    """The files of the xz-compressed tar at ``path`` by name, after checking the archive's SHA-256."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the text corpus ({err.strerror}); it ships with the repository "
                        f"(scripts/make_stdlib_corpus.py rebuilds it)") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise UserError(f"{path}: SHA-256 is {digest}, expected {sha256}: not the committed corpus "
                        f"(restore it with git checkout -- {path.name})")
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(blob)), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def split_files(sizes: dict[str, int], val_split: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Train, val and test file names (each sorted): val and test each take at least ``val_split``
    of the bytes, in the order of a permutation seeded with ``seed``."""
    names = sorted(sizes)
    order = [names[i] for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))]
    quota = val_split * sum(sizes.values())
    held: list[list[str]] = [[], []]
    rest = iter(order)
    for part in held:
        while sum(sizes[n] for n in part) < quota:
            name = next(rest, None)
            if name is None:
                break
            part.append(name)
    train = sorted(rest)
    if not train:
        raise UserError(f"data.val_split={val_split} leaves no files for training ({len(names)} files in the corpus)")
    return train, sorted(held[0]), sorted(held[1])


def windows(stream: bytes, context: int) -> TokenSplit:
    """The ``(len(stream) - 1) // context`` windows of ``context + 1`` bytes, each starting where
    the previous one's last input byte ends (module docstring)."""
    n = (len(stream) - 1) // context
    if n < 1:
        raise UserError(f"data.context={context}: a split of {len(stream)} bytes holds no window")
    data = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    return TokenSplit(data.unfold(0, context + 1, context)[:n].clone())


def load_text(dataset: str, root: Path, bundled: Path, sha256: str, context: int, val_split: float,
              seed: int) -> tuple[TokenSplit, TokenSplit, TokenSplit]:
    """Train, val and test windows of ``dataset`` (``<root>/<file>`` if present, else ``bundled``'s)."""
    name = CORPUS_FILES[dataset]
    path = next((p for p in (root / name, bundled / name) if p.is_file()), bundled / name)
    files = read_corpus(path, sha256)
    parts = split_files({n: len(b) for n, b in files.items()}, val_split, seed)
    train, val, test = (windows(b"".join(files[n] for n in part), context) for part in parts)
    return train, val, test
