"""The README's generated material agrees with the code: the demo caption with the demo
configs, the quoted files (make docs) with the README, and scripts/quote_docs.py refreshes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scripts.quote_docs import QUOTE, quote_files

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_demo_caption_states_what_the_demo_configs_do():
    caption = re.search(r"\*The demo \(`make demo`: (\d+) seeds, (\d+) iterations of (\d+) %", README.read_text())
    assert caption, "the README's demo figure caption was not found"
    seeds, iterations, percent = (int(group) for group in caption.groups())
    for name in ("cka", "l1"):
        raw = json.loads((ROOT / "config" / "demo" / f"{name}.json").read_text())
        assert (seeds, iterations, percent / 100) == (
            len(raw["seeds"]), raw["prune"]["params"]["iterations"], raw["prune"]["params"]["rate"]), name


def test_readme_quotes_the_generated_files_as_they_are():
    quotes = list(QUOTE.finditer(README.read_text()))
    assert [m["path"] for m in quotes] == ["docs/demo-search.txt"]
    for match in quotes:
        assert match["text"].rstrip() == (ROOT / match["path"]).read_text().rstrip(), (
            f"README.md quotes an old {match['path']}: run make docs")


def test_quote_files_replaces_only_the_quoted_blocks(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "table.txt").write_text("new 1\nnew 2\n")
    stale = ("# Title\n\n<!-- quoted from docs/table.txt by make docs -->\n```\nold\n```\n\n"
             "```\nnot a quote\n```\n")
    fresh = quote_files(stale, root=tmp_path)
    assert fresh == ("# Title\n\n<!-- quoted from docs/table.txt by make docs -->\n```\nnew 1\nnew 2\n```\n\n"
                     "```\nnot a quote\n```\n")
    assert quote_files(fresh, root=tmp_path) == fresh
