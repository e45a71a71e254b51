"""CKA importance vs magnitude and the forward pass, one pruner step per model, side by side.

    .venv/bin/python bench/tp_speed_table.py [--images 64] [--px 64] [--models resnet18 mobilenetv2 vit_tiny]

One thread. Per model (random weights, BatchNorm statistics from one training-mode pass): a
ResNet-18 and a MobileNetV2 of the standard (ImageNet) shapes, written here without timm or
torchvision, and a ViT-tiny-shaped transformers ``ViTForImageClassification`` (hidden 192,
12 layers, 3 heads, intermediate 768, patch 16). All on ``--images`` random images of
``--px`` pixels. Times, each on its own copy of the model:

- forward: one forward pass of the scoring batch (no grad, eval);
- magnitude: ``pruner.step()`` with Torch-Pruning's ``MagnitudeImportance`` (ratio 0.5);
- CKA: ``CKAImportance.record`` on the scoring batch + ``pruner.step()`` (same pruner settings);
- ratio: CKA / (magnitude + forward), target <= 3;
- slowest group: the longest single call of the CKA importance, against the forward (target <= 1).
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
    """Torch-Pruning's settings for the model: the classifier kept; a ViT's q/k/v head dims pruned
    per head (Torch-Pruning's Hugging Face ViT example), its logits as the output."""
    if name != "vit_tiny":
        return {"ignored_layers": [model[-1]]}
    from transformers.models.vit.modeling_vit import ViTAttention
    heads = {}
    for module in model.modules():
        if isinstance(module, ViTAttention):
            heads.update({module.q_proj: module.num_attention_heads, module.k_proj: module.num_attention_heads,
                          module.v_proj: module.num_attention_heads})
    return {"ignored_layers": [model.classifier], "num_heads": heads, "prune_head_dims": True,
            "prune_num_heads": False, "output_transform": lambda out: out.logits.sum()}


def _build(name: str, px: int, images: torch.Tensor) -> nn.Module:
    model = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}[name]() if name != "vit_tiny" else vit_tiny(px)
    with torch.no_grad():
        model.train()(images)  # non-trivial BatchNorm running statistics
    return model.eval()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _TimedImportance:
    """Wraps an importance, keeping the time of each group's call."""

    def __init__(self, importance: tp.importance.Importance):
        self.importance, self.times = importance, []

    def __call__(self, group: tp.Group):
        start = time.perf_counter()
        out = self.importance(group)
        self.times.append((time.perf_counter() - start, str(group[0].dep.target._name)))
        return out


def measure(name: str, model: nn.Module, images: torch.Tensor) -> dict:
    """The row of the table for one model."""
    with torch.no_grad():
        forward = min(_timed(lambda: model(images)) for _ in range(2))
    example = images[:1]

    def pruner(importance, net):
        return tp.pruner.MetaPruner(net, example, importance=importance, pruning_ratio=RATIO,
                                    **_pruner_args(name, net))

    magnitude_model = copy.deepcopy(model)
    magnitude_pruner = pruner(tp.importance.MagnitudeImportance(p=2), magnitude_model)
    magnitude = _timed(magnitude_pruner.step)

    cka_model = copy.deepcopy(model)
    cka = CKAImportance()
    timed = _TimedImportance(cka)
    cka_pruner = pruner(timed, cka_model)
    record = _timed(lambda: cka.record(cka_model, images, pruner=cka_pruner))
    step = _timed(cka_pruner.step)
    slowest, slowest_name = max(timed.times)
    return {"model": name, "forward": forward, "magnitude": magnitude, "record": record, "step": step,
            "ratio": (record + step) / (magnitude + forward), "slowest": slowest, "slowest_name": slowest_name,
            "groups": len(timed.times), "skipped": len(cka.skipped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="scoring images")
    parser.add_argument("--px", type=int, default=64, help="image side in pixels")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2", "vit_tiny"],
                        choices=["resnet18", "mobilenetv2", "vit_tiny"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.px, args.px)
    print(f"{args.images} images of {args.px} px, 1 thread, pruning ratio {RATIO}; times in seconds")
    print(f"{'model':12} {'forward':>8} {'magnitude':>9} {'record':>7} {'CKA step':>8} {'ratio':>6} "
          f"{'slowest group':>13} {'/forward':>8}  groups (skipped)  slowest")
    passed = True
    for name in args.models:
        row = measure(name, _build(name, args.px, images), images)
        passed &= row["ratio"] <= TARGET_RATIO and row["slowest"] <= row["forward"]
        print(f"{name:12} {row['forward']:8.3f} {row['magnitude']:9.3f} {row['record']:7.3f} {row['step']:8.3f} "
              f"{row['ratio']:5.1f}x {row['slowest']:13.3f} {row['slowest'] / row['forward']:7.2f}x  "
              f"{row['groups']:6} ({row['skipped']})  {row['slowest_name']}", flush=True)
    print(f"target: ratio <= {TARGET_RATIO:.0f}x and no group slower than the forward pass: "
          f"{'PASS' if passed else 'FAIL'}")


if __name__ == "__main__":
    main()
