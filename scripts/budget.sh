#!/usr/bin/env bash
# The retraining-budget and compensation study on Fashion-MNIST (config/budget-fmnist): 10 seeds of
# the ex1 model (the models config/study-fmnist trains), one-shot sweeps at 50/75/90/95 % and the
# iterative 15 x 20 % schedule with one epoch per pass; report in docs/budget/.
#
# Usage: bash scripts/budget.sh [JOBS]     JOBS processes at a time, one thread each [2]
# Needs Fashion-MNIST (apt-get install dataset-fashion-mnist). Finished trainings, seeds and sweep
# points are skipped, so an interrupted study resumes where it stopped. Each config (all its seeds)
# is one process. The endpoints are fixed in config/budget-fmnist/README.md.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
PROG=budget.sh
JOBS=${1:-2}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || fail 2 "JOBS must be a positive integer, got: $JOBS"
cd "$REPO"
setup_python

STUDY=config/budget-fmnist
OUT=docs/budget
start=$(date +%s)

# Every config shares the study's trained model per seed.
seq 0 9 | xargs -P "$JOBS" -I{} "$PYTHON" main_train.py config/study-fmnist/cka.json --seed {} --threads 1
# The one-shot cells without retraining first: the study's main question, and the cheapest.
printf '%s\n' "$STUDY"/e0-*/*.json "$STUDY"/e1-nodrop-*/*.json "$STUDY"/e1-{none,bias,lstsq}/*.json "$STUDY"/iterative-*/*.json \
  | xargs -P "$JOBS" -I{} "$PYTHON" main_prune.py {} --threads 1

# The per-seed records are committed with the report (docs/budget/records/<cell>/<criterion>/).
rm -rf "$OUT/records"
for config in "$STUDY"/*/*.json; do
  cell=$(basename "$(dirname "$config")") name=$(basename "$config" .json)
  mkdir -p "$OUT/records/$cell/$name"
  cp output/budget-fmnist/"$cell/$name"/[0-9]*.json "$OUT/records/$cell/$name/"
done
ONESHOT=e0-none,e0-bias,e0-lstsq,e1-none,e1-bias,e1-lstsq,e1-nodrop-none,e1-nodrop-bias,e1-nodrop-lstsq
# Each cell's full report (every pair of criteria, Holm within the cell) ...
for cell in ${ONESHOT//,/ } iterative-none iterative-lstsq; do
  endpoint=(); [[ $cell == iterative-* ]] || endpoint=(--endpoint iteration:3)
  "$PYTHON" -m src.report "$OUT/records/$cell"/* "${endpoint[@]}" --all-pairs --out "$OUT/$cell" --format png
done
# ... and the summaries across cells, with the committed early-stopped study on the compute axes.
"$PYTHON" -m src.report.grid "$OUT/records" --cells "$ONESHOT" --endpoint iteration:3 --out "$OUT" --format png,pdf \
  --compare "$OUT"/records/iterative-*/* docs/study/records/*
"$PYTHON" -m src.report.grid "$OUT/records" --cells iterative-none,iterative-lstsq --out "$OUT/iterative" --format png,pdf
echo "wall time $(( $(date +%s) - start ))s with $JOBS processes ($(nproc) CPUs)" | tee "$OUT/wall-time.txt"
