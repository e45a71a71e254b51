"""Training-loop overhead: the project's fit() vs a bare in-memory PyTorch loop.

Both train the ex1 MLP (784-512-512-10, dropout 0.5, Adam, batch 512) for one epoch on
60,000 synthetic 28x28 uint8 images and then evaluate 5,000 validation images, in the same
process, alternating runs. Target: fit() within 1.3x of the bare loop.

    .venv/bin/python bench/train_speed.py [--repeats 3] [--device cpu]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ModelConfig, TrainParams  # noqa: E402
from src.data import Split, Splits  # noqa: E402
from src.models import build_model  # noqa: E402
from src.train import fit  # noqa: E402


def synthetic(n: int, generator: torch.Generator) -> Split:
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (n,), generator=generator))


def bare_epoch(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
               batch_size: int, device: torch.device) -> None:
    """The minimal loop on float images prepared once (untimed): index slices of a permutation."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for idx in torch.randperm(len(y_train), device=device).split(batch_size):
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for chunk in x_val.split(1024):
            model(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    splits = Splits(train=synthetic(60_000, gen), val=synthetic(5_000, gen), test=synthetic(10, gen), num_classes=10).to(device)
    cfg = ModelConfig(hidden_sizes=(512, 512), dropout_rate=0.5)
    params = TrainParams(lr=1e-3, batch_size=512, epochs=1, patience=1)
    x_train, y_train = splits.train.images.float().div(255), splits.train.labels
    x_val = splits.val.images.float().div(255)
    times = {"project": [], "bare": []}
    for _ in range(args.repeats):
        for name in times:
            torch.manual_seed(0)
            model = build_model(cfg).to(device)
            start = time.perf_counter()
            if name == "project":
                fit(model, splits, params, seed=0, device=device, label="bench")
            else:
                bare_epoch(model, x_train, y_train, x_val, params.batch_size, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    project, bare = statistics.median(times["project"]), statistics.median(times["bare"])
    ratio = project / bare
    print(f"device {device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"project fit():  {project:.3f} s/epoch")
    print(f"bare loop:      {bare:.3f} s/epoch")
    print(f"ratio:          {ratio:.3f}x  (target <= 1.3x: {'PASS' if ratio <= 1.3 else 'FAIL'})")


if __name__ == "__main__":
    main()
