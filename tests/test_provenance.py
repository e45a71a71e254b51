"""Provenance: what the code, the libraries and the machine were when a result was made."""

import subprocess
from dataclasses import replace

import numpy
import torch

from src import provenance
from tests.conftest import ROOT


def test_current_names_this_checkout_and_these_libraries():
    made = provenance.current(torch.device("cpu"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert made.commit == head.stdout.strip() and isinstance(made.dirty, bool)
    else:  # not a git checkout (an unpacked archive): nothing to name
        assert made.commit is None and made.dirty is None
    assert made.torch == torch.__version__ and made.numpy == numpy.__version__
    assert made.device == "cpu" and made.threads == torch.get_num_threads()


def test_outside_a_git_checkout_the_commit_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "REPOSITORY", tmp_path)
    made = provenance.current(torch.device("cpu"))
    assert made.commit is None and made.dirty is None


def test_changes_name_each_field_that_differs():
    made = provenance.current(torch.device("cpu"))
    other = replace(made, threads=made.threads + 1, torch="0.0.1")
    assert made.changes(made) == []
    assert made.changes(other) == [f"torch: {made.torch} -> 0.0.1", f"threads: {made.threads} -> {made.threads + 1}"]
