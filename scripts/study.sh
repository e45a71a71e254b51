#!/usr/bin/env bash
# The beyond-the-paper study on Fashion-MNIST (config/study-fmnist): 5 seeds of the ex1 model,
# pruned 15 x 20 % by the paper's CKA, its variants and the baselines; report in docs/study/.
#
# Usage: bash scripts/study.sh [JOBS]     JOBS processes at a time, one thread each [2]
# Needs Fashion-MNIST (apt-get install dataset-fashion-mnist). Finished trainings and
# iterations are skipped, so an interrupted study resumes where it stopped. Each seed of each
# config is one process: `python3 -m src.reproduce config/study-fmnist` does the same work in
# one process. The report is made from the per-seed records it copies into docs/study/records/.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
PROG=study.sh
JOBS=${1:-2}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || fail 2 "JOBS must be a positive integer, got: $JOBS"
cd "$REPO"
setup_python

STUDY=config/study-fmnist
SEEDS=(0 1 2 3 4)
start=$(date +%s)

# Every config shares one trained model per seed; cka.json trains them.
printf '%s\n' "${SEEDS[@]}" | xargs -P "$JOBS" -I{} "$PYTHON" main_train.py "$STUDY/cka.json" --seed {} --threads 1
# One process per config and seed; the inner shell expands $0..$2.
# shellcheck disable=SC2016
for config in "$STUDY"/*.json; do
  for seed in "${SEEDS[@]}"; do echo "$config $seed"; done
done | xargs -P "$JOBS" -L1 sh -c '"$0" main_prune.py "$1" --seed "$2" --threads 1' "$PYTHON"

# The per-seed result records are committed with the report (docs/study/records/<config>/), so
# the report can be regenerated, and re-analysed, from the repository alone.
rm -rf docs/study/records
for config in "$STUDY"/*.json; do
  name=$(basename "$config" .json)
  mkdir -p "docs/study/records/$name"
  cp output/study-fmnist/"$name"/[0-9]*.json "docs/study/records/$name/"
done
# The report (cka, the reference, against every other config) and the all-pairs tests, as
# src/report/committed.py lists them.
"$PYTHON" -m src.report.committed study-fmnist
echo "wall time $(( $(date +%s) - start ))s with $JOBS processes ($(nproc) CPUs)" | tee docs/study/wall-time.txt
