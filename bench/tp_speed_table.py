"""CKA importance vs magnitude and the forward pass, one pruner step per model, side by side.

    .venv/bin/python bench/tp_speed_table.py [--images 64] [--px 64] [--repeats 3] [--models ...]

One thread. Per model (random weights, BatchNorm statistics from one training-mode pass): a
ResNet-18 and a MobileNetV2 of the standard (ImageNet) shapes, written here without timm or
torchvision, and a ViT-tiny-shaped transformers ``ViTForImageClassification`` (hidden 192,
12 layers, 3 heads, intermediate 768, patch 16). All on ``--images`` random images of
``--px`` pixels. CPU times (one thread: the time on a core, without a shared machine's waits
for one), each on its own copy of the model, the least of ``--repeats`` runs:

- forward: one forward pass of the scoring batch (no grad, eval);
- magnitude: ``pruner.step()`` with Torch-Pruning's ``MagnitudeImportance`` (ratio 0.5);
- CKA: ``CKAImportance(residual="cka").record`` on the scoring batch + ``pruner.step()`` (same
  pruner settings; residual streams scored, so CKA prunes the groups magnitude prunes),
  with the fast engine's products in float64 (exact) and in float32;
- ratio: CKA / (magnitude + forward), target <= 3;
- slowest group: the longest single call of the CKA importance, against the forward (target <= 1).

Then float32 against float64 on every group of one recording: the largest difference of a
channel's importance (a CKA loss) and the groups whose lowest half (what a 0.5 step removes)
differs.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

# BLAS reads its thread count when NumPy is first imported: one thread, set before any import.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402

from cka_prune.tp import CKAImportance  # noqa: E402

TARGET_RATIO = 3.0
RATIO = 0.5


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3))
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18(classes: int = 1000) -> nn.Module:
    """ResNet-18 (He et al. 2016): 7x7/2 stem, max-pool, four stages of two basic blocks."""
    layers: list[nn.Module] = [*_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        expansion = [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)] if expand != 1 else []
        self.body = nn.Sequential(*expansion, *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  nn.ReLU6(inplace=True), *_conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenetv2(classes: int = 1000) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), width 1.0: the paper's (t, c, n, s) table, last conv 1280."""
    layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
    cin = 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(*layers, *_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))


def vit_tiny(px: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=px, patch_size=16, num_labels=1000)
    return ViTForImageClassification(config)


def _pruner_args(name: str, model: nn.Module) -> dict:
    """Torch-Pruning's settings for the model: the classifier kept; a ViT's whole heads pruned
    (docs/torch-pruning.md's ViT example), its logits as the output."""
    if name != "vit_tiny":
        return {"ignored_layers": [model[-1]]}
    from transformers.models.vit.modeling_vit import ViTAttention
    heads = {}
    for module in model.modules():
        if isinstance(module, ViTAttention):
            heads.update({module.q_proj: module.num_attention_heads, module.k_proj: module.num_attention_heads,
                          module.v_proj: module.num_attention_heads})
    return {"ignored_layers": [model.classifier], "num_heads": heads, "prune_num_heads": True,
            "prune_head_dims": False, "head_pruning_ratio": RATIO, "output_transform": lambda out: out.logits.sum()}


def _build(name: str, px: int, images: torch.Tensor) -> nn.Module:
    model = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}[name]() if name != "vit_tiny" else vit_tiny(px)
    with torch.no_grad():
        model.train()(images)  # non-trivial BatchNorm running statistics
    return model.eval()


def _timed(fn) -> float:
    """CPU seconds of fn(): on one thread, its time on a core, without the waits for one that a
    shared machine adds to the wall-clock time."""
    start = time.process_time()
    fn()
    return time.process_time() - start


class _TimedImportance:
    """Wraps an importance, keeping the time of each group's call."""

    def __init__(self, importance: tp.importance.Importance):
        self.importance, self.times = importance, []

    def __call__(self, group: tp.Group):
        start = time.process_time()
        out = self.importance(group)
        self.times.append((time.process_time() - start, str(group[0].dep.target._name)))
        return out


def _pruner(name: str, net: nn.Module, importance, example: torch.Tensor) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(net, example, importance=importance, pruning_ratio=RATIO, **_pruner_args(name, net))


def _cka_once(name: str, model: nn.Module, images: torch.Tensor, precision: str) -> tuple[float, float, list]:
    """(record, step, per-group times) of one CKA pruner step on a fresh copy of the model."""
    net = copy.deepcopy(model)
    cka = CKAImportance(precision=precision, residual="cka")
    timed = _TimedImportance(cka)
    pruner = _pruner(name, net, timed, images[:1])
    record = _timed(lambda: cka.record(net, images, pruner=pruner))
    return record, _timed(pruner.step), timed.times


def agreement(name: str, model: nn.Module, images: torch.Tensor) -> tuple[float, int, int]:
    """float32 against float64 on every group of one recording: (largest |difference| of a
    channel's importance, i.e. of the CKA loss along the order; groups whose lowest half, the
    channels a 0.5 step removes, differ; groups scored)."""
    cka = CKAImportance(residual="cka")
    pruner = _pruner(name, model, cka, images[:1])
    cka.record(model, images, pruner=pruner)
    worst, differ, scored = 0.0, 0, 0
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        cka.precision = "float64"
        exact = cka(group)
        cka.precision = "float32"
        fast = cka(group)
        if exact is None:
            continue
        half = len(exact) // 2
        worst = max(worst, float((exact - fast).abs().max()))
        differ += set(exact.argsort()[:half].tolist()) != set(fast.argsort()[:half].tolist())
        scored += 1
    return worst, differ, scored


def measure(name: str, model: nn.Module, images: torch.Tensor, repeats: int) -> dict:
    """The row of the table for one model: each time the least of ``repeats`` runs (the machine's
    other load only ever adds)."""
    example = images[:1]
    with torch.no_grad():
        forward = min(_timed(lambda: model(images)) for _ in range(repeats))
    magnitude = min(_timed(_pruner(name, copy.deepcopy(model), tp.importance.MagnitudeImportance(p=2),
                                   example).step) for _ in range(repeats))
    row = {"model": name, "forward": forward, "magnitude": magnitude}
    for precision in ("float64", "float32"):
        runs = [_cka_once(name, model, images, precision) for _ in range(repeats)]
        record, step = min(r[0] for r in runs), min(r[1] for r in runs)
        groups = len(runs[0][2])
        slowest = [min(r[2][g][0] for r in runs) for g in range(groups)]  # each group's least time
        row[precision] = {"record": record, "step": step, "ratio": (record + step) / (magnitude + forward),
                          "slowest": max(slowest), "slowest_name": runs[0][2][int(np.argmax(slowest))][1],
                          "groups": groups}
    row["agreement"] = agreement(name, copy.deepcopy(model), images)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="scoring images")
    parser.add_argument("--px", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the least is reported")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2", "vit_tiny"],
                        choices=["resnet18", "mobilenetv2", "vit_tiny"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.px, args.px)
    print(f"{args.images} images of {args.px} px, 1 thread, pruning ratio {RATIO}; CPU seconds, least of {args.repeats} runs")
    print(f"{'model':12} {'precision':9} {'forward':>8} {'magnitude':>9} {'record':>7} {'CKA step':>8} {'ratio':>6} "
          f"{'slowest group':>13} {'/forward':>8}  groups  slowest")
    passed = True
    agreements = []
    for name in args.models:
        row = measure(name, _build(name, args.px, images), images, args.repeats)
        for precision in ("float64", "float32"):
            r = row[precision]
            passed &= precision != "float32" or (r["ratio"] <= TARGET_RATIO and r["slowest"] <= row["forward"])
            print(f"{name:12} {precision:9} {row['forward']:8.3f} {row['magnitude']:9.3f} {r['record']:7.3f} "
                  f"{r['step']:8.3f} {r['ratio']:5.1f}x {r['slowest']:13.3f} {r['slowest'] / row['forward']:7.2f}x  "
                  f"{r['groups']:6}  {r['slowest_name']}", flush=True)
        agreements.append((name, *row["agreement"]))
    print(f"float32 target: ratio <= {TARGET_RATIO:.0f}x and no group slower than the forward pass: "
          f"{'PASS' if passed else 'FAIL'}")
    print("float32 against float64, every group of one recording:")
    for name, worst, differ, scored in agreements:
        print(f"  {name:12} largest |importance difference| {worst:.1e}; "
              f"groups whose lowest half differs: {differ} of {scored}")


if __name__ == "__main__":
    main()
