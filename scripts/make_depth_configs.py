"""Write the depth-pruning studies' configs: config/depth-fmnist/ (the residual MLP) and
config/depth-lm/ (the byte-level decoder).

Usage: python3 scripts/make_depth_configs.py

One folder per cell, one config per criterion of cka_prune.depth.CRITERIA in it (fewer where the
study's README says so). Each study's model, data and training are its pilot's
(config/depth-pilot/), so every config of a study shares one trained model per seed; each removal
count is pruned from the trained model. The damage table (every block removed alone, every
criterion's scores) is recorded once per compensation, by the e0 cells' `tail`; latency only in
the e0-lstsq cell. depth-fmnist: 1/4, 1/2 and 3/4 of the 12 blocks, greedy, single blocks, and
width cells pruning the same models' widths at the MACs of the depth endpoint, with the
least-squares refit. depth-lm: 1, 2, 4 and 6 of the 8 blocks without retraining, 1 with one epoch,
and a one-shot span cell (Gromov et al.'s selection). Rerun it after changing a grid; the configs
it writes are committed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import write_configs  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config"
PILOT = CONFIG / "depth-pilot" / "resmlp-w32.json"
LM_PILOT = CONFIG / "depth-pilot" / "decoder-long.json"
SEEDS = list(range(10))
FRACTIONS = [0.25, 0.5, 0.75]
SAMPLES = 512
CRITERIA = ("cka", "cosine", "angular", "tail", "loss", "pons", "random", "residual", "cka-refit")
BUDGETS = {"e0": 0, "e1": 1}
COMPENSATIONS = ("none", "lstsq")
DAMAGE = "tail"  # the config of each e0 cell that records the damage table
# Width pruning of the same models at the rates whose MACs match 6 of 12 blocks removed with the
# patch (the first rate) and without it (the second), within 2 %: Torch-Pruning's criteria prune every
# group (the residual stream's too), cka the blocks' hidden units.
WIDTH_RATES = {"tp_l1": [0.09375, 0.1875], "tp_taylor": [0.09375, 0.1875], "cka": [0.28125, 0.53125]}


def _config(pilot: dict, comment: str, strategy: str, params: dict, seeds: list[int]) -> dict:
    return {"_comment": comment, "model": pilot["model"], "data": pilot["data"], "params": pilot["params"],
            "prune": {"strategy": strategy, "params": params}, "seeds": seeds}


def fmnist_grid() -> dict[Path, dict]:
    """Every config of the residual MLP's study by its path under config/."""
    pilot = json.loads(PILOT.read_text())
    configs = {}
    for budget, epochs in BUDGETS.items():
        for compensate in COMPENSATIONS:
            for name in CRITERIA:
                params = {"criterion": name, "fractions": FRACTIONS, "greedy": True, "span": 1,
                          "compensate": compensate, "samples": SAMPLES, "retrain_epochs": epochs,
                          "damage": epochs == 0 and name == DAMAGE,
                          "latency": epochs == 0 and compensate == "lstsq"}
                comment = (f"Depth study (config/depth-fmnist/README.md): {name}, 3/6/9 of 12 blocks removed greedily "
                           f"from the trained model, compensate {compensate}, retraining {budget}.")
                configs[Path("depth-fmnist", f"{budget}-{compensate}", f"{name}.json")] = _config(
                    pilot, comment, "depth", params, SEEDS)
    for budget, epochs in BUDGETS.items():
        for name, rates in WIDTH_RATES.items():
            comment = (f"Depth study, width at matched MACs (config/depth-fmnist/README.md): {name}, one-shot at "
                       f"each rate from the trained model, compensate lstsq, retraining {budget}.")
            params = {"type": name, "rates": rates, "compensate": "lstsq", "samples": SAMPLES, "retrain_epochs": epochs}
            configs[Path("depth-fmnist", f"width-{budget}-lstsq", f"{name}.json")] = _config(
                pilot, comment, "one_shot", params, SEEDS)
    return configs


LM_SEEDS = list(range(5))
LM_COUNTS = [1, 2, 4, 6]  # the endpoint (1 of 8), then 1/4, 1/2, 3/4
LM_SAMPLES = 128  # windows of 128 bytes: 16,384 positions
# One retraining epoch costs about 90 CPU-s on this decoder: the e1 cells prune only the endpoint's
# count, with the headline criteria (lstsq) and tail (none, for the patch after retraining).
LM_RETRAINED = {"lstsq": ("tail", "cosine", "angular", "cka", "residual", "cka-refit"), "none": ("tail",)}
LM_SPAN_CRITERIA = ("angular", "cosine", "cka", "residual", "cka-refit")
LM_SPAN_COUNTS = [2, 4, 6]


def lm_grid() -> dict[Path, dict]:
    """Every config of the language model's study by its path under config/."""
    pilot = json.loads(LM_PILOT.read_text())
    configs = {}

    def add(cell: str, name: str, params: dict, what: str) -> None:
        comment = f"Depth study of the language model (config/depth-lm/README.md): {name}, {what}."
        configs[Path("depth-lm", cell, f"{name}.json")] = _config(pilot, comment, "depth", params, LM_SEEDS)

    for compensate in COMPENSATIONS:
        for name in CRITERIA:
            add(f"e0-{compensate}", name, {
                "criterion": name, "blocks": LM_COUNTS, "greedy": True, "span": 1, "compensate": compensate,
                "samples": LM_SAMPLES, "retrain_epochs": 0, "damage": name == DAMAGE, "latency": compensate == "lstsq"},
                f"1/2/4/6 of 8 blocks removed greedily from the trained model, compensate {compensate}, retraining e0")
        for name in LM_RETRAINED[compensate]:
            add(f"e1-{compensate}", name, {
                "criterion": name, "blocks": [1], "greedy": True, "span": 1, "compensate": compensate,
                "samples": LM_SAMPLES, "retrain_epochs": 1, "latency": False},
                f"1 of 8 blocks removed, compensate {compensate}, one retraining epoch")
    for name in LM_SPAN_CRITERIA:
        add("span-e0-lstsq", name, {
            "criterion": name, "blocks": LM_SPAN_COUNTS, "greedy": False, "span": True, "compensate": "lstsq",
            "samples": LM_SAMPLES, "retrain_epochs": 0, "latency": False},
            "one span of 2/4/6 consecutive blocks ranked once on the trained model, compensate lstsq, retraining e0")
    return configs


def main() -> None:
    configs = {**fmnist_grid(), **lm_grid()}
    write_configs(configs, CONFIG)
    print(f"wrote {len(configs)} configs under {CONFIG}/depth-fmnist and {CONFIG}/depth-lm")


if __name__ == "__main__":
    main()
