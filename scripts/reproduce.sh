#!/usr/bin/env bash
# Run a whole study (python3 -m src.reproduce) as one Slurm job, or directly.
#
# Usage (from the repository root or anywhere else):
#   sbatch scripts/reproduce.sh CONFIG_DIR [src.reproduce options]     e.g. config/ex1-fmnist
#   bash scripts/reproduce.sh CONFIG_DIR                                 the same without Slurm
# Trains every seed of every config in CONFIG_DIR, prunes them and prints the paper's table;
# finished work is skipped. One job runs the plan in order; to spread the seeds over array
# tasks, use scripts/submit.sh per config instead. Near the time limit python saves and
# stops, and a requeued (MAX_REQUEUES=N) or resubmitted job resumes where it stopped.
# The cluster environment (module load, conda): SETUP=... / PYTHON=... or scripts/env.sh.
#SBATCH --job-name=cka-reproduce
#SBATCH --output=logs/%x-%j.out
#SBATCH --time=24:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120

set -euo pipefail

# sbatch runs a spooled copy of this file: find scripts/common.sh as the other scripts do.
if [ -n "${REPO:-}" ]; then
  common="$REPO/scripts/common.sh"
else
  recorded=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p') || true
  common="$(dirname -- "${recorded:-${BASH_SOURCE[0]}}")/common.sh"
fi
if [ ! -f "$common" ]; then
  echo "reproduce.sh: no repository at ${REPO:-$(dirname -- "$common")/..}; submit the repository's script or set REPO" >&2
  exit 2
fi
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$common"

PROG=reproduce.sh
[ $# -ge 1 ] || fail 2 "usage: sbatch [sbatch options] scripts/reproduce.sh CONFIG_DIR [options]"
study=$1
shift
[[ $study == /* ]] || study="${SLURM_SUBMIT_DIR:-$PWD}/$study"
[ -d "$study" ] || fail 2 "not a directory of configs: $1"
start_job
echo "command:  python -m src.reproduce $study $*"
echo
run_python -m src.reproduce "$study" "$@"
