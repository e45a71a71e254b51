"""Atomic writes: all or nothing, no temporary files left, permissions from the umask."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
import torch

from src.io import _atomic_write, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json


def writers(path: Path):
    """One call per public writer, each writing something small to ``path``."""
    return {
        "json": lambda: atomic_write_json(path, {"a": 1}),
        "text": lambda: atomic_write_text(path, "text\n"),
        "bytes": lambda: atomic_write_bytes(path, b"\x00\x01"),
        "torch": lambda: atomic_torch_save(path, {"w": torch.ones(2)}),
    }


class Unserialisable:
    pass


def test_each_writer_writes_its_content(tmp_path):
    assert read_json(atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})) == {"x": [1, 2]}
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    loaded = torch.load(atomic_torch_save(tmp_path / "a.pt", {"w": torch.arange(3)}), weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3))


def test_missing_parent_directories_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    atomic_write_json(path, [])
    assert read_json(path) == []


def test_failing_writer_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"new": Unserialisable()})
    assert read_json(path) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failing_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "result.json", Unserialisable())
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_the_write_is_cleaned_up_too(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"old": True})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"new": True})
    assert read_json(path) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_an_interrupt_the_writer_turns_into_its_own_error_is_still_an_interrupt(tmp_path):
    """torch.save's zip writer, interrupted mid-write, raises RuntimeError from its cleanup."""
    path = tmp_path / "model.pt"
    atomic_write_bytes(path, b"old")

    def writer_that_fails_while_closing(handle):
        try:
            handle.write(b"partial")
            raise KeyboardInterrupt  # what the SIGTERM/SIGUSR1 handler raises
        finally:
            raise RuntimeError("unexpected pos 9651840 vs 9651728")

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(path, writer_that_fails_while_closing, "wb")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_nan_and_infinity_round_trip(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"loss": math.nan, "best": math.inf, "worst": -math.inf})
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()
    back = read_json(path)
    assert math.isnan(back["loss"]) and back["best"] == math.inf and back["worst"] == -math.inf


@pytest.fixture
def umask_027():
    """The process umask set to 0o027 for one test, restored afterwards."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", ["json", "text", "bytes", "torch"])
def test_permissions_follow_the_umask_without_changing_it(tmp_path, umask_027, monkeypatch, kind):
    # umask_027 before monkeypatch: the fake os.umask is removed before the umask is restored.
    path = tmp_path / f"out.{kind}"

    def forbidden(mask):
        raise AssertionError("os.umask changes the umask of every thread")

    monkeypatch.setattr(os, "umask", forbidden)
    writers(path)[kind]()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_overwriting_takes_the_umask_not_the_old_mode(tmp_path, umask_027):
    path = tmp_path / "out.json"
    path.write_text("{}")
    path.chmod(0o600)
    atomic_write_json(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
