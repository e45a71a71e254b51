"""Speed of the CKA importance on every Torch-Pruning group of cifar_resnet_56.

    .venv/bin/python bench/tp_importance_speed.py [--threads 2] [--samples 512]

Random weights (BatchNorm statistics from one training-mode pass), N CIFAR-shaped random
inputs. Times (a) one forward pass over the N samples, for scale; (b) recording the Conv2d
outputs (one forward pass with hooks); (c) the exact greedy CKA importance of every group
(fast engine), as Torch-Pruning's pruner calls it. Prints PASS/FAIL of (c) against the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (the target is for 2 cores)")
    parser.add_argument("--samples", type=int, default=512, help="scoring samples N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # BLAS reads its thread count when NumPy is first imported, so set it before that import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import torch_pruning as tp

    from cka_prune.tp import CKAImportance
    from src.models import cifar_resnet_56
    from src.pruning.physical import classifier

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = cifar_resnet_56()
    x = torch.rand(args.samples, 3, 32, 32)
    with torch.no_grad():
        model.train()(x[:256])  # non-trivial BatchNorm running statistics
    model.eval()

    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    forward = time.perf_counter() - start

    importance = CKAImportance()
    start = time.perf_counter()
    importance.record(model, x)
    recording = time.perf_counter() - start

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    groups = list(graph.get_all_groups(ignored_layers=[classifier(model)], root_module_types=(torch.nn.Conv2d,)))
    start = time.perf_counter()
    for group in groups:
        importance(group)
    scoring = time.perf_counter() - start

    print(f"cifar_resnet_56, N = {args.samples}, {args.threads} threads, {len(groups)} groups")
    print(f"  one forward pass:                 {forward:8.3f} s")
    print(f"  recording conv outputs:           {recording:8.3f} s")
    print(f"  CKA importance of all groups:     {scoring:8.3f} s   "
          f"(target <= {TARGET_S:.0f} s: {'PASS' if scoring <= TARGET_S else 'FAIL'})")


if __name__ == "__main__":
    main()
