#!/usr/bin/env bash
# Train the models of an experiment config (one per seed) on a Slurm cluster.
#
# Usage (from the repository root or anywhere else):
#   sbatch scripts/train.sh CONFIG [main_train.py options]          all seeds
#   sbatch --array=0-N scripts/train.sh CONFIG [options]            task i trains seeds[i]
# Seeds whose model already exists are skipped.
#
# Every #SBATCH default below can be overridden on the sbatch command line, e.g.
#   sbatch --time=1:00:00 --cpus-per-task=8 --gres=gpu:1 scripts/train.sh ...
# Logs go to logs/<job name>-<job id>.out below the directory sbatch is called from
# (create it first: Slurm does not, and a job whose log cannot be opened fails without
# a log); for arrays pass --output=logs/%x-%A_%a.out (submit.sh does). The cluster
# environment (module load, conda): SETUP=... / PYTHON=... or scripts/env.sh, see common.sh.
# Near the time limit Slurm sends USR1 to this script, which stops python with
# SIGTERM; python saves its progress, so resubmitting or requeueing
# (scontrol requeue JOBID) resumes. MAX_REQUEUES=N requeues automatically.
#SBATCH --job-name=cka-train
#SBATCH --output=logs/%x-%j.out
#SBATCH --time=08:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
# GPU: pass --gres=gpu:1 to sbatch (GPUS=1 for scripts/submit.sh), or enable:
##SBATCH --gres=gpu:1

set -euo pipefail

# sbatch runs a spooled copy of this file, so its own path does not lead to the
# repository. Use $REPO, else search upwards from the submit directory, from
# this file's path and from the script path Slurm recorded for the job.
find_repo() {
  local start dir recorded=""
  if [ -n "${REPO:-}" ]; then
    [ -f "$REPO/main_train.py" ] && cd "$REPO" && pwd -P
    return
  fi
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    recorded=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  fi
  for start in "${SLURM_SUBMIT_DIR:-$PWD}" "$(dirname -- "${BASH_SOURCE[0]}")" "$(dirname -- "${recorded:-.}")"; do
    dir=$(cd "$start" 2>/dev/null && pwd -P) || continue
    while :; do
      [ -f "$dir/main_train.py" ] && echo "$dir" && return
      [ "$dir" = / ] && break
      dir=$(dirname -- "$dir")
    done
  done
  return 1
}
if ! found=$(find_repo); then
  if [ -n "${REPO:-}" ]; then
    echo "train.sh: REPO=$REPO has no main_train.py" >&2
  else
    echo "train.sh: no repository (a directory with main_train.py) above ${SLURM_SUBMIT_DIR:-$PWD}; submit from inside it or set REPO" >&2
  fi
  exit 2
fi
REPO=$found
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO/scripts/common.sh"

run_entry main_train.py seed "$@"
