"""Helpers shared by the end-to-end prune run tests (tests/test_strategy.py, test_resume.py)."""

import json

from src import results


def edit(config, **sections):
    """Rewrite ``config`` (a tiny_raw file) with ``sections`` replaced, as a user editing it would."""
    raw = json.loads(config.read_text())
    raw.update(sections)
    config.write_text(json.dumps(raw))


def prune_section(criterion="cka", iterations=2, rate=0.25, **params):
    return {"strategy": "iterative", "params": {"type": criterion, "iterations": iterations, "rate": rate, **params},
            "modules": [0, 1]}


def stored(tmp_path, out="output", seed=0):
    return results.load(tmp_path / out / "tiny" / f"{seed}.json")
