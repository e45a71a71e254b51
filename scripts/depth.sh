#!/usr/bin/env bash
# The depth-pruning study on the residual MLP (config/depth-fmnist, endpoints in its README.md):
# trains the 10 seeds of the pilot's model, then runs every cell of the study, each cell one
# process (python3 -m src.reproduce CELL: its configs and seeds in that process, one thread), and
# copies the per-seed records into docs/depth/records/<cell>/<config>/, committed packed
# (docs/depth/records.tar.xz). The report is then made from the records by
# `python3 -m src.report.committed depth-fmnist`.
#
# Usage: bash scripts/depth.sh [JOBS]   JOBS processes at a time, one thread each [2]
# Needs Fashion-MNIST (apt-get install dataset-fashion-mnist). Finished trainings and removal counts
# are skipped, so an interrupted study resumes where it stopped.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
PROG=depth.sh
JOBS=${1:-2}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || fail 2 "JOBS must be a positive integer, got: $JOBS"
# The trained models are committed in $OUT/models (230 KB each), apart from the default models/ that other
# runs share, so a rerun only prunes.
STUDY=config/depth-fmnist OUT=docs/depth TRAIN=config/depth-fmnist/e0-none/tail.json MODELS=docs/depth/models
# The cells without retraining first: the study's main question, and the cheapest.
ORDER=(e0-none e0-lstsq width-e0-lstsq e1-none e1-lstsq width-e1-lstsq)
cd "$REPO"
setup_python
export OMP_NUM_THREADS=1
start=$(date +%s)

# Every config of the study shares one trained model per seed.
seq 0 9 | xargs -P "$JOBS" -I{} "$PYTHON" main_train.py "$TRAIN" --seed {} --threads 1 --wandb disabled --models-dir "$MODELS"
printf "$STUDY/%s\n" "${ORDER[@]}" | xargs -P "$JOBS" -I{} "$PYTHON" -m src.reproduce {} --threads 1 --models-dir "$MODELS"

copy_records "$STUDY" "$OUT"
tar -cJf "$OUT/records.tar.xz" -C "$OUT" records
echo "wall time $(( $(date +%s) - start ))s with $JOBS processes ($(nproc) CPUs)" | tee "$OUT/wall-time.txt"
