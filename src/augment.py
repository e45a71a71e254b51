"""Training-time augmentation on whole batches: random crop with zero padding, horizontal flip.

The standard CIFAR recipe (pad 4, random 32x32 crop, flip with probability 1/2), done for a
batch at once with one gather on the batch's device instead of a Python loop over samples.
For a batch ``x`` of shape ``(B, C, H, W)`` and ``P = PADDING``, sample ``b`` becomes

    out[b, c, i, j] = X[b, c, dy[b] + i, dx[b] + j']     j' = W - 1 - j if flip[b] else j

where ``X`` is ``x`` zero-padded by ``P`` on every side, ``dy, dx`` are uniform in ``[0, 2P]``
(``dy = dx = P`` is the original image) and ``flip`` is true with probability 1/2.
"""

from __future__ import annotations

import torch
from torch import nn

PADDING = 4


def crop_and_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                  padding: int = PADDING) -> torch.Tensor:
    """Per-sample crop of the padded batch, then a per-sample horizontal flip.

    x: ``(B, C, H, W)``; dy, dx: int64 ``(B,)`` in ``[0, 2 * padding]``; flip: bool ``(B,)``;
    all on one device. Returns a tensor of ``x``'s shape and dtype.
    """
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=x.device)                     # (B, H)
    columns = torch.arange(w, device=x.device).expand(b, w)
    columns = torch.where(flip[:, None], w - 1 - columns, columns) + dx[:, None]  # (B, W)
    return padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = PADDING) -> torch.Tensor:
    """Random crop and flip of every sample of ``x`` ``(B, C, H, W)``.

    The draws come from ``generator`` (a CPU generator, so that a checkpoint of its state
    resumes them exactly) and are moved to ``x``'s device: three small ``(B,)`` tensors.
    """
    b = x.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    device = x.device
    return crop_and_flip(x, dy.to(device), dx.to(device), flip.to(device), padding)
