#!/usr/bin/env bash
# A depth-pruning study (endpoints in its config folder's README.md): trains the study's seeds of
# its pilot's model (a seed already trained is skipped), then prunes every config of every cell,
# one process per config and seed (main_prune.py --seed S, one thread), JOBS at a time, the cells
# in ORDER, and copies the per-seed records into OUT/records/<cell>/<config>/, committed packed
# (OUT/records.tar.xz). The reports are then made from the records by
# `python3 -m src.report.committed STUDY`.
#
#   depth-fmnist  the residual MLP, 10 seeds, into docs/depth/   (needs Fashion-MNIST:
#                 apt-get install dataset-fashion-mnist)
#   depth-lm      the byte-level decoder, 5 seeds, into docs/depth/lm/
#
# Usage: bash scripts/depth.sh [JOBS] [STUDY]   JOBS processes at a time, one thread each [2];
#                                               STUDY [depth-fmnist]
# Finished trainings and removal counts are skipped, so an interrupted study resumes where it stopped.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
PROG=depth.sh
JOBS=${1:-2}
STUDY_NAME=${2:-depth-fmnist}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || fail 2 "JOBS must be a positive integer, got: $JOBS"
# The trained models are committed in docs/depth/models (0.2-2 MB each), apart from the default
# models/ that other runs share, so a rerun only prunes. The MLP's cells without retraining go first:
# the study's main question, and the cheapest; the language model's retrained cells first, its
# longest jobs (about two minutes each), so that the short ones fill the end.
case $STUDY_NAME in
  depth-fmnist)
    OUT=docs/depth LAST_SEED=9 TRAIN=config/depth-fmnist/e0-none/tail.json
    ORDER=(e0-none e0-lstsq width-e0-lstsq e1-none e1-lstsq width-e1-lstsq) ;;
  depth-lm)
    OUT=docs/depth/lm LAST_SEED=4 TRAIN=config/depth-lm/e0-none/tail.json
    ORDER=(e1-lstsq e1-none e0-none e0-lstsq span-e0-lstsq) ;;
  *) fail 2 "STUDY must be depth-fmnist or depth-lm, got: $STUDY_NAME" ;;
esac
STUDY=config/$STUDY_NAME MODELS=docs/depth/models
cd "$REPO"
setup_python
CPUS=$(nproc)  # before OMP_NUM_THREADS, which nproc would count instead
export OMP_NUM_THREADS=1
start=$(date +%s)

# Every config of the study shares one trained model per seed.
seq 0 "$LAST_SEED" | xargs -P "$JOBS" -I{} "$PYTHON" main_train.py "$TRAIN" --seed {} --threads 1 --wandb disabled --models-dir "$MODELS"
# The quoted $0, $1, $PYTHON and $MODELS are expanded by each job's bash.
# shellcheck disable=SC2016
for cell in "${ORDER[@]}"; do
  for config in "$STUDY/$cell"/*.json; do
    for seed in $(seq 0 "$LAST_SEED"); do echo "$config $seed"; done
  done
done | PYTHON=$PYTHON MODELS=$MODELS xargs -P "$JOBS" -L 1 bash -c \
  '"$PYTHON" main_prune.py "$0" --seed "$1" --threads 1 --wandb disabled --models-dir "$MODELS"'

copy_records "$STUDY" "$OUT"
tar -cJf "$OUT/records.tar.xz" -C "$OUT" records
echo "wall time $(( $(date +%s) - start ))s with $JOBS processes ($CPUS CPUs)" | tee "$OUT/wall-time.txt"
