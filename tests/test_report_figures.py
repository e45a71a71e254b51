"""The report's figures: one colour per criterion, every format, no module names."""

import re

import pytest

from src.errors import UserError
from src.report import CRITERION_COLORS, build_report, label_color, main, run_style, write_outputs
from src.report.figures import _styles
from tests.report_helpers import runs  # noqa: F401 (fixture)


def test_colours_are_fixed_per_criterion_whatever_the_order(runs):
    cka, l1 = runs
    first = build_report([cka, l1], config_root=None)
    second = build_report([l1, cka], config_root=None)
    assert _styles(first) == _styles(second)
    assert {label: style["color"] for label, style in _styles(first).items()} == \
        {"cka": CRITERION_COLORS["cka"], "l1": CRITERION_COLORS["l1"]}
    assert label_color("snip") == label_color("snip") != label_color("ex/a")  # unknown names: from the name alone
    assert re.fullmatch(r"#[0-9a-f]{6}", label_color("snip"))


def test_variants_of_a_criterion_share_its_colour_and_differ_in_marker_or_line():
    plain = run_style("cka", "cka")
    variants = [run_style(name, "cka") for name in ("cka-next", "cka-global", "cka-rewind", "cka-independent")]
    assert all(v["color"] == plain["color"] == CRITERION_COLORS["cka"] for v in variants)
    looks = {(s["marker"], s["linestyle"]) for s in [plain, *variants]}
    assert len(looks) == 5 and run_style("cka-next", "cka") == run_style("cka-next", "cka")


def test_every_figure_in_every_format(runs, tmp_path):
    report = build_report(list(runs), config_root=None)
    paths = write_outputs(report, tmp_path / "out", formats=("png", "pdf", "svg"))
    names = [p.name for p in paths.figures]
    assert names == [f"{stem}.{fmt}" for stem in ("accuracy", "cka", "overlap") for fmt in ("png", "pdf", "svg")]
    heads = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}
    assert all(p.read_bytes().startswith(heads[p.suffix]) for p in paths.figures)
    svg = (tmp_path / "out" / "cka.svg").read_text()
    assert "layer 1 (10)" in svg and "hidden.0.layer" not in svg  # no module names in titles or legends
    assert "![accuracy](accuracy.png)" in paths.markdown.read_text()
    assert main([str(d) for d in runs] + ["--out", str(tmp_path / "cli"), "--format", "svg"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").glob("accuracy.*")) == ["accuracy.svg"]
    with pytest.raises(UserError, match="--format: 'jpg' is not a figure format"):
        main([str(runs[0]), "--format", "png,jpg"])
