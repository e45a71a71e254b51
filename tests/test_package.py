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


def test_pip_install_gives_cka_prune_and_not_the_harness(tmp_path):
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

    user = tmp_path / "user"
    user.mkdir()
    (user / "prune.py").write_text(USER_SCRIPT)
    run = subprocess.run([str(python), "prune.py"], cwd=user, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    installed, done = run.stdout.split()
    assert Path(installed).is_relative_to(purelib) and done == "pruned"
