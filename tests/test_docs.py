"""The documentation agrees with the code and with itself: the demo caption with the demo configs,
the quoted files (make docs) with every page that quotes them, every relative link of README.md and
docs/*.md with a file (and, for ``page.md#anchor``, with a heading of that page), and
scripts/quote_docs.py refreshes the quotes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scripts.quote_docs import QUOTE, documentation_pages, quote_files

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FENCED = re.compile(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t#]*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(markdown: str) -> str:
    """``markdown`` without its fenced code blocks, where a ``#`` or ``[x](y)`` is code."""
    return FENCED.sub("", markdown)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (links as their text, no HTML tags), lower case,
    without characters other than letters, digits, ``_``, ``-`` and spaces, spaces as ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated slug gets GitHub's ``-1``, ``-2``, ... suffixes."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(prose(markdown)):
        slug = github_slug(match["text"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(markdown: str) -> list[str]:
    """The targets of the links and images outside code that point into the repository."""
    text = INLINE_CODE.sub("", prose(markdown))
    return [m["target"] for m in LINK.finditer(text) if not SCHEME.match(m["target"])]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` that name no file, or an anchor its Markdown file lacks."""
    broken = []
    for target in relative_links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = page if not path else (root / path.lstrip("/") if path.startswith("/") else page.parent / path)
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_demo_caption_states_what_the_demo_configs_do():
    caption = re.search(r"\*The demo \(`make demo`: (\d+) seeds, (\d+) iterations of (\d+) %", README.read_text())
    assert caption, "the README's demo figure caption was not found"
    seeds, iterations, percent = (int(group) for group in caption.groups())
    for name in ("cka", "l1"):
        raw = json.loads((ROOT / "config" / "demo" / f"{name}.json").read_text())
        assert (seeds, iterations, percent / 100) == (
            len(raw["seeds"]), raw["prune"]["params"]["iterations"], raw["prune"]["params"]["rate"]), name


def test_the_pages_quote_the_generated_files_as_they_are():
    quoted = []
    for page in documentation_pages():
        for match in QUOTE.finditer(page.read_text()):
            quoted.append(match["path"])
            assert match["text"].rstrip() == (ROOT / match["path"]).read_text().rstrip(), (
                f"{page.relative_to(ROOT)} quotes an old {match['path']}: run make docs")
    assert quoted == ["docs/demo-search.txt"]


def test_quote_files_replaces_only_the_quoted_blocks(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "table.txt").write_text("new 1\nnew 2\n")
    stale = ("# Title\n\n<!-- quoted from docs/table.txt by make docs -->\n```\nold\n```\n\n"
             "```\nnot a quote\n```\n")
    fresh = quote_files(stale, root=tmp_path)
    assert fresh == ("# Title\n\n<!-- quoted from docs/table.txt by make docs -->\n```\nnew 1\nnew 2\n```\n\n"
                     "```\nnot a quote\n```\n")
    assert quote_files(fresh, root=tmp_path) == fresh


def test_documentation_pages_are_the_readme_and_the_top_level_docs_pages(tmp_path):
    (tmp_path / "docs" / "study").mkdir(parents=True)
    for name in ("README.md", "docs/b.md", "docs/a.md", "docs/study/report.md", "docs/notes.txt"):
        (tmp_path / name).write_text("x\n")
    assert documentation_pages(tmp_path) == [tmp_path / "README.md", tmp_path / "docs" / "a.md",
                                            tmp_path / "docs" / "b.md"]


def test_github_slugs():
    assert github_slug("Retraining the smaller network (`shrink`)") == "retraining-the-smaller-network-shrink"
    assert github_slug("Variants, targets and allocation") == "variants-targets-and-allocation"
    assert github_slug("W&B run logging") == "wb-run-logging"
    assert github_slug("Beyond the paper: the options compared (`docs/study/`)") == (
        "beyond-the-paper-the-options-compared-docsstudy")
    assert github_slug("The [search](search.md) section") == "the-search-section"
    assert github_slug("Real architectures (Torch-Pruning)") == "real-architectures-torch-pruning"
    assert github_slug("prune.params_x 2") == "pruneparams_x-2"


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Part\n\n## Part\n\n```\n# not a heading\n```\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n![figure](a.png) [ok](other.md#other-page) [dup](other.md#part-1) [self](#page)\n"
        "[web](https://example.org/x#y) [mail](mailto:a@b.c) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[gone](missing.md) [bad](other.md#not-a-heading) [bad2](other.md#part-2) [top](/docs/a.png)\n"
        "[here](#nowhere)\n")
    assert broken_links(page, root=tmp_path) == [
        "missing.md: no such file", "other.md#not-a-heading: no heading with that anchor",
        "other.md#part-2: no heading with that anchor", "#nowhere: no heading with that anchor"]


def test_every_relative_link_of_the_documentation_resolves():
    broken = {str(page.relative_to(ROOT)): broken_links(page) for page in documentation_pages()}
    assert {page: links for page, links in broken.items() if links} == {}


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README.read_text())}
    assert [page.name for page in documentation_pages()[1:] if page.resolve() not in linked] == []


def test_the_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 250
