"""Atomic file writes (a finished result is never left half-written) and file locks."""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from src.errors import UserError


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    """Write through a temporary file in the same directory, then rename over ``path``.

    ``os.replace`` is atomic on POSIX, so readers (and a job killed mid-write) see either
    the old file or the new one, never a truncated one. The temporary file is created with
    mode 0666, which the kernel reduces by the process umask, as for ``open(path, "w")``:
    results are shared on clusters, and reading the umask would mean changing it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # O_EXCL: never write into a file someone else made; O_BINARY: no newline translation on Windows.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # An interrupt (Ctrl-C, a Slurm signal) inside a writer can surface as the writer's own
        # error while it closes (torch.save's zip writer does this); the interrupt is what happened.
        interrupt = _interrupt_in(err)
        if interrupt is not None and interrupt is not err:
            raise interrupt from None
        raise
    return path


def _interrupt_in(err: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among ``err`` and the exceptions it was raised while handling, if any."""
    while err is not None and not isinstance(err, KeyboardInterrupt):
        err = err.__context__
    return err


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON; NaN/inf are written as JSON's ``NaN``/``Infinity``."""
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), "w")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch  # here, so that tools which only write JSON (the report) start fast

    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``path``; no lock is an error, not a fallback."""
    lock_path = path.with_name(f".{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            raise UserError(f"{lock_path}: cannot lock ({err.strerror}); this file system has no file "
                            f"locks: use --storage with a database URL") from None
        yield
