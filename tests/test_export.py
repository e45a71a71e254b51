"""Export: the program that runs without this repository, the sidecar, the counts, the latency, reloading."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src import export
from src.config import ModelConfig, parse_config
from src.data import Split
from src.errors import UserError
from src.export import (
    MODEL_KEYS, Latency, add_latency, export_model, export_physical, export_seed, format_report, load_exported,
    measure_latencies, model_record, physical_report, save_exported,
)
from src.models import build_model
from src.pruning.physical import physical_pass
from src.pruning.shrink import network_size
from tests.test_physical import X
from tests.test_surgery import CNN_SAME, CNN_VALID, MLP, inputs, outputs, prune, random_model
from tests.test_tp_importance import trained_like_resnet8

ROOT = Path(__file__).resolve().parents[1]
DOCS_MARKER = "<!-- load-without-the-repository"
RESNET8 = {"type": "resnet", "depth": 8, "width": 4, "input_shape": [1, 12, 12], "output_size": 10}

# Run by a Python that sees neither this repository nor Torch-Pruning, in a directory of programs
# NAME.pt2 and input batches NAME.inputs.pt: saves each program's outputs and parameter count.
LOADER = textwrap.dedent('''
    import importlib.util
    import sys
    from pathlib import Path

    import torch

    assert all(importlib.util.find_spec(name) is None for name in ("src", "cka_prune", "main_prune")), sys.path
    for program in sorted(Path(".").glob("*.pt2")):
        model = torch.export.load(program).module()
        with torch.no_grad():
            outputs = [model(x) for x in torch.load(program.with_suffix(".inputs.pt"))]
        parameters = sum(p.numel() for p in model.parameters())
        torch.save({"outputs": outputs, "parameters": parameters}, program.with_suffix(".outputs.pt"))
    assert "torch_pruning" not in sys.modules and "src" not in sys.modules
''')


def run_isolated(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a fresh ``python -I`` (no PYTHONPATH, no user site, no script directory) in ``cwd``."""
    (cwd / "script.py").write_text(script)
    run = subprocess.run([sys.executable, "-I", "script.py"], cwd=cwd, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return run


def fast_latency(monkeypatch) -> None:
    monkeypatch.setattr(export, "measure_latencies", lambda models, *args: [0.002, 0.001])


def experiment(model: dict, **params) -> object:
    return parse_config({"model": model, "params": {"batch_size": 8, **params}}, Path("exp.json"))


@dataclass
class Case:
    pruned: nn.Module     # what was pruned: the masked model, or the model Torch-Pruning pruned
    parameters: int       # of the exported network
    batches: list[torch.Tensor]
    loaded: dict          # what LOADER saved


@pytest.fixture(scope="module")
def isolated(tmp_path_factory) -> tuple[Path, dict[str, Case]]:
    """An MLP and a CNN (masked) and a ResNet (Torch-Pruning) pruned and exported, then their programs
    run by :data:`LOADER` in one ``python -I`` in another directory, on batches of 1 and 64."""
    home, elsewhere = tmp_path_factory.mktemp("export"), tmp_path_factory.mktemp("elsewhere")
    cases = {}
    masked_cases = (("mlp", MLP, {0: [0, 3, 7], 2: [1, 2]}), ("cnn", CNN_VALID, {0: [1, 4], 1: [0], 2: [3]}))
    for name, cfg, removals in masked_cases:
        masked = prune(random_model(cfg), removals)
        small, small_cfg, report = export_model(masked, cfg)
        save_exported(home / f"{name}.pt", small, small_cfg, report)
        cases[name] = Case(masked, report.params_after, [inputs(cfg, 1), inputs(cfg, 64)], {})
    resnet, cfg = trained_like_resnet8(), experiment(RESNET8).model
    history = physical_pass(resnet, "tp_l1", 0.5, X[:1], X).history
    save_exported(home / "resnet.pt", resnet, cfg, physical_report(build_model(cfg), resnet, cfg), history)
    batches = [X[:1], torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(3))]
    cases["resnet"] = Case(resnet, network_size(resnet, (1, 12, 12))[0], batches, {})
    for name, case in cases.items():
        (elsewhere / f"{name}.pt2").write_bytes((home / f"{name}.pt2").read_bytes())
        torch.save(case.batches, elsewhere / f"{name}.inputs.pt")
    run_isolated(LOADER, elsewhere)
    for name, case in cases.items():
        case.loaded.update(torch.load(elsewhere / f"{name}.outputs.pt"))
    return home, cases


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_the_program_runs_without_the_repository_and_computes_the_pruned_models_outputs(isolated, name):
    case = isolated[1][name]
    for x, y in zip(case.batches, case.loaded["outputs"], strict=True):
        assert (y - outputs(case.pruned, x)).abs().max() <= 1e-5
    assert case.loaded["parameters"] == case.parameters  # the smaller network


def test_the_exported_networks_are_the_smaller_ones(isolated):
    cases = isolated[1]
    assert cases["mlp"].parameters < network_size(cases["mlp"].pruned, (20,))[0]
    assert cases["resnet"].parameters < network_size(build_model(experiment(RESNET8).model), (1, 12, 12))[0]


def test_a_torch_pruning_model_reloads_in_the_repository_from_its_history(isolated):
    rebuilt, cfg = load_exported(isolated[0] / "resnet.pt")
    assert cfg == experiment(RESNET8).model
    torch.testing.assert_close(outputs(rebuilt, X), outputs(isolated[1]["resnet"].pruned, X), atol=0, rtol=0)


def test_export_physical_saves_and_reports_a_torch_pruning_model(tmp_path, monkeypatch, capsys):
    fast_latency(monkeypatch)
    model = trained_like_resnet8()
    history = physical_pass(model, "tp_l1", 0.5, X[:1], X).history
    export_physical(model, experiment(RESNET8), history, tmp_path / "seed0.pt")
    out = capsys.readouterr().out
    assert "exported model:" in out and "2.00" in out  # the latency table's speed-up
    record = export.read_json(tmp_path / "seed0.json")
    assert record["history"] == history and record["program"] == "seed0.pt2"
    assert record["export"]["params_after"] == network_size(model, (1, 12, 12))[0]


def test_the_sidecar_carries_only_the_keys_of_the_model_type(tmp_path, monkeypatch):
    fast_latency(monkeypatch)
    export_physical(trained_like_resnet8(), experiment(RESNET8), [], tmp_path / "zoo.pt")
    assert export.read_json(tmp_path / "zoo.json")["model"] == RESNET8
    lenet = ModelConfig(type="lenet5", input_shape=(1, 28, 28), output_size=10)
    assert model_record(lenet) == {"type": "lenet5", "input_shape": (1, 28, 28), "output_size": 10}
    assert model_record(MLP) == {"type": "mlp", "input_size": 20, "hidden_sizes": (16, 12, 10), "output_size": 5,
                                 "dropout_rate": 0.3}
    assert set(model_record(CNN_VALID)) == set(MODEL_KEYS["cnn"])


def test_parameter_and_mac_counts_by_hand():
    """Torch-Pruning's count: a Linear ``in * out + out``, a Conv2d ``(in * k * k + 1) * out`` per output
    position, BatchNorm 2 and ReLU 1 per element; parameters are all weights, biases, BatchNorm affines."""
    mlp = ModelConfig(type="mlp", input_size=4, hidden_sizes=(3,), output_size=2)
    masked = prune(random_model(mlp), {0: [1]})
    _, _, report = export_model(masked, mlp)
    assert (report.params_before, report.params_after) == (4 * 3 + 3 + 3 * 2 + 2, 4 * 2 + 2 + 2 * 2 + 2)
    assert (report.macs_before, report.macs_after) == (4 * 3 + 3 + 3 + 3 * 2 + 2, 4 * 2 + 2 + 2 + 2 * 2 + 2)

    # conv 1->2 channels, 3x3 kernel on 5x5 -> 3x3 maps, BatchNorm, ReLU, then Linear 2*9 -> 3.
    cnn = ModelConfig(type="cnn", input_shape=(1, 5, 5), conv_channels=(2,), kernel_size=3, padding="valid",
                      pool_every=0, fc_sizes=(), output_size=3, batch_norm=True)
    masked = prune(random_model(cnn), {0: [0]})
    _, cfg, report = export_model(masked, cnn)
    assert cfg.conv_channels == (1,)
    assert report.params_before == (2 * 9 + 2) + 2 * 2 + (18 * 3 + 3)
    assert report.params_after == (1 * 9 + 1) + 1 * 2 + (9 * 3 + 3)
    assert report.macs_before == 9 * 2 * (9 + 1) + 2 * 18 + 18 + (18 * 3 + 3)
    assert report.macs_after == 9 * 1 * (9 + 1) + 2 * 9 + 9 + (9 * 3 + 3)


def test_the_report_compares_the_masked_and_the_smaller_model():
    masked = prune(random_model(CNN_SAME), {0: [0, 3], 1: [1]})
    small, _, report = export_model(masked, CNN_SAME)
    assert [r.fold for r in report.layers] == ["interior", "exact", "none"] and not report.exact
    assert len(report.warnings) == 1 and 1e-3 < report.max_abs_diff < 10
    exact = export_model(prune(random_model(MLP), {1: [0]}), MLP)[2]
    assert exact.exact and exact.max_abs_diff < 1e-5


def test_exported_model_reloads_from_state_dict_and_config(tmp_path):
    masked = prune(random_model(CNN_VALID), {0: [2], 1: [4]})
    exported, cfg, report = export_model(masked, CNN_VALID)
    path = tmp_path / "exported.pt"
    save_exported(path, exported, cfg, report)
    loaded, loaded_cfg = load_exported(path)
    assert loaded_cfg == cfg
    x = inputs(CNN_VALID)
    torch.testing.assert_close(outputs(loaded, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_load_exported_without_sidecar_is_a_user_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({}, path)
    with pytest.raises(UserError, match="model.json"):
        load_exported(path)


class FakeTimer:
    """Stands in for ``torch.utils.benchmark.Timer``: each ``blocked_autorange`` returns the next
    round's block times of the model it times (its ``rounds`` attribute) and logs the call."""

    log: list = []

    def __init__(self, stmt, globals, num_threads):
        assert stmt == "model(x)" and num_threads == torch.get_num_threads()
        self.model, self.x = globals["model"], globals["x"]

    def blocked_autorange(self, min_run_time):
        FakeTimer.log.append((self.model.name, self.model.training, tuple(self.x.shape), min_run_time))
        return SimpleNamespace(times=self.model.rounds.pop(0))


def test_latency_is_the_median_of_all_blocks_of_all_rounds_the_models_in_turns(monkeypatch):
    monkeypatch.setattr(export.benchmark, "Timer", FakeTimer)
    FakeTimer.log = []
    a, b = nn.Identity().train(), nn.Identity()
    a.name, a.rounds = "a", [[5.0, 1.0], [6.0]]
    b.name, b.rounds = "b", [[2.0], [8.0, 4.0]]
    assert measure_latencies([a, b], (3,), batch_size=2, rounds=2, min_run_time=0.5) == [5.0, 4.0]
    assert FakeTimer.log == [("a", False, (2, 3), 0.5), ("b", False, (2, 3), 0.5)] * 2  # eval-mode copies
    assert a.training and a.rounds == [[5.0, 1.0], [6.0]]  # the caller's models are left alone


FORWARDS = []  # what Counted saw; outside the module, which measure_latencies copies


class Counted(nn.Linear):
    def forward(self, x):
        FORWARDS.append((tuple(x.shape), self.training, torch.is_inference_mode_enabled()))
        return super().forward(x)


def test_latency_is_measured_by_torch_benchmark():
    FORWARDS.clear()
    (seconds,) = measure_latencies([Counted(3, 2)], (3,), batch_size=4, rounds=1, min_run_time=0.01)
    # What ran, not how long it took: torch's timer ran the eval-mode copy on the batch, many times.
    assert isinstance(seconds, float) and seconds > 0
    assert len(FORWARDS) > 1 and set(FORWARDS) == {((4, 3), False, True)}


def test_add_latency_times_before_against_after_per_batch_size(monkeypatch):
    masked = prune(random_model(CNN_SAME), {0: [0]})
    exported, _, report = export_model(masked, CNN_SAME)
    calls = []

    def fake(models, input_shape, batch_size, rounds, min_run_time):
        calls.append((models, input_shape, batch_size, rounds, min_run_time))
        return [0.004, 0.001]

    monkeypatch.setattr(export, "measure_latencies", fake)
    timed = add_latency(report, masked, exported, batch_sizes=(1, 4), rounds=7, min_run_time=0.2)
    assert [(t.batch_size, t.rounds, t.before_ms, t.after_ms) for t in timed.latency] == [(1, 7, 4.0, 1.0), (4, 7, 4.0, 1.0)]
    assert timed.latency[0].threads == torch.get_num_threads()
    assert all(c[0][0] is masked and c[0][1] is exported for c in calls)
    assert [c[1:] for c in calls] == [((2, 10, 10), 1, 7, 0.2), ((2, 10, 10), 4, 7, 0.2)]


def test_formatted_report():
    masked = prune(random_model(CNN_SAME), {0: [0]})
    _, _, report = export_model(masked, CNN_SAME)
    timed = dataclasses.replace(report, latency=(Latency(batch_size=4, threads=2, rounds=3, before_ms=3.0, after_ms=1.5),))
    rows = [line.split() for line in format_report(timed).splitlines()]
    first_layer = next(row for row in rows if row[0] == "0")
    assert first_layer[2:] == ["conv", "6", "5", "interior"]
    assert ["4", "2", "3", "3.000", "1.500", "2.00"] in rows
    text = format_report(timed)
    assert "NOT exact" in text and f"{report.params_before:,} -> {report.params_after:,}" in text


def test_export_seed_reports_both_accuracies_when_inexact(tmp_path, capsys, monkeypatch):
    fast_latency(monkeypatch)
    masked = prune(random_model(CNN_SAME), {0: [0, 3], 1: [1]})
    images = torch.randint(0, 256, (16, *CNN_SAME.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    test = Split(images, torch.arange(16) % 4)
    cfg = experiment({"type": "cnn", "input_shape": [2, 10, 10], "conv_channels": [6, 5], "kernel_size": 3,
                      "padding": "same", "pool_every": 2, "fc_sizes": [7], "output_size": 4, "batch_norm": True})
    export_seed(masked, cfg, test, tmp_path / "seed0.pt")
    out = capsys.readouterr().out
    assert "test accuracy: pruned (masked)" in out and "exported model:" in out and "2.00" in out
    small, small_cfg = load_exported(tmp_path / "seed0.pt")
    assert small_cfg.conv_channels == (4, 4)
    record = export.read_json(tmp_path / "seed0.json")
    assert set(record["model"]) == set(MODEL_KEYS["cnn"]) and len(record["export"]["latency"]) == 2
    assert (tmp_path / "seed0.pt2").stat().st_size > 0


def docs_example() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    match = re.search(re.escape(DOCS_MARKER) + r".*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/export.md's loading example (marked " + DOCS_MARKER + ") was not found"
    return match.group(1)


def test_the_docs_loading_example_runs_as_printed_without_the_repository(tmp_path):
    mlp = ModelConfig(type="mlp", input_size=784, hidden_sizes=(16, 8), output_size=10)
    small, small_cfg, report = export_model(prune(random_model(mlp), {0: [1, 2]}), mlp)
    save_exported(tmp_path / "seed0.pt", small, small_cfg, report)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "seed0.pt2").write_bytes((tmp_path / "seed0.pt2").read_bytes())
    guard = 'import importlib.util\nassert importlib.util.find_spec("src") is None\n'
    printed = run_isolated(guard + docs_example(), work).stdout
    assert re.fullmatch(r"tensor\(\[(\d, ){7}\d\]\)\n", printed)
