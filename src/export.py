"""Export a pruned model as files that run without this repository; measure what pruning saved.

A masked model (mlp, cnn) is first cut down to its smaller dense network
(:func:`src.pruning.surgery.smaller_dense`); a model Torch-Pruning pruned (the zoo) already is
one. :func:`save_exported` writes, for ``seedS.pt``:

* ``seedS.pt2``: the network as a ``torch.export`` program (its graph of ATen operations with
  its weights, the batch dimension dynamic), which ``torch.export.load(path).module()`` runs
  with torch alone: no import of this repository, of its model classes or of Torch-Pruning;
* ``seedS.pt``: its state dict, and ``seedS.json``: the model config's keys that apply to its
  type (the zoo's also the Torch-Pruning history), with which :func:`load_exported` rebuilds it
  as this repository's module.

A network depth pruning made (:func:`export_depth`) is saved the same way, its sidecar naming
the blocks removed (rebuilt as ``cka_prune.depth`` Skip modules and their patches).

The report (:class:`ExportReport`) holds parameters and MACs per sample before and after
(:func:`src.pruning.shrink.network_size`, Torch-Pruning's counter), the largest output
difference from the pruned model on random inputs, and CPU latency before and after
(:func:`add_latency`, ``torch.utils.benchmark``).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tabulate import tabulate
from torch import nn
from torch.utils import benchmark

from src.artifacts import sidecar_path
from src.config import ExperimentConfig, ModelConfig, parse_config
from src.data import Split
from src.depth_results import DepthPoint
from src.errors import UserError, brief
from src.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, read_json
from src.models import Net, build_model
from src.pruning.masks import make_permanent
from src.pruning.physical import rebuild
from src.pruning.shrink import model_input_shape, network_size
from src.pruning.surgery import LayerCut, smaller_dense
from src.train import evaluate

# Samples of uniform [0, 1) inputs (the range of the image data) for the built-in output check.
CHECK_SAMPLES = 64
# The model config's keys each model type uses; the sidecar records only these.
MODEL_KEYS = {
    "mlp": ("type", "input_size", "hidden_sizes", "output_size", "dropout_rate"),
    "cnn": ("type", "input_shape", "conv_channels", "kernel_size", "padding", "pool_every", "fc_sizes",
            "batch_norm", "dropout_rate", "output_size"),
    "zoo": ("type", "depth", "width", "input_shape", "output_size"),
    "resmlp": ("type", "depth", "width", "mlp_ratio", "input_shape", "output_size"),
    "vit": ("type", "depth", "width", "heads", "patch_size", "mlp_ratio", "input_shape", "output_size"),
    "decoder": ("type", "depth", "width", "heads", "mlp_ratio"),  # its context and outputs: the data's
}


@dataclass(frozen=True)
class Latency:
    """Median CPU time of one forward pass of a batch, dense (before) and pruned (after).

    Each model is timed by ``torch.utils.benchmark.Timer.blocked_autorange`` once per round,
    the models in turns, so that a change in machine load affects both alike.
    """

    batch_size: int
    threads: int
    rounds: int
    before_ms: float
    after_ms: float


@dataclass(frozen=True)
class ExportReport:
    layers: tuple[LayerCut, ...]  # per masked layer; () for a model Torch-Pruning pruned
    input_shape: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff: float          # largest |output difference| on CHECK_SAMPLES random inputs
    warnings: tuple[str, ...] = ()
    latency: tuple[Latency, ...] = ()

    @property
    def exact(self) -> bool:
        """True when the exported model computes the pruned model's outputs exactly."""
        return all(layer.fold != "interior" for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact": self.exact}


def model_record(cfg: ModelConfig) -> dict[str, Any]:
    """``cfg`` as a JSON dict of the keys its type uses (:data:`MODEL_KEYS`; a lenet5 has no depth, width)."""
    keys = MODEL_KEYS.get(cfg.type, MODEL_KEYS["zoo"])
    return {k: v for k, v in asdict(cfg).items() if k in keys and v is not None}


def measure_latencies(models: Sequence[nn.Module], input_shape: tuple[int, ...], batch_size: int,
                      rounds: int = 5, min_run_time: float = 0.1) -> list[float]:
    """Median seconds of one CPU forward pass of a ``(batch_size, *input_shape)`` batch, per model.

    Eval-mode CPU copies run under ``torch.inference_mode`` with torch's current thread count.
    In each of ``rounds`` rounds every model in turn is timed by ``blocked_autorange`` for at
    least ``min_run_time`` seconds (after its own warm-up); the median is over all the timed
    blocks of all rounds (each block's time is per forward pass).
    """
    if batch_size < 1 or rounds < 1 or min_run_time <= 0:
        raise ValueError(f"need batch_size >= 1, rounds >= 1, min_run_time > 0; "
                         f"got {batch_size}, {rounds}, {min_run_time}")
    x = torch.rand(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    timers = [benchmark.Timer("model(x)", globals={"model": _eval_copy(model), "x": x},
                              num_threads=torch.get_num_threads()) for model in models]
    times: list[list[float]] = [[] for _ in timers]
    with torch.inference_mode():
        for _ in range(rounds):
            for timer, samples in zip(timers, times):
                samples.extend(timer.blocked_autorange(min_run_time=min_run_time).times)
    return [statistics.median(samples) for samples in times]


def add_latency(report: ExportReport, before: nn.Module, after: nn.Module, batch_sizes: tuple[int, ...] = (1, 64),
                rounds: int = 5, min_run_time: float = 0.1) -> ExportReport:
    """``report`` with the CPU latencies of the dense ``before`` and the pruned ``after`` per batch size."""
    rows = []
    for b in batch_sizes:
        before_s, after_s = measure_latencies([before, after], report.input_shape, b, rounds, min_run_time)
        rows.append(Latency(batch_size=b, threads=torch.get_num_threads(), rounds=rounds,
                            before_ms=1e3 * before_s, after_ms=1e3 * after_s))
    return dataclasses.replace(report, latency=tuple(rows))


def export_model(masked: Net, model_cfg: ModelConfig) -> tuple[Net, ModelConfig, ExportReport]:
    """The smaller dense model equivalent to ``masked`` in eval mode (:func:`smaller_dense`), its
    config and a report (no latency). ``masked`` is not modified."""
    surgery = smaller_dense(masked, model_cfg)
    shape = model_input_shape(model_cfg)
    (params_before, macs_before), (params_after, macs_after) = (network_size(m, shape) for m in (masked, surgery.model))
    report = ExportReport(
        layers=surgery.layers, input_shape=shape, params_before=params_before, params_after=params_after,
        macs_before=macs_before, macs_after=macs_after, max_abs_diff=_max_abs_diff(masked, surgery.model, shape),
        warnings=surgery.warnings,
    )
    return surgery.model, surgery.config, report


def physical_report(original: nn.Module, pruned: nn.Module, model_cfg: ModelConfig) -> ExportReport:
    """The report of a model Torch-Pruning pruned: the sizes of ``original`` (dense) and ``pruned``.

    The pruned model is what is exported, so there are no layer cuts and the outputs are its own.
    """
    shape = model_input_shape(model_cfg)
    (params_before, macs_before), (params_after, macs_after) = (network_size(m, shape) for m in (original, pruned))
    return ExportReport(layers=(), input_shape=shape, params_before=params_before, params_after=params_after,
                        macs_before=macs_before, macs_after=macs_after, max_abs_diff=0.0)


def program_path(path: str | Path) -> Path:
    """Where :func:`save_exported` puts the ``torch.export`` program of the model saved at ``path``."""
    return Path(path).with_suffix(".pt2")


def save_program(path: str | Path, model: nn.Module, input_shape: tuple[int, ...],
                 example: torch.Tensor | None = None) -> None:
    """``model`` (an eval-mode CPU copy) as a ``torch.export`` program at ``path``, batch dimension dynamic.

    Traced on ``example`` (default: a uniform [0, 1) batch of ``input_shape``), of 2 samples (a
    batch of 1 would be specialised as a constant); the program then takes any batch size.
    """
    if example is None:
        example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch")
    program = torch.export.export(_eval_copy(model), (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_exported(path: str | Path, model: nn.Module, model_cfg: ModelConfig, report: ExportReport,
                  history: list | None = None) -> None:
    """The program at :func:`program_path`, the state dict at ``path``, then the sidecar beside it:
    ``{"model": model_record(config), "program": file name, "export": report}``, plus the
    Torch-Pruning ``history`` that rebuilds a zoo model's architecture from its config."""
    path = Path(path)
    save_program(program_path(path), model, report.input_shape)
    atomic_torch_save(path, model.state_dict())
    record = {"model": model_record(model_cfg), "program": program_path(path).name, "export": report.to_dict()}
    if history is not None:
        record["history"] = history
    atomic_write_json(sidecar_path(path), record)


def load_exported(path: str | Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild an exported model (CPU, eval mode) as this repository's module from ``path`` and its sidecar."""
    path = Path(path)
    sidecar = sidecar_path(path)
    try:
        record = read_json(sidecar)
    except (OSError, ValueError) as err:
        raise UserError(f"{sidecar}: cannot read the exported model's config ({type(err).__name__})") from None
    if not isinstance(record, dict) or "model" not in record:
        raise UserError(f"{sidecar}: model is missing (the exported model's config)")
    cfg = parse_config({"model": record["model"], **({"data": record["data"]} if "data" in record else {})},
                       sidecar).model
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    if "history" in record:  # pruned physically: replay the pruning on the built model
        rebuild(model, torch.zeros(1, *cfg.input_shape), record["history"])
    state = _read_state(path)
    if "depth" in record:  # blocks removed: Skip modules in their place, patches of the saved shapes
        _remove_blocks(model, record["depth"]["spans"], state)
    try:
        model.load_state_dict(state)
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise UserError(f"{path}: cannot load exported weights ({brief(err)})") from None
    return model.eval(), cfg


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise UserError(f"{path}: cannot load exported weights ({brief(err)})") from None


def _remove_blocks(model: nn.Module, spans: Sequence[str], state: dict[str, torch.Tensor]) -> None:
    """Replace the blocks of ``spans`` (labels: names joined by ``+``) by ``cka_prune.depth`` Skip modules, a
    span with a saved patch (``<first block>.patch.weight``) by one of that shape, its values from ``state``."""
    from cka_prune import depth
    from cka_prune.depth.blocks import remove
    patches = {}
    for span in spans:
        weight = state.get(f"{span.split('+')[0]}.patch.weight")
        if weight is not None:
            d_out, d_in = weight.shape[:2]
            patches[span] = depth.Patch(np.zeros((d_in, d_out)), np.zeros(d_out), 0.0, 0.0, conv=weight.dim() == 4)
    remove(model, [tuple(span.split("+")) for span in spans], patches)


def format_report(report: ExportReport) -> str:
    """A few lines for a terminal: widths per layer, parameters, MACs, latency, exactness."""
    lines = []
    if report.layers:
        layers = [[r.index, r.name, r.kind, r.width_before, r.width_after, f"{r.fold} ({r.note})" if r.note else r.fold]
                  for r in report.layers]
        lines.append(tabulate(layers, headers=["layer", "name", "kind", "width", "kept", "fold"]))
    lines += [f"parameters: {_change(report.params_before, report.params_after)}",
              f"MACs per sample (Torch-Pruning's count): {_change(report.macs_before, report.macs_after)}"]
    if report.latency:
        timings = [[t.batch_size, t.threads, t.rounds, t.before_ms, t.after_ms, t.before_ms / t.after_ms]
                   for t in report.latency]
        lines += ["CPU latency, median forward pass (torch.utils.benchmark):",
                  tabulate(timings, headers=["batch", "threads", "rounds", "dense ms", "pruned ms", "speedup"],
                           floatfmt=("", "", "", ".3f", ".3f", ".2f"))]
    verdict = "exact" if report.exact else "NOT exact (zero padding at borders)"
    lines.append(f"outputs: {verdict}; max |difference| on {CHECK_SAMPLES} random inputs {report.max_abs_diff:.2e}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join(lines)


def _change(before: int, after: int) -> str:
    percent = 100.0 * (after - before) / before if before else 0.0
    return f"{before:,} -> {after:,} ({percent:+.1f}%)"


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode, so measuring never touches the caller's model or its mode."""
    return copy.deepcopy(model).cpu().eval()


def _max_abs_diff(masked: Net, exported: Net, input_shape: tuple[int, ...]) -> float:
    x = torch.rand(CHECK_SAMPLES, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float((_eval_copy(masked)(x) - _eval_copy(exported)(x)).abs().max())


def export_physical(model: nn.Module, cfg: ExperimentConfig, history: list, path: Path) -> None:
    """Save a model Torch-Pruning already made smaller (:func:`save_exported`, with the pruning
    history); print its size and CPU latency against the dense architecture of the config."""
    model = model.cpu().eval()
    with torch.random.fork_rng(devices=[]):
        original = build_model(cfg.model)
    report = add_latency(physical_report(original, model, cfg.model), original, model)
    save_exported(path, model, cfg.model, report, history)
    print(format_report(report))
    print(f"exported model: {path} (program {program_path(path)})")


def export_seed(model: Net, cfg: ExperimentConfig, test: Split, path: Path) -> None:
    """Save a masked model as a smaller dense one (:func:`save_exported`); print its size, speed and accuracy.

    Latency compares the masked model with its masks folded into dense weights (the same
    arithmetic, without the per-call mask multiplication) and the smaller one. Where the fold is
    not exact (zero padding), the test accuracy of both models is printed.
    """
    model = model.cpu()  # latency is measured on the CPU
    small, small_cfg, report = export_model(model, cfg.model)
    report = add_latency(report, make_permanent(_eval_copy(model)), small)
    save_exported(path, small, small_cfg, report)
    print(format_report(report))
    if not report.exact:
        cpu = torch.device("cpu")
        masked_acc = evaluate(model, test, cfg.params.batch_size, cpu).acc
        small_acc = evaluate(small, test, cfg.params.batch_size, cpu).acc
        print(f"test accuracy: pruned (masked) {masked_acc:.4f}, exported {small_acc:.4f}")
    print(f"exported model: {path} (program {program_path(path)})")


def export_depth(pruned: nn.Module, dense: nn.Module, point: DepthPoint, cfg: ExperimentConfig,
                 example: torch.Tensor, path: Path) -> None:
    """Save a network depth pruning made (:mod:`src.pruning.depth`; ``point`` its
    :class:`src.depth_results.DepthPoint`): the ``torch.export`` program at :func:`program_path`,
    traced on ``example`` (two input samples), the state dict at ``path``, and the sidecar
    ``{"model": the dense model's config, "program", "data": the dataset (and a text dataset's
    context, which sizes a decoder), "depth": the removed blocks and patch, "export": sizes, the
    program's largest output difference, latencies}``, from which :func:`load_exported` rebuilds it.

    Sizes and latencies are the point's (one thread, batch 1 and 64; ``latency_seconds`` None when
    the run did not time them), the dense network's beside them.
    """
    from cka_prune import depth  # the depth library only where depth pruning runs
    pruned = _eval_copy(pruned)
    example = example.cpu()
    save_program(program_path(path), pruned, tuple(example.shape[1:]), example)
    with torch.inference_mode():
        program = torch.export.load(program_path(path)).module()
        difference = float((program(example) - pruned(example)).abs().max())
    dense_cost = depth.cost(_eval_copy(dense), example[:1])
    atomic_torch_save(path, pruned.state_dict())
    params = cfg.require_depth().params
    data = {"dataset": cfg.data.dataset, **({} if cfg.data.context is None else {"context": cfg.data.context})}
    record = {"model": model_record(cfg.model), "program": program_path(path).name, "data": data,
              "depth": {"count": point.count, "removed": list(point.removed), "spans": list(point.spans),
                        "compensate": params.compensate, "criterion": params.criterion},
              "export": {"params_before": dense_cost.params, "params_after": point.parameters,
                         "macs_before": dense_cost.macs, "macs_after": point.macs, "max_abs_diff": difference,
                         "latency_seconds": point.latency_seconds}}
    atomic_write_json(sidecar_path(path), record)
    print(f"exported model: {path} (program {program_path(path)}; blocks removed: {point.count}, "
          f"MACs {_change(dense_cost.macs, point.macs)}, program max |difference| {difference:.2e})")
