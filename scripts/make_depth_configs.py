"""Write config/depth-fmnist/: the depth-pruning study's configs (the residual MLP).

Usage: python3 scripts/make_depth_configs.py

One folder per cell (retraining budget x compensation), one config per criterion of
cka_prune.depth.CRITERIA in each, every config removing 1/4, 1/2 and 3/4 of the 12 blocks
(each count from the trained model), greedy, single blocks. The model, data and training are the
pilot's (config/depth-pilot/resmlp-w32.json), so every config shares one trained model per seed.
The damage table (every block removed alone, every criterion's scores) is recorded once per
compensation, by the e0 cells' `tail`; latency only in the e0-lstsq cell. The width cells prune
the same models' widths at the MACs of the depth endpoint, with the least-squares refit. Rerun it after changing
the grid; the configs it writes are committed.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "config"
PILOT = CONFIG / "depth-pilot" / "resmlp-w32.json"
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


def grid() -> dict[Path, dict]:
    """Every config of the study by its path under config/."""
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
                configs[Path("depth-fmnist", f"{budget}-{compensate}", f"{name}.json")] = {
                    "_comment": comment, "model": pilot["model"], "data": pilot["data"], "params": pilot["params"],
                    "prune": {"strategy": "depth", "params": params}, "seeds": SEEDS}
    for budget, epochs in BUDGETS.items():
        for name, rates in WIDTH_RATES.items():
            comment = (f"Depth study, width at matched MACs (config/depth-fmnist/README.md): {name}, one-shot at "
                       f"each rate from the trained model, compensate lstsq, retraining {budget}.")
            params = {"type": name, "rates": rates, "compensate": "lstsq", "samples": SAMPLES, "retrain_epochs": epochs}
            configs[Path("depth-fmnist", f"width-{budget}-lstsq", f"{name}.json")] = {
                "_comment": comment, "model": pilot["model"], "data": pilot["data"], "params": pilot["params"],
                "prune": {"strategy": "one_shot", "params": params}, "seeds": SEEDS}
    return configs


def main() -> None:
    configs = grid()
    for path, raw in configs.items():
        (CONFIG / path).parent.mkdir(parents=True, exist_ok=True)
        lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in raw.items())
        (CONFIG / path).write_text("{\n" + lines + "\n}\n")
    print(f"wrote {len(configs)} configs under {CONFIG}/depth-fmnist")


if __name__ == "__main__":
    main()
