"""Depth pruning: remove whole blocks of a residual network, with an optional least-squares patch.

Supported: a block is removable when its output has its input's shape (an ``nn.Sequential`` or
``nn.ModuleList`` of residual blocks: this project's CifarResNet blocks of stride 1 and equal
channels, a timm ViT's ``blocks``, a Hugging Face decoder's ``layers``/``h``); a block that changes
the shape (stride, channels) is not removable.

One call records, ranks and removes; a second builds the smaller model::

    from cka_prune import depth
    names = depth.find_blocks(model)                  # removable blocks, forward order
    plan = depth.select(model, names, batches, criterion="cka", count=3, compensate="lstsq")
    pruned = depth.apply(model, plan)                 # a deep copy without those blocks
    depth.cost(pruned, example)                       # Cost(macs, params), Torch-Pruning's counter
    depth.latency(pruned, example)                    # {1: seconds, 64: seconds}, one thread

Lower level: ``depth.record(model, names, batches, span=k)`` gives each block's (span's) `Moments`,
``depth.fit_patch(moments, ridge)`` its `Patch`, ``with depth.skipped(model, spans, patches):`` runs
the model itself with spans removed, ``depth.fold(pruned, block, into, side)`` merges a patch into
an adjacent layer; ``depth.CRITERIA[name](context)`` scores candidates.

``batches`` is any iterable of inputs (a tensor, a tuple of positional inputs or a dict of keyword
inputs, e.g. a Hugging Face batch); ``forward(model, batch)`` runs one (default: ``model(batch)``,
``model(*batch)`` or ``model(**batch)``). Rows: a block tensor (B, D) gives B rows, (B, T, D) B*T
rows (tokens), a conv's (B, C, H, W) B*H*W rows of C features; ``mask(batch)`` (a bool tensor (B,),
(B, T) or (B, H, W), e.g. an attention mask) drops rows.

Modules: :mod:`.blocks` (finding, skipping and removing blocks), :mod:`.recording` (streamed
float64 statistics), :mod:`.patch` (the ridge least-squares patch and its folding),
:mod:`.criteria` (``CRITERIA``: one small callable per criterion), :mod:`.select` (the greedy and
one-shot driver), :mod:`.cost` (MACs, parameters, latency).

A candidate is a span: a tuple of consecutive block names (one name for a single block); its label
(the key of every dict here) is the names joined by ``+``.
"""

from cka_prune.depth.blocks import Skip, apply, contiguous_spans, find_blocks, label, skipped
from cka_prune.depth.cost import Cost, cost, latency
from cka_prune.depth.criteria import CRITERIA, Context, Criterion
from cka_prune.depth.patch import Patch, fit_patch, fold
from cka_prune.depth.recording import Moments, record
from cka_prune.depth.select import DepthPlan, select

__all__ = ["CRITERIA", "Context", "Cost", "Criterion", "DepthPlan", "Moments", "Patch", "Skip", "apply",
           "contiguous_spans", "cost", "find_blocks", "fit_patch", "fold", "label", "latency", "record",
           "select", "skipped"]
