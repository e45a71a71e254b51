"""The layer-by-layer CKA heatmap: its values, and the report option that draws it."""

import numpy as np
import pytest
import torch

import main_prune
import main_train
from cka_prune.cka import feature_space_linear_cka
from src import results
from src.config import ModelConfig, load_config
from src.data import Split
from src.errors import UserError
from src.heatmap import layer_cka_matrix, representations, seed_heatmap
from src.models import build_model, prunable_layers
from src.pruning.masks import remove_neurons
from src.report import main

CPU = torch.device("cpu")


def test_heatmap_values_are_lib_ckas_linear_cka_of_the_layers_outputs():
    torch.manual_seed(0)
    config = ModelConfig(type="mlp", input_size=16, hidden_sizes=(6, 5), output_size=3)
    original, pruned = build_model(config), build_model(config)
    pruned.load_state_dict(original.state_dict())
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.3 * torch.randn_like(p))
    remove_neurons(prunable_layers(pruned)[0].block.layer, [1, 4])
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    split = Split(images, torch.zeros(40, dtype=torch.int64))

    def by_hand(model):
        """Each layer's output written out: relu(W x + b) twice, then the logits."""
        x = images.flatten(1).double() / 255
        outs = []
        for block in model.hidden:
            x = torch.relu(x @ block.layer.weight.double().T + block.layer.bias.double())
            outs.append(x)
        outs.append(x @ model.output.weight.double().T + model.output.bias.double())
        return [o.detach().numpy() for o in outs]

    hooked = representations(pruned, split, batch_size=16, device=CPU)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(hooked, by_hand(pruned)))
    assert not hooked[0][:, [1, 4]].any() or np.ptp(hooked[0][:, [1, 4]], axis=0).max() == 0  # removed: constant
    matrix = layer_cka_matrix(representations(original, split, 16, CPU), hooked)
    expected = np.array([[feature_space_linear_cka(x, y) for y in by_hand(pruned)] for x in by_hand(original)])
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    self_matrix = layer_cka_matrix(by_hand(original), by_hand(original))
    np.testing.assert_allclose(np.diag(self_matrix), 1.0)


def test_report_draws_the_heatmap_of_a_pruned_run(write_config, tmp_path):
    config = write_config("tiny", prune={"strategy": "iterative", "params": {"type": "l1", "iterations": 2, "rate": 0.25},
                                         "modules": [0, 1]})
    common = [str(config), "--models-dir", str(tmp_path / "models")]
    assert main_train.main(common) == 0 and main_prune.main(common + ["--output-dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "tiny"
    args = [str(run_dir), "--out", str(tmp_path / "report"), "--config-root", str(tmp_path), "--heatmap", "0",
            "--heatmap-samples", "200", "--format", "png,svg"]
    assert main(args) == 0
    assert {p.name for p in (tmp_path / "report").glob("cka_heatmap_seed0.*")} == {"cka_heatmap_seed0.png",
                                                                                   "cka_heatmap_seed0.svg"}
    assert "![cka_heatmap_seed0](cka_heatmap_seed0.png)" in (tmp_path / "report" / "report.md").read_text()

    cfg = load_config(config)
    result = results.load(run_dir / "0.json")
    from src.data import load_splits
    heat = seed_heatmap(cfg, result, run_dir, "l1", load_splits(cfg.data).val, 200, CPU)
    assert heat.iteration == 2 and heat.alive == (*result.alive().values(), 10) and heat.widths == (48, 32, 10)
    assert np.all((heat.matrix > 0) & (heat.matrix <= 1 + 1e-9))
    assert np.all(np.diag(heat.matrix) < 1 - 1e-6)  # pruned and retrained: no layer is the original's

    with pytest.raises(UserError, match="has no result for seed 7"):
        main(args[:-4] + ["--heatmap", "7"])
    (tmp_path / "tiny.json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(UserError, match=r"tiny\.json: not found; --heatmap builds"):
        main(args)
