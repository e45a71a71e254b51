"""Refresh the generated files a Markdown file quotes: python3 scripts/quote_docs.py README.md

A quote is a marker line followed by a fenced block:

    <!-- quoted from docs/demo-search.txt by make docs -->
    ```
    (the file's text)
    ```

The block is replaced by the current text of the file (relative to the repository root).
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


def quote_files(markdown: str, root: Path = ROOT) -> str:
    """``markdown`` with every quote's block replaced by its file's text."""
    def fresh(match: re.Match) -> str:
        text = (root / match["path"]).read_text()
        return f"<!-- quoted from {match['path']} by make docs -->\n```\n{text.rstrip()}\n```\n"
    return QUOTE.sub(fresh, markdown)


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        atomic_write_text(path, quote_files(path.read_text()))


if __name__ == "__main__":
    main()
