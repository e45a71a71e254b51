"""The depth pilot: how much each block of a trained residual model is worth, removed without a patch.

    .venv/bin/python bench/depth_pilot.py CONFIG [--seed S] [--models-dir models] [--out FILE.json]

For the model that main_train.py trained for CONFIG and seed S (CONFIG's first seed by default):
the dense metrics; the exhaustive single-block damage (each block of ``model.blocks`` replaced
by ``nn.Identity`` alone, the rest intact); and the ``tail`` curve (the last k blocks replaced,
k = 1..n). Every network is evaluated on the validation and test splits (loss and accuracy per
target: per image, or per next byte for the decoder). A pre-norm block computes
``x + f(x)``, so the identity is that block with ``f = 0``: no patch, no retraining.
Prints two tables and writes everything as JSON to ``--out``.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.artifacts import load_model, model_path  # noqa: E402
from src.config import load_config  # noqa: E402
from src.train import evaluate_all, load_experiment_data  # noqa: E402


def without(model: nn.Module, removed: list[int]) -> nn.Module:
    """A copy of ``model`` with ``blocks[i]`` replaced by the identity for every i in ``removed``."""
    pruned = copy.deepcopy(model)
    for i in removed:
        pruned.blocks[i] = nn.Identity()
    return pruned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    path = model_path(cfg, seed, args.models_dir)
    splits = load_experiment_data(cfg, torch.device("cpu"))
    model = load_model(path, cfg)
    n = len(model.blocks)
    start = time.perf_counter()

    def measure(removed: list[int]) -> dict[str, float]:
        return evaluate_all(without(model, removed), splits, args.batch_size, torch.device("cpu"), ("val", "test"))

    result = {"config": str(args.config), "seed": seed, "model": str(path), "blocks": n, "dense": measure([]),
              "single": [measure([i]) for i in range(n)],
              "tail": [measure(list(range(n - k, n))) for k in range(1, n + 1)]}
    result["seconds"] = time.perf_counter() - start
    dense = result["dense"]
    print(f"{path.name}: {n} blocks; dense val loss {dense['val_loss']:.4f} acc {dense['val_acc']:.4f}, "
          f"test loss {dense['test_loss']:.4f} acc {dense['test_acc']:.4f}")
    for name, rows, label in (("single block removed", result["single"], "block"), ("tail", result["tail"], "k")):
        print(f"\n{name}\n{label:>5}  val loss  (x dense)  test acc  (pp)")
        for i, row in enumerate(rows):
            print(f"{i if label == 'block' else i + 1:5d}  {row['val_loss']:8.4f}  {row['val_loss'] / dense['val_loss']:9.3f}"
                  f"  {row['test_acc']:8.4f}  {100 * (row['test_acc'] - dense['test_acc']):+6.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
