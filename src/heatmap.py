"""Layer-by-layer CKA between a trained network and its pruned version (Kornblith et al. 2019, Figure 3 style).

For N validation samples, let X_i (N, p_i) be the output of layer i of the trained network and
Y_j (N, q_j) that of layer j of the pruned network, each flattened per sample. The heatmap is

    M[i, j] = CKA_linear(X_i, Y_j) = <H K_i H, H L_j H>_F / (||H K_i H||_F ||H L_j H||_F),
    K_i = X_i X_i^T, L_j = Y_j Y_j^T (N, N), H = I - 11^T / N,

computed with :mod:`cka_prune.cka` from the Gram matrices, so a conv layer's large feature maps cost
no more than a Linear layer's. Layers are the prunable blocks' outputs (after BatchNorm, ReLU
and pooling: what the next layer sees) and the network's logits. A removed neuron is a
constant output (its bias through ReLU), which centering ignores.

Only the last iteration's pruned network is stored (``output/<experiment>/checkpoints/
seed<S>.pt``), so the heatmap compares the trained network with the final pruned one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cka_prune.cka import cka, gram_linear
from src import results
from src.artifacts import ModelFileError, load_model
from src.config import ExperimentConfig
from src.data import Split, iterate_batches
from src.errors import UserError, brief
from src.models import Net, build_model, prunable_layers
from src.pruning.masks import alive_neurons, load_masked_state
from src.results import SeedResult


@dataclass(frozen=True)
class Heatmap:
    """``matrix[i, j]``: CKA between layer i of the trained network and layer j of the pruned one.

    ``widths``: neurons per layer (the logits last); ``alive``: those the pruned network kept.
    """

    label: str
    seed: int
    iteration: int  # the pruning iteration the pruned network is the result of
    matrix: np.ndarray  # (L, L)
    widths: tuple[int, ...]
    alive: tuple[int, ...]


def representations(model: Net, split: Split, batch_size: int, device: torch.device) -> list[np.ndarray]:
    """Each prunable block's output and the logits on ``split``, in forward order: float64 (N, D) arrays."""
    modules = [*model.blocks(), model.output]
    outputs: list[list[torch.Tensor]] = [[] for _ in modules]
    hooks = [module.register_forward_hook(lambda _m, _i, out, store=store: store.append(out.flatten(1).cpu()))
             for module, store in zip(modules, outputs)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in iterate_batches(split, batch_size, device=device):
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [torch.cat(store).double().numpy() for store in outputs]


def layer_cka_matrix(original: Sequence[np.ndarray], pruned: Sequence[np.ndarray]) -> np.ndarray:
    """M[i, j] = linear CKA(original[i], pruned[j]); each a (N, D) array of the same N samples."""
    grams_x = [gram_linear(x) for x in original]
    grams_y = [gram_linear(y) for y in pruned]
    return np.array([[cka(k, l) for l in grams_y] for k in grams_x])


def _pruned_network(cfg: ExperimentConfig, checkpoint: Path) -> tuple[Net, int]:
    """The masked network of a prune checkpoint and the iteration it ends."""
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no pruning checkpoint (run main_prune.py for this seed first)")
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = build_model(cfg.model)
        load_masked_state(model, saved["state_dict"], cfg.require_prune().modules)
        iterations = len(SeedResult.from_dict(saved["result"]).iterations)
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise UserError(f"{checkpoint}: unusable pruning checkpoint ({brief(err)})") from None
    return model, iterations


def seed_heatmap(cfg: ExperimentConfig, result: SeedResult, result_dir: Path, label: str, val: Split,
                 samples: int, device: torch.device) -> Heatmap:
    """The heatmap of one seed's run: its trained model vs its last checkpointed pruned network.

    ``samples``: the first that many validation samples. UserError (one line naming the file)
    when the trained model is missing or is no longer the one the run pruned.
    """
    if cfg.model.uses_torch_pruning:
        raise UserError(f"{cfg.source}: --heatmap compares numbered layers of mlp and cnn models; a "
                        f"{cfg.model.type} is pruned physically through Torch-Pruning groups and is not supported")
    model_file = Path(result.model_file)
    if not model_file.is_file():
        raise UserError(f"{model_file}: the trained model of {result_dir} seed {result.seed} is missing")
    if results.file_sha256(model_file) != result.model_sha256:
        raise UserError(f"{model_file}: not the trained model {result_dir} seed {result.seed} pruned "
                        "(its sha256 differs: it was trained again since)")
    try:
        original = load_model(model_file, cfg, device)
    except ModelFileError as err:
        raise UserError(str(err)) from None
    pruned, iteration = _pruned_network(cfg, Path(result_dir) / "checkpoints" / f"seed{result.seed}.pt")
    pruned.to(device)
    first = Split(val.images[:samples], val.labels[:samples])
    matrix = layer_cka_matrix(representations(original, first, cfg.params.batch_size, device),
                              representations(pruned, first, cfg.params.batch_size, device))
    layers = prunable_layers(pruned)
    alive = [int(alive_neurons(layer.block.layer).sum()) for layer in layers]
    widths = [layer.width for layer in layers]
    outputs = pruned.output.out_features
    return Heatmap(label, result.seed, iteration, matrix, (*widths, outputs), (*alive, outputs))
