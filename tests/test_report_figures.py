"""The report's figures: one colour per criterion, every format, no module names."""

import colorsys
import hashlib
import itertools
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from src.config import DEPTH_CRITERIA
from src.errors import UserError
from src.report import CRITERION_COLORS, build_report, label_color, main, run_style, write_outputs
from src.report.figures import _styles
from tests.report_helpers import runs, simple, write_result  # noqa: F401 (fixture)


def test_colours_are_fixed_per_criterion_whatever_the_order(runs):
    cka, l1 = runs
    first = build_report([cka, l1], config_root=None)
    second = build_report([l1, cka], config_root=None)
    assert _styles(first) == _styles(second)
    assert {label: style["color"] for label, style in _styles(first).items()} == \
        {"cka": CRITERION_COLORS["cka"], "l1": CRITERION_COLORS["l1"]}


def _name_number(name: str) -> int:
    """The first 32 bits of the name's SHA-256, read from its hex digest."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def test_an_unknown_name_gets_a_colour_from_its_sha256_alone():
    """Hue = the digest's first 32 bits / 2**32 at lightness 0.45, saturation 0.7: the same in every process,
    unlike Python's salted hash()."""
    for name in ("snip", "ex/a"):
        expected = to_hex(colorsys.hls_to_rgb(_name_number(name) / 2**32, 0.45, 0.7))
        assert label_color(name) == expected
    assert label_color("snip") != label_color("ex/a")


def test_the_depth_criteria_drawn_in_one_panel_have_colours_told_apart():
    # hashed hues can land next to each other (tail and pons were both orange): at least 0.2 apart in RGB
    rgb = {name: np.array(to_rgb(label_color(name))) for name in DEPTH_CRITERIA}
    closest = min(np.linalg.norm(rgb[a] - rgb[b]) for a, b in itertools.combinations(rgb, 2))
    assert closest >= 0.2


def test_variants_of_a_criterion_share_its_colour_and_differ_in_marker_or_line():
    plain = run_style("cka", "cka")
    variants = [run_style(name, "cka") for name in ("cka-next", "cka-global", "cka-rewind", "cka-independent")]
    assert all(v["color"] == plain["color"] == CRITERION_COLORS["cka"] for v in variants)
    looks = {(s["marker"], s["linestyle"]) for s in [plain, *variants]}
    assert len(looks) == 5
    number = _name_number("cka-next")  # the marker and line style come from the label's digest
    assert run_style("cka-next", "cka") == {"color": CRITERION_COLORS["cka"],
                                            "marker": ("s", "^", "D", "v", "P", "X")[number % 6],
                                            "linestyle": ("--", "-.", ":")[number // 6 % 3]}


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


def test_a_figure_made_again_is_the_same_file(runs, tmp_path):
    """No creation date in a PDF or SVG: regenerating a committed report leaves unchanged figures unchanged."""
    report = build_report(list(runs), config_root=None)
    first = write_outputs(report, tmp_path / "a", formats=("pdf", "svg")).figures
    second = write_outputs(report, tmp_path / "b", formats=("pdf", "svg")).figures
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_sweeps_at_other_rates_draw_no_overlap_between_them(tmp_path):
    """Two sweeps whose points remove other fractions: the overlap table keeps them, the figure has no x to put them at."""
    folders = []
    for name, rates in (("cka", (0.3, 0.5)), ("l1", (0.1, 0.2))):
        folders.append(tmp_path / name)
        write_result(folders[-1], name, name, 0, 0.9,
                     [replace(simple(i, 0.7, None), rate=rate) for i, rate in enumerate(rates, start=1)])
    report = build_report(folders, config_root=None)
    assert report.overlaps and all(o.rate is None for o in report.overlaps)
    paths = write_outputs(report, tmp_path / "out")
    assert (tmp_path / "out" / "overlap.png") in paths.figures
