"""Export a pruned (masked) model to a genuinely smaller dense model.

A pruned neuron has zero incoming weights but keeps its bias, so in eval mode its output
is a constant ``c = relu(norm(bias))`` (after max pooling still ``c``; dropout is the
identity). Export deletes the neuron (a row of a Linear, a filter of a Conv2d, its
BatchNorm entries) and the matching inputs of the next layer, after adding what those
inputs contributed, ``W_next[:, removed] @ c``, to the next layer's bias:

* next Linear after a Linear: exact.
* next Linear after the last conv block: channel ``ch`` is the flattened columns
  ``ch*H*W .. (ch+1)*H*W - 1`` (NCHW), all equal to ``c_ch``: exact.
* next Conv2d without padding: every output position sees all taps of the constant
  channel, ``sum(W_next[:, ch]) * c_ch``: exact.
* next Conv2d with zero padding ("same"): border positions see fewer taps, so the folded
  interior value is wrong there. Such folds are marked ``"interior"`` in the report and
  :attr:`ExportReport.exact` is False; compare the test accuracy of both models.

Removed neurons are found as all-zero weight rows of the effective weight, which covers
both masked models and models whose masks were made permanent. Parameters are counted as
dense tensors (a masked model counts its zeros); FLOPs are multiply-accumulates (MACs) of
the Linear and Conv2d layers for one sample (biases, BatchNorm, ReLU, pooling not counted).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tabulate import tabulate
from torch import nn

from src.artifacts import sidecar_path
from src.config import ExperimentConfig, ModelConfig, parse_config
from src.data import Split
from src.errors import UserError, brief
from src.io import atomic_torch_save, atomic_write_json, read_json
from src.models import Block, Net, PrunableLayer, build_model, prunable_layers
from src.pruning.masks import make_permanent
from src.pruning.physical import rebuild
from src.train import evaluate

# Samples of uniform [0, 1) inputs (the range of the image data) for the built-in output check.
CHECK_SAMPLES = 64


@dataclass(frozen=True)
class LayerExport:
    """What export did to one prunable layer.

    ``fold``: ``"none"`` (nothing removed), ``"exact"``, or ``"interior"`` (the next conv
    zero-pads, so the fold is exact only away from the borders).
    """

    index: int
    name: str
    kind: str
    width_before: int
    width_after: int
    fold: str
    feeds: str
    note: str = ""


@dataclass(frozen=True)
class Latency:
    """Median CPU time of one forward pass of a batch, before and after export."""

    batch_size: int
    repeats: int
    threads: int
    before_ms: float
    after_ms: float


@dataclass(frozen=True)
class ExportReport:
    layers: tuple[LayerExport, ...]
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
        """True when the exported model computes the masked model's outputs exactly."""
        return all(layer.fold != "interior" for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact": self.exact}


def model_input_shape(cfg: ModelConfig) -> tuple[int, ...]:
    """The shape of one input sample: ``(input_size,)`` for an MLP, ``(C, H, W)`` for a CNN."""
    return (cfg.input_size,) if cfg.type == "mlp" else tuple(cfg.input_shape)


def count_parameters(model: nn.Module) -> int:
    """Dense parameter count (a masked weight counts in full; BatchNorm running stats do not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of all Linear and Conv2d layers for one sample of ``input_shape``."""
    model = _eval_copy(model)
    counts: list[int] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            counts.append(module.in_features * module.out_features)
        else:
            kh, kw = module.kernel_size
            counts.append(output.numel() * module.in_channels // module.groups * kh * kw)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(hook)
    with torch.inference_mode():
        model(torch.zeros(1, *input_shape))
    return sum(counts)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                    repeats: int = 50, warmup: int = 5) -> float:
    """Median seconds of one CPU forward pass of a ``(batch_size, *input_shape)`` batch.

    Runs an eval-mode copy on the CPU under ``torch.inference_mode`` with torch's current
    thread count, after ``warmup`` untimed passes.
    """
    return measure_latencies([model], input_shape, batch_size, repeats, warmup)[0]


def measure_latencies(models: Sequence[nn.Module], input_shape: tuple[int, ...], batch_size: int,
                      repeats: int = 50, warmup: int = 5) -> list[float]:
    """:func:`measure_latency` of several models, timed in turns.

    Alternating the models in every repeat lets a change in machine load (other processes)
    affect all of them alike, so their ratio stays meaningful on a busy machine.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, {warmup}")
    copies = [_eval_copy(model) for model in models]
    x = torch.rand(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in copies]
    with torch.inference_mode():
        for _ in range(warmup):
            for model in copies:
                model(x)
        for _ in range(repeats):
            for model, samples in zip(copies, times):
                start = time.perf_counter()
                model(x)
                samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def add_latency(report: ExportReport, masked: Net, exported: Net,
                batch_sizes: tuple[int, ...] = (1, 256), repeats: int = 50) -> ExportReport:
    """``report`` with CPU latencies before and after export for each batch size.

    "Before" times the masked model with its masks folded into dense weights: the same
    arithmetic as the masked model, without the per-call mask multiplication.
    """
    dense = make_permanent(_eval_copy(masked))
    rows = []
    for b in batch_sizes:
        before, after = measure_latencies([dense, exported], report.input_shape, b, repeats)
        rows.append(Latency(batch_size=b, repeats=repeats, threads=torch.get_num_threads(),
                            before_ms=1e3 * before, after_ms=1e3 * after))
    return dataclasses.replace(report, latency=tuple(rows))


def export_model(masked: Net, model_cfg: ModelConfig) -> tuple[Net, ModelConfig, ExportReport]:
    """The smaller dense model equivalent to ``masked`` in eval mode, its config and a report.

    ``masked`` is not modified. The exported model is a plain :class:`Net` on the CPU in
    eval mode, built by ``build_model(returned config)`` (the global RNG is left untouched).
    A layer that lost every neuron keeps one dead neuron (its constant output is computed
    as before), so every width stays >= 1 and the config stays valid.
    """
    layers = prunable_layers(masked)
    _check_widths(layers, model_cfg)
    outputs = [*(layer.block.layer for layer in layers), masked.output]
    weights = [_effective_weight(module) for module in outputs]
    biases = [module.bias.detach().cpu().double().clone() for module in outputs]
    keeps, records, warnings = [], [], []
    for i, layer in enumerate(layers):
        keep, note = _kept_neurons(weights[i])
        next_module, next_name = outputs[i + 1], _module_name(masked, outputs[i + 1])
        removed = ~keep
        fold = "none"
        if removed.any():
            constants = _constant_outputs(layer.block, biases[i])[removed]
            shift, exact = _fold(next_module, weights[i + 1], removed, constants)
            biases[i + 1] += shift
            fold = "exact" if exact else "interior"
            if not exact:
                warnings.append(
                    f"layer {i} ({layer.name}): removed channels feed {next_name}, which zero-pads its input; "
                    "their constant contribution is folded as its interior value, so outputs near the image "
                    "borders differ from the masked model; compare the test accuracy of both")
        weights[i + 1] = _drop_inputs(next_module, weights[i + 1], keep)
        keeps.append(keep)
        records.append(LayerExport(index=i, name=layer.name, kind=layer.kind, width_before=layer.width,
                                   width_after=int(keep.sum()), fold=fold, feeds=next_name, note=note))
    small_cfg = _smaller_config(model_cfg, [r.width_after for r in records])
    with torch.random.fork_rng(devices=[]):
        exported = build_model(small_cfg)
    exported.load_state_dict(_exported_state(masked, exported, weights, biases, keeps))
    exported.eval()
    input_shape = model_input_shape(model_cfg)
    report = ExportReport(
        layers=tuple(records), input_shape=input_shape,
        params_before=count_parameters(masked), params_after=count_parameters(exported),
        macs_before=count_macs(masked, input_shape), macs_after=count_macs(exported, input_shape),
        max_abs_diff=_max_abs_diff(masked, exported, input_shape), warnings=tuple(warnings),
    )
    return exported, small_cfg, report


def save_exported(path: str | Path, model: Net, model_cfg: ModelConfig, report: ExportReport) -> None:
    """Weights as a state dict at ``path``, then ``{"model": config, "export": report}`` beside it."""
    path = Path(path)
    atomic_torch_save(path, model.state_dict())
    atomic_write_json(sidecar_path(path), {"model": asdict(model_cfg), "export": report.to_dict()})


def load_exported(path: str | Path) -> tuple[Net, ModelConfig]:
    """Rebuild an exported model (CPU, eval mode) from ``path`` and its sidecar JSON."""
    path = Path(path)
    sidecar = sidecar_path(path)
    try:
        record = read_json(sidecar)
    except (OSError, ValueError) as err:
        raise UserError(f"{sidecar}: cannot read the exported model's config ({type(err).__name__})") from None
    if not isinstance(record, dict) or "model" not in record:
        raise UserError(f"{sidecar}: model is missing (the exported model's config)")
    cfg = parse_config({"model": record["model"]}, sidecar).model
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    if "history" in record:  # pruned physically: replay the pruning on the built model
        rebuild(model, torch.zeros(1, *cfg.input_shape), record["history"])
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise UserError(f"{path}: cannot load exported weights ({brief(err)})") from None
    return model.eval(), cfg


def format_report(report: ExportReport) -> str:
    """A few lines for a terminal: widths per layer, parameters, MACs, latency, exactness."""
    layers = [[r.index, r.name, r.kind, r.width_before, r.width_after, f"{r.fold} ({r.note})" if r.note else r.fold]
              for r in report.layers]
    lines = [tabulate(layers, headers=["layer", "name", "kind", "width", "kept", "fold"]),
             f"parameters: {_change(report.params_before, report.params_after)}",
             f"MACs per sample (Linear + Conv2d): {_change(report.macs_before, report.macs_after)}"]
    if report.latency:
        timings = [[t.batch_size, t.threads, t.repeats, t.before_ms, t.after_ms, t.before_ms / t.after_ms]
                   for t in report.latency]
        lines += ["CPU latency, median forward pass:",
                  tabulate(timings, headers=["batch", "threads", "repeats", "before ms", "after ms", "speedup"],
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


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (``weight_orig * weight_mask`` when masked), float64 CPU.

    Computed here rather than read from ``module.weight``, which a masked layer only
    refreshes in its next forward pass (stale right after ``load_state_dict``).
    """
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        weight = module.weight_orig * module.weight_mask
    else:
        weight = module.weight
    return weight.detach().cpu().double().clone()


def _kept_neurons(weight: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Bool ``(out,)``: neurons with a nonzero incoming weight; at least one is kept."""
    keep = weight.flatten(1).ne(0).any(dim=1)
    if keep.any():
        return keep, ""
    keep[0] = True
    return keep, f"all {len(keep)} neurons removed; one dead neuron kept"


def _constant_outputs(block: Block, bias: torch.Tensor) -> torch.Tensor:
    """``(width,)``: each neuron's eval-mode block output if its weights were zero.

    The layer then outputs its bias everywhere; BatchNorm (running statistics) and ReLU act
    per channel, and max pooling and dropout (eval) leave a constant map constant.
    """
    z = bias
    if isinstance(block.norm, nn.BatchNorm2d):
        bn = block.norm
        scale = bn.weight.detach().cpu().double() / torch.sqrt(bn.running_var.cpu().double() + bn.eps)
        z = (z - bn.running_mean.cpu().double()) * scale + bn.bias.detach().cpu().double()
    return torch.relu(z)


def _fold(next_module: nn.Module, next_weight: torch.Tensor, removed: torch.Tensor,
          constants: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The next layer's bias shift ``(out,)`` from constant inputs, and whether it is exact.

    next_weight: Linear ``(out, in)`` with ``in = channels * positions``, or Conv2d
    ``(out, channels, kh, kw)``; removed: bool ``(channels,)``; constants: ``(n_removed,)``.
    """
    channels = removed.numel()
    if isinstance(next_module, nn.Linear):
        per_channel = next_weight.reshape(next_weight.shape[0], channels, -1)[:, removed].sum(-1)
        return per_channel @ constants, True
    per_channel = next_weight[:, removed].sum(dim=(2, 3))
    padding = next_module.padding
    unpadded = padding == "valid" or (not isinstance(padding, str) and all(p == 0 for p in padding))
    # Reflect/replicate/circular padding of a constant map is constant: exact as well.
    return per_channel @ constants, unpadded or next_module.padding_mode != "zeros"


def _drop_inputs(next_module: nn.Module, next_weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``next_weight`` without the input columns/channels of removed neurons."""
    if isinstance(next_module, nn.Conv2d):
        return next_weight[:, keep]
    out = next_weight.shape[0]
    return next_weight.reshape(out, keep.numel(), -1)[:, keep].reshape(out, -1)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _check_widths(layers: list[PrunableLayer], cfg: ModelConfig) -> None:
    expected = list(cfg.hidden_sizes) if cfg.type == "mlp" else [*cfg.conv_channels, *cfg.fc_sizes]
    widths = [layer.width for layer in layers]
    if widths != expected:
        raise UserError(f"export: the model's layer widths {widths} do not match the model config's {expected}")


def _smaller_config(cfg: ModelConfig, widths: list[int]) -> ModelConfig:
    if cfg.type == "mlp":
        return dataclasses.replace(cfg, hidden_sizes=tuple(widths))
    n_conv = len(cfg.conv_channels)
    return dataclasses.replace(cfg, conv_channels=tuple(widths[:n_conv]), fc_sizes=tuple(widths[n_conv:]))


def _exported_state(masked: Net, exported: Net, weights: list[torch.Tensor], biases: list[torch.Tensor],
                    keeps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The exported model's full state dict: kept rows of each layer (and of its BatchNorm)."""
    dtype = exported.output.weight.dtype
    state: dict[str, torch.Tensor] = {}
    for i, (old, new) in enumerate(zip(prunable_layers(masked), prunable_layers(exported))):
        keep = keeps[i]
        state[f"{new.name}.weight"] = weights[i][keep].to(dtype)
        state[f"{new.name}.bias"] = biases[i][keep].to(dtype)
        if isinstance(old.block.norm, nn.BatchNorm2d):
            prefix = new.name.rsplit(".", 1)[0] + ".norm"
            for key, value in old.block.norm.state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().cpu() if value.dim() == 0 else value.detach().cpu()[keep]
    state["output.weight"] = weights[-1].to(dtype)
    state["output.bias"] = biases[-1].to(dtype)
    return state


def _max_abs_diff(masked: Net, exported: Net, input_shape: tuple[int, ...]) -> float:
    x = torch.rand(CHECK_SAMPLES, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float((_eval_copy(masked)(x) - _eval_copy(exported)(x)).abs().max())


def export_physical(model: nn.Module, cfg: ExperimentConfig, history: list, path: Path) -> None:
    """Save a model Torch-Pruning already made smaller, with the pruning history that rebuilds its
    architecture from the config (:func:`load_exported`); print its size before and after."""
    model = model.cpu().eval()
    with torch.random.fork_rng(devices=[]):
        original = build_model(cfg.model)
    shape = tuple(cfg.model.input_shape)
    sizes = {"params_before": count_parameters(original), "params_after": count_parameters(model),
             "macs_before": count_macs(original, shape), "macs_after": count_macs(model, shape)}
    atomic_torch_save(path, model.state_dict())
    atomic_write_json(sidecar_path(path), {"model": asdict(cfg.model), "history": history, "export": sizes})
    print(f"parameters: {_change(sizes['params_before'], sizes['params_after'])}")
    print(f"MACs per sample (Linear + Conv2d): {_change(sizes['macs_before'], sizes['macs_after'])}")
    print(f"exported model: {path}")


def export_seed(model: Net, cfg: ExperimentConfig, test: Split, path: Path) -> None:
    """Save a pruned model as a smaller dense one; print its size, speed and accuracy.

    Where the fold is not exact (zero padding), the test accuracy of both models is printed.
    """
    model = model.cpu()  # latency is measured on the CPU
    small, small_cfg, report = export_model(model, cfg.model)
    report = add_latency(report, model, small)
    save_exported(path, small, small_cfg, report)
    print(format_report(report))
    if not report.exact:
        cpu = torch.device("cpu")
        masked_acc = evaluate(model, test, cfg.params.batch_size, cpu).acc
        small_acc = evaluate(small, test, cfg.params.batch_size, cpu).acc
        print(f"test accuracy: pruned (masked) {masked_acc:.4f}, exported {small_acc:.4f}")
    print(f"exported model: {path}")
