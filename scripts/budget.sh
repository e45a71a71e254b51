#!/usr/bin/env bash
# The retraining-budget and compensation study on Fashion-MNIST. `mlp` (config/budget-fmnist): 10
# seeds of the ex1 model (the models config/study-fmnist trains), one-shot sweeps at 50/75/90/95 %
# and the iterative 15 x 20 % schedule with one epoch per pass; report in docs/budget/. `resnet`
# (config/budget-fmnist-resnet): 3 seeds of config/fmnist-cpu's ResNet-20, the Torch-Pruning
# criteria one-shot at 30/50 % of every group; report in docs/budget/resnet/.
#
# Usage: bash scripts/budget.sh [JOBS] [mlp|resnet]   JOBS processes at a time, one thread each [2 mlp]
# Needs Fashion-MNIST (apt-get install dataset-fashion-mnist). Finished trainings, seeds and sweep
# points are skipped, so an interrupted study resumes where it stopped. Each config (all its seeds)
# is one process. The endpoints are fixed in each config folder's README.md. The records are
# committed packed: tar -cJf docs/budget/records.tar.xz -C docs/budget records resnet/records

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
PROG=budget.sh
JOBS=${1:-2} GRID=${2:-mlp}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || fail 2 "JOBS must be a positive integer, got: $JOBS"
case $GRID in
  mlp) STUDY=config/budget-fmnist OUT=docs/budget TRAIN=config/study-fmnist/cka.json SEEDS=9
       # The one-shot cells without retraining first: the study's main question, and the cheapest.
       ORDER=("e0-*" "e1-nodrop-*" e1-none e1-bias e1-lstsq "iterative-*") ;;
  resnet) STUDY=config/budget-fmnist-resnet OUT=docs/budget/resnet TRAIN=config/fmnist-cpu/cka.json SEEDS=2
          ORDER=(e0-none e0-lstsq e1-lstsq e1-none) ;;
  *) fail 2 "the grid must be mlp or resnet, got: $GRID" ;;
esac
cd "$REPO"
setup_python
start=$(date +%s)

# Every config of a grid shares one trained model per seed.
seq 0 "$SEEDS" | xargs -P "$JOBS" -I{} "$PYTHON" main_train.py "$TRAIN" --seed {} --threads 1
for cell in "${ORDER[@]}"; do printf '%s\n' "$STUDY"/$cell/*.json; done \
  | xargs -P "$JOBS" -I{} "$PYTHON" main_prune.py {} --threads 1

# The per-seed records are committed with the report (<out>/records/<cell>/<criterion>/).
copy_records "$STUDY" "$OUT"
# Each cell's full report (every pair of criteria, Holm within the cell, on the endpoint the grid
# fixed) and the summaries across cells, as src/report/committed.py lists them; the MLP's compute
# figure puts its iterative runs and the committed early-stopped study beside the one-shot points.
"$PYTHON" -m src.report.committed "$(basename "$STUDY")"
echo "wall time $(( $(date +%s) - start ))s with $JOBS processes ($(nproc) CPUs)" | tee "$OUT/wall-time.txt"
