"""Peak memory of recording the CKA importance's scoring samples against a plain forward pass.

    .venv/bin/python bench/tp_recording_memory.py [--images 1024] [--max-samples 512] [--before /work/main]

A ViT-tiny-shaped transformers ViT (hidden 192, 12 layers, 3 heads, MLP 768, 64 px, patch 16:
17 tokens per image), random weights, ``--images`` random images in one batch, one thread. Each
measurement runs in a fresh subprocess that builds the model, the images and the pruner (heads,
MLPs and residual stream, ``residual='cka'``), then does one thing: ``forward`` (the batch
through the model without gradients) or ``record`` (``CKAImportance(max_samples).record`` of the
batch). Peak RSS is the process's high-water mark (``ru_maxrss``); "added" is the peak less the
RSS just before the measured call. ``kept`` is what the recording holds afterwards. PASS when the
recording's added peak is at most the forward pass's plus twice ``kept``. ``--before DIR``
also records with the ``cka_prune`` of another checkout (e.g. the code before the reservoir).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(mode: str, images: int, max_samples: int, code: str) -> dict:
    sys.path.insert(0, code)
    import torch
    import torch_pruning as tp
    from transformers import ViTConfig, ViTForImageClassification

    from cka_prune import CKAImportance

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                                intermediate_size=768, image_size=64, patch_size=16,
                                                num_labels=10)).eval()
    x = torch.randn(images, 3, 64, 64)
    heads = {p: a.num_attention_heads for a in model.modules() if hasattr(a, "q_proj")
             for p in (a.q_proj, a.k_proj, a.v_proj)}
    new = "residual" in CKAImportance.__init__.__code__.co_varnames
    imp = CKAImportance(max_samples=max_samples, **({"residual": "cka"} if new else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, x[:1], importance=imp, pruning_ratio=0.5, num_heads=heads,
                                      prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5,
                                      ignored_layers=[model.classifier], output_transform=lambda out: out.logits)
    before = rss_bytes()
    if mode == "forward":
        with torch.no_grad():
            model(x)
        kept = 0
    else:
        imp.record(model, x, batch_size=images, pruner=pruner)
        outputs = imp.recorded.outputs if new else imp.outputs
        kept = sum(y.numel() * y.element_size() for y in outputs.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak, "added": peak - before, "kept": kept}


def measure(mode: str, args: argparse.Namespace, code: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--images", str(args.images),
                          "--max-samples", str(args.max_samples), "--code", str(code)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--max-samples", type=int, default=512)
    parser.add_argument("--before", type=Path, help="another checkout's root, recorded too")
    parser.add_argument("--child", choices=("forward", "record"), help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.images, args.max_samples, args.code)))
        return
    rows = [("forward", measure("forward", args, ROOT)), ("record", measure("record", args, ROOT))]
    if args.before:
        rows.append((f"record ({args.before})", measure("record", args, args.before)))
    print(f"ViT-tiny shape, {args.images} images x 17 tokens, max_samples={args.max_samples}, one thread")
    print(f"{'':<28}{'peak RSS MB':>12}{'added MB':>10}{'kept MB':>9}")
    for name, r in rows:
        print(f"{name:<28}{r['peak'] / MB:>12.0f}{r['added'] / MB:>10.0f}{r['kept'] / MB:>9.1f}")
    forward, record = rows[0][1], rows[1][1]
    bound = forward["added"] + 2 * record["kept"]
    verdict = "PASS" if record["added"] <= bound else "FAIL"
    print(f"{verdict}: recording adds {record['added'] / MB:.0f} MB <= forward's {forward['added'] / MB:.0f} MB "
          f"+ 2 x kept {record['kept'] / MB:.1f} MB = {bound / MB:.0f} MB")


if __name__ == "__main__":
    main()
