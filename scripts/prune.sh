#!/usr/bin/env bash
# Prune the trained models of an experiment config on a Slurm cluster.
#
# Usage (from the repository root or anywhere else):
#   sbatch scripts/prune.sh CONFIG [main_prune.py options]          all seeds
#   sbatch --array=0-N scripts/prune.sh CONFIG [options]            task i prunes seeds[i]
#   sbatch --array=0-N --dependency=aftercorr:TRAINJOB scripts/prune.sh CONFIG
# An interrupted run resumes from its last saved pruning iteration.
#
# Every #SBATCH default below can be overridden on the sbatch command line, e.g.
#   sbatch --time=1:00:00 --cpus-per-task=8 --gres=gpu:1 scripts/prune.sh ...
# Logs go to logs/<job name>-<job id>.out below the directory sbatch is called from
# (create it first: Slurm does not, and a job whose log cannot be opened fails without
# a log); for arrays pass --output=logs/%x-%A_%a.out (submit.sh does). The cluster
# environment (module load, conda): SETUP=... / PYTHON=... or scripts/env.sh, see common.sh.
# Near the time limit Slurm sends USR1 to this script, which stops python with
# SIGTERM; python saves its progress, so resubmitting or requeueing
# (scontrol requeue JOBID) resumes. MAX_REQUEUES=N requeues automatically.
#SBATCH --job-name=cka-prune
#SBATCH --output=logs/%x-%j.out
#SBATCH --time=12:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
# GPU: pass --gres=gpu:1 to sbatch (GPUS=1 for scripts/submit.sh), or enable:
##SBATCH --gres=gpu:1

set -euo pipefail

# sbatch runs a spooled copy of this file, so its own path may not lead to the
# repository. scripts/common.sh is found through $REPO (submit.sh passes it), else
# the script path Slurm recorded for the job, else this file's own path.
if [ -n "${REPO:-}" ]; then
  common="$REPO/scripts/common.sh"
else
  recorded=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p') || true
  common="$(dirname -- "${recorded:-${BASH_SOURCE[0]}}")/common.sh"
fi
if [ ! -f "$common" ]; then
  echo "prune.sh: no repository at ${REPO:-$(dirname -- "$common")/..}; submit the repository's script or set REPO" >&2
  exit 2
fi
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$common"

run_entry main_prune.py seed "$@"
