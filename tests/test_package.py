"""The installable library: `pip install .` gives `cka_prune` alone, and the README's example runs."""

import contextlib
import email.parser
import io
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- torch-pruning-example"

USER_SCRIPT = textwrap.dedent('''
    import importlib.util
    import sys
    import warnings

    import torch
    import torch_pruning as tp
    from torch import nn

    import cka_prune
    from cka_prune import CKAImportance

    assert importlib.util.find_spec("src") is None and importlib.util.find_spec("lib") is None, sys.path
    print(cka_prune.__file__)


    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return self.fc(torch.relu(self.conv2(y) + y).mean((2, 3)))


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.ln = nn.Linear(8, 16), nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc1, self.fc2, self.head = nn.Linear(16, 64), nn.Linear(64, 16), nn.Linear(16, 10)

        def forward(self, x):
            x = self.embed(x)
            y = self.ln(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return self.head((x + self.fc2(torch.relu(self.fc1(self.ln(x))))).mean(1))


    for model, x in ((ConvNet(), torch.randn(32, 3, 8, 8)), (Block(), torch.randn(8, 6, 8))):
        imp = CKAImportance()
        pruner = tp.pruner.MetaPruner(model.eval(), x[:1], importance=imp, pruning_ratio=0.5,
                                      ignored_layers=[model.fc if hasattr(model, "fc") else model.head])
        imp.record(model, x, pruner=pruner)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the transformer's residual group is left alone, with a warning
            pruner.step()
        assert model(x).shape == (len(x), 10)
    assert model.fc1.out_features == 32
    print("pruned")
''')


DEPTH_SCRIPT = textwrap.dedent('''
    import importlib.util
    import sys

    import torch
    from torch import nn

    from cka_prune import depth

    assert importlib.util.find_spec("src") is None, sys.path
    torch.manual_seed(0)


    class ConvBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


    class PreNorm(nn.Module):
        def __init__(self, d, causal):
            super().__init__()
            self.ln1, self.ln2, self.causal = nn.LayerNorm(d), nn.LayerNorm(d), causal
            self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x):
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
            y = self.ln1(x)
            x = x + self.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))


    class MLPBlock(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

        def forward(self, x):
            return x + self.fc(torch.relu(self.ln(x)))


    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 8)
            self.layers = nn.ModuleList([PreNorm(8, causal=True) for _ in range(4)])
            self.head = nn.Linear(8, 16)

        def forward(self, tokens):
            x = self.embed(tokens)
            for layer in self.layers:
                x = layer(x)
            return self.head(x)


    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.cls = nn.Conv2d(1, 8, 2, stride=2), nn.Parameter(torch.randn(1, 1, 8))
            self.blocks = nn.Sequential(*[PreNorm(8, causal=False) for _ in range(4)])
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            return self.head(self.blocks(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1))[:, 0])


    cases = {
        "conv": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(*[ConvBlock(4) for _ in range(4)]),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)), torch.randn(8, 3, 6, 6)),
        "vit": (ViT(), torch.randn(8, 1, 4, 4)),
        "decoder": (Decoder(), torch.randint(0, 16, (4, 6))),
        "mlp": (nn.Sequential(nn.Linear(5, 8), nn.Sequential(*[MLPBlock(8) for _ in range(4)]), nn.Linear(8, 3)),
                torch.randn(32, 5)),
    }
    for name, (model, x) in cases.items():
        model.eval()
        batches = [x[: len(x) // 2], x[len(x) // 2:]]
        names = depth.find_blocks(model, x)
        assert len(names) == 4, (name, names)
        plan = depth.select(model, names, batches, "cka", 2, compensate="none")
        pruned = depth.apply(model, plan)
        hooks = [model.get_submodule(n).register_forward_hook(lambda m, args, out: args[0]) for n in plan.removed]
        with torch.no_grad():
            assert torch.allclose(pruned(x), model(x), atol=1e-6), name  # the hooks skip the blocks removed
        for h in hooks:
            h.remove()
        patched = depth.apply(model, depth.select(model, names, batches, "residual", 2, span=True))
        assert depth.cost(patched, x).params < depth.cost(model, x).params, name
        print(name, plan.removed)
    print("depth pruned")
''')


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r".*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's Torch-Pruning example (marked " + MARKER + ") was not found"
    return match.group(1)


def test_the_readmes_torch_pruning_example_runs_as_printed():
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert (model[0].out_channels, model[2].out_channels) == (8, 16)  # 2 steps to half of each layer
    assert re.fullmatch(r"\d+\.\d MMACs, \d+ parameters\n", printed.getvalue())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(python, purelib) of a fresh environment with the package installed from a copy of the checkout."""
    tmp_path = tmp_path_factory.mktemp("install")
    # A fresh environment that sees the project environment's packages (torch, torch-pruning,
    # setuptools) through a .pth file, so the install works offline.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    clone = tmp_path / "clone"  # what the build needs, so that no build files land in the checkout
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "cka_prune", clone / "cka_prune", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(clone)],
                   check=True, cwd=tmp_path)
    return python, purelib


def _run_user_script(python: Path, tmp_path: Path, script: str) -> str:
    user = tmp_path / "user"
    user.mkdir()
    (user / "prune.py").write_text(script)
    run = subprocess.run([str(python), "prune.py"], cwd=user, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_depth_pages_example_runs_as_printed():
    text = (ROOT / "docs" / "depth-pruning.md").read_text()
    match = re.search(r"<!-- depth-example.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the depth page's example (marked <!-- depth-example) was not found"
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(match.group(1), "docs/depth-pruning.md", "exec"), namespace)
    removed, costs = printed.getvalue().splitlines()
    assert len(namespace["plan"].removed) == 3 and removed.startswith("('1.")
    assert re.fullmatch(r"Cost\(macs=\d+, params=\d+\) Cost\(macs=\d+, params=\d+\)", costs)
    sizes = {k: sum(p.numel() for p in namespace[k].parameters()) for k in ("first", "folded")}
    assert sizes["folded"] < sizes["first"]  # the patch merged into the input Linear


def test_pip_install_gives_cka_prune_and_not_the_harness(installed, tmp_path):
    python, purelib = installed
    assert sorted(p.name for p in purelib.iterdir() if not p.name.endswith((".pth", ".dist-info"))) == ["cka_prune"]
    assert (purelib / "cka_prune" / "py.typed").is_file()  # type checkers read the package's annotations
    dist_info = next(purelib.glob("cka_prune-*.dist-info"))
    metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text())
    assert metadata["License-Expression"] == "MIT" and (dist_info / "licenses" / "LICENSE").is_file()
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requires = {Requirement(r).name: Requirement(r) for r in metadata.get_all("Requires-Dist")}
    # CKAImportance reads Torch-Pruning internals: the tested minor version only.
    assert "1.6.1" in requires["torch-pruning"].specifier and "1.7.0" not in requires["torch-pruning"].specifier
    assert metadata.get_all("Provides-Extra") == ["test"]
    assert {name for name, r in requires.items() if r.marker} == {"pytest", "ckatorch", "torch-cka"}

    location, done = _run_user_script(python, tmp_path, USER_SCRIPT).split()
    assert Path(location).is_relative_to(purelib) and done == "pruned"


def test_depth_pruning_from_the_installed_package(installed, tmp_path):
    # a conv net, a pre-norm ViT and decoder, and a residual MLP, each pruned through the public API
    printed = _run_user_script(installed[0], tmp_path, DEPTH_SCRIPT).splitlines()
    assert [line.split()[0] for line in printed] == ["conv", "vit", "decoder", "mlp", "depth"]
