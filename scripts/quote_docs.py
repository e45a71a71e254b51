"""Refresh the generated files the documentation quotes: python3 scripts/quote_docs.py [FILE.md ...]

Without arguments it refreshes every documentation page: README.md and docs/*.md. A quote is a
marker line followed by a fenced block:

    <!-- quoted from docs/demo-search.txt by make docs -->
    ```
    (the file's text)
    ```

The block is replaced by the current text of the file (relative to the repository root, whichever
page quotes it). A page is rewritten only when one of its quotes changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.io import atomic_write_text  # noqa: E402

QUOTE = re.compile(r"^<!-- quoted from (?P<path>\S+) by make docs -->\n```\n(?P<text>.*?)```\n",
                   re.MULTILINE | re.DOTALL)


def documentation_pages(root: Path = ROOT) -> list[Path]:
    """The pages a reader is sent to: README.md, then docs/*.md (not the generated study reports
    in docs/'s subfolders)."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def quote_files(markdown: str, root: Path = ROOT) -> str:
    """``markdown`` with every quote's block replaced by its file's text."""
    def fresh(match: re.Match) -> str:
        text = (root / match["path"]).read_text()
        return f"<!-- quoted from {match['path']} by make docs -->\n```\n{text.rstrip()}\n```\n"
    return QUOTE.sub(fresh, markdown)


def main() -> None:
    for path in [Path(name) for name in sys.argv[1:]] or documentation_pages():
        old = path.read_text()
        new = quote_files(old)
        if new != old:
            atomic_write_text(path, new)


if __name__ == "__main__":
    main()
