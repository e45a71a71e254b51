"""docs/torch-pruning.md's transformer examples run exactly as printed (the timm one where timm imports)."""

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "torch-pruning.md"


def example(name: str) -> str:
    pattern = r"<!-- transformers-example: " + name + r" .*?-->\n```python\n(.*?)```"
    match = re.search(pattern, PAGE.read_text(), re.S)
    assert match, f"docs/torch-pruning.md has no transformers example {name!r}"
    return match.group(1)


def run(name: str) -> tuple[dict, str]:
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning's note on the ViT's cls token, generate's notes
        exec(compile(example(name), str(PAGE), "exec"), namespace)
    return namespace, printed.getvalue()


def test_the_vit_example_prunes_heads_mlp_and_stream_twice():
    namespace, printed = run("vit")
    lines = printed.splitlines()
    assert lines[:2] == ["{'vit.layers.0.attention': 3, 'vit.layers.1.attention': 3}",
                         "{'vit.layers.0.attention': 1, 'vit.layers.1.attention': 1}"]
    assert re.fullmatch(r"\d+\.\d\d MMACs, \d+ parameters, logits \(64, 10\)", lines[2])
    assert namespace["imp"].skipped == {}
    assert namespace["model"].vit.layers[0].mlp.fc1.out_features == 64


def test_the_decoder_example_prunes_the_mlps_twice_and_generates():
    namespace, printed = run("decoder")
    assert printed == "MLP width 64, generated (1, 8)\n"


def test_the_timm_example_where_timm_imports():
    try:
        import timm  # noqa: F401
    except Exception as err:  # timm needs torchvision, which fails to load against a CPU torch build
        pytest.skip(f"timm does not import here ({type(err).__name__}: {err})")
    namespace, printed = run("timm")
    assert printed.splitlines()[-1] == "(32, 10)"
