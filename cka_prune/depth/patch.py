"""The least-squares patch of a removed span (ReplaceMe, 2025), its scores, and folding it.

**Fit.** A span maps input rows X (N, D) to output rows Y (N, D). The patch is the affine map
y = x W + b (W (D, D), b (D,)) that minimises the ridge objective with an unpenalised intercept

    ||Y - X W - 1 b^T||_F^2 + lam ||W||_F^2,   lam = ridge * s,   s = mean(diag Cxx) = tr(Cxx) / D,

so ``ridge`` is scale-free (s is the mean centred sum of squares of an input feature). The
intercept takes the means, b = my - mx W, and the centred normal equations give

    W = (Cxx + lam I)^{-1} Cxy        (Cxx = Xc^T Xc, Cxy = Xc^T Yc: `Moments.centered`).

At ridge 0 the solution is the least-norm one (numpy.linalg.lstsq on Cxx W = Cxy, which equals
pinv(Xc) Yc: the same as lstsq on [X, 1]). With Yhat = Xc W (the centred patched output):

    residual = ||Yc - Xc W||_F^2 / ||Yc||_F^2 = (tr Cyy - 2 tr(W^T Cxy) + tr(W^T Cxx W)) / tr Cyy
    cka_refit = CKA(Y, Yhat) = ||Yc^T Xc W||_F^2 / (||Cyy||_F ||W^T Cxx W||_F),  Yc^T Xc W = Cxy^T W.

**Folding.** The patch P(x) = x W + b is applied per position (a Linear on the last dimension, or a
1x1 conv on channels). It can be merged into an adjacent layer exactly when nothing else is in
between and nothing else reads the connecting tensor:

- *after*, into the consumer Linear L(z) = z A^T + c (A (p, D)) that alone reads the span's output:
  L(P(x)) = (x W + b) A^T + c = x (A W^T)^T + (A b + c): weight A W^T (p, D), bias A b + c. The same
  holds for a 1x1 Conv2d without padding (A = its (p, D) matrix). It fails with a nonlinearity or a
  normalisation in between (relu(xW + b) is no affine function of x), or when the residual stream
  also goes elsewhere (a later block reads the same tensor, so P must stay).
- *before*, into the producer Linear/Conv2d whose output alone feeds the span: x = F(u) + c with F
  linear, so P(x) = F(u) W + (c W + b); a conv's output channels mix pointwise, so the new kernel is
  sum_k W[k, o] K[k, :, i, j] and the new bias c W + b for any kernel size, stride and padding (the
  conv's bias, unlike its input, is added at every position, padded or not).

In a pre-norm residual network the span's output usually feeds both the next block's norm and its
skip connection, so the patch stays a small module (its MACs count); folding applies where the
span sits next to an embedding, a stem or a head. `fold` cannot see the model's dataflow: the
caller names the adjacent layer, and ``example`` checks the result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cka_prune.depth.blocks import get_block
from cka_prune.depth.recording import Moments


@dataclass(frozen=True)
class Patch:
    """y ~ x W + b per position: weight W (D_in, D_out), bias b (D_out,), the ridge it was fit with,
    its relative residual error on the calibration rows, and whether it acts on conv channels."""

    weight: np.ndarray
    bias: np.ndarray
    ridge: float
    error: float
    conv: bool

    def module(self) -> nn.Module:
        """An nn.Linear (features last) or a 1x1 nn.Conv2d (channels) computing x W + b, float64
        (``.to`` the model's dtype)."""
        d_in, d_out = self.weight.shape
        f64 = {"dtype": torch.float64}
        layer = nn.Conv2d(d_in, d_out, 1, **f64) if self.conv else nn.Linear(d_in, d_out, **f64)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight.T.copy()).reshape(layer.weight.shape))
            layer.bias.copy_(torch.from_numpy(self.bias))
        return layer


def ridge_scale(cxx: np.ndarray) -> float:
    """s = mean(diag Cxx): the penalty's unit, so that lam = ridge * s does not depend on the scale."""
    return float(np.mean(np.diag(cxx)))


def solve(cxx: np.ndarray, cxy: np.ndarray, ridge: float) -> np.ndarray:
    """W = (Cxx + ridge s I)^{-1} Cxy, the least-norm solution at ridge 0 (module docstring)."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if ridge == 0:
        return np.linalg.lstsq(cxx, cxy, rcond=None)[0]
    return np.linalg.solve(cxx + ridge * ridge_scale(cxx) * np.eye(cxx.shape[0]), cxy)


def relative_error(cxx: np.ndarray, cxy: np.ndarray, cyy: np.ndarray, w: np.ndarray) -> float:
    """||Yc - Xc W||^2 / ||Yc||^2 from the centred moments (0/0: 0, nothing to explain)."""
    total = float(np.trace(cyy))
    err = total - 2.0 * float(np.sum(w * cxy)) + float(np.sum(w * (cxx @ w)))
    return max(err, 0.0) / total if total > 0 else 0.0


def refit_cka(cxx: np.ndarray, cxy: np.ndarray, cyy: np.ndarray, w: np.ndarray) -> float:
    """Linear CKA(Y, Xc W) = ||Cxy^T W||_F^2 / (||Cyy||_F ||W^T Cxx W||_F) (0 where nothing varies)."""
    den = float(np.linalg.norm(cyy) * np.linalg.norm(w.T @ cxx @ w))
    return float(np.sum((cxy.T @ w) ** 2)) / den if den > 0 else 0.0


def linear_cka(moments: Moments) -> float:
    """CKA(X, Y) = ||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F) (0 where nothing varies)."""
    cxx, cxy, cyy = moments.centered()
    den = float(np.linalg.norm(cxx) * np.linalg.norm(cyy))
    return float(np.sum(cxy**2)) / den if den > 0 else 0.0


def fit_patch(moments: Moments, ridge: float = 1e-3) -> Patch:
    """The ridge least-squares patch of a span from its moments (module docstring)."""
    if moments.xtx.size == 0:
        raise ValueError("the patch needs the linear moments (record with linear=True)")
    cxx, cxy, cyy = moments.centered()
    w = solve(cxx, cxy, ridge)
    mx, my = moments.means()
    return Patch(w, my - mx @ w, ridge, relative_error(cxx, cxy, cyy, w), moments.conv)


def _matrix(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return layer.weight
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1 and \
            layer.padding in ((0, 0), "valid"):
        return layer.weight[:, :, 0, 0]
    raise ValueError("a patch folds after into an nn.Linear or a 1x1 nn.Conv2d without padding or groups, "
                     f"not {type(layer).__name__}")


def fold_after(layer: nn.Module, patch: nn.Module) -> None:
    """`layer` (reading the patch's output) becomes layer o patch, in place: A -> A W^T, c -> A b + c."""
    a = _matrix(layer)
    w, b = patch.weight.reshape(patch.weight.shape[0], -1), patch.bias  # (D_out, D_in) = W^T
    with torch.no_grad():
        bias = a @ b + (layer.bias if layer.bias is not None else 0.0)
        if layer.bias is None:
            layer.bias = nn.Parameter(bias)
        else:
            layer.bias.copy_(bias)
        layer.weight.copy_((a @ w).reshape(layer.weight.shape))


def fold_before(layer: nn.Module, patch: nn.Module) -> None:
    """`layer` (producing the patch's input) becomes patch o layer, in place: kernel -> W^T K,
    bias c -> c W + b."""
    if not (isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)):
        raise ValueError("a patch folds before into an nn.Linear or an nn.Conv2d without groups, "
                         f"not {type(layer).__name__}")
    wt, b = patch.weight.reshape(patch.weight.shape[0], -1), patch.bias  # (D_out, D_in) = W^T
    with torch.no_grad():
        kernel = torch.tensordot(wt, layer.weight, dims=([1], [0]))
        bias = wt @ layer.bias + b if layer.bias is not None else b.clone()
        layer.weight = nn.Parameter(kernel)
        layer.bias = nn.Parameter(bias)
        if isinstance(layer, nn.Linear):
            layer.out_features = kernel.shape[0]
        else:
            layer.out_channels = kernel.shape[0]


def fold(model: nn.Module, block: str, into: str, side: str, example: Any = None, atol: float = 1e-5) -> nn.Module:
    """A copy of the pruned `model` with the patch held by the Skip at `block` (a removed span's
    first block) merged into the layer `into`: side "after" (`into` alone reads the span's output)
    or "before" (`into`'s output alone feeds the span); the Skip becomes the identity. Exact under
    the conditions in the module docstring, which the caller asserts; with `example` (a tensor
    input), the folded model's output must equal the unfolded one's within `atol`, else ValueError.
    """
    if side not in ("after", "before"):
        raise ValueError(f"side must be 'after' or 'before', got {side!r}")
    folded = copy.deepcopy(model)
    skip = get_block(folded, block)
    if getattr(skip, "patch", None) is None:
        raise ValueError(f"{block!r} holds no patch (not a removed span's first block, or compensate='none')")
    (fold_after if side == "after" else fold_before)(get_block(folded, into), skip.patch)
    skip.patch = None
    if example is not None:
        with torch.no_grad():
            gap = float((folded.eval()(example) - model.eval()(example)).abs().max())
        if not gap <= atol:
            raise ValueError(f"folding the patch of {block!r} into {into!r} changes the output by {gap:.3g}: "
                             "the layers are not adjacent (module docstring)")
    return folded
