"""Parameters, MACs and CPU latency of a pruned model before and after export.

    .venv/bin/python bench/export_latency.py [--config config/ex1/cka.json] [--iterations 1]
        [--batch-sizes 1 64] [--rounds 5] [--threads N]

Builds the config's model with random weights (the sizes and timings do not depend on the
values), removes random neurons from the config's prune.modules as ``--iterations`` passes
of prune.params.rate of the remaining neurons would, exports it and prints the report.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_config  # noqa: E402
from src.export import add_latency, export_model, format_report  # noqa: E402
from src.models import build_model, prunable_layers  # noqa: E402
from src.pruning.criteria import removal_count  # noqa: E402
from src.pruning.masks import make_permanent, remove_neurons  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/ex1/cka.json")
    parser.add_argument("--iterations", type=int, default=1, help="pruning passes to simulate (default 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, the models in turns (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    prune_cfg = cfg.require_prune()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    layers = prunable_layers(model)
    generator = torch.Generator().manual_seed(0)
    for index in prune_cfg.modules:
        order = torch.randperm(layers[index].width, generator=generator).tolist()
        alive = layers[index].width
        for _ in range(args.iterations):
            alive -= removal_count(prune_cfg.params.rate, alive)
        remove_neurons(layers[index].block.layer, order[:layers[index].width - alive])
    exported, _, report = export_model(model, cfg.model)
    dense = make_permanent(copy.deepcopy(model))  # the masked model's arithmetic, without the masks
    report = add_latency(report, dense, exported, tuple(args.batch_sizes), args.rounds)
    print(f"{args.config}: {args.iterations} x {prune_cfg.params.rate:.0%} of layers {list(prune_cfg.modules)}")
    print(format_report(report))


if __name__ == "__main__":
    main()
