#!/usr/bin/env bash
# Submit an experiment to Slurm: search, train and prune jobs. Run it directly
# (not with sbatch), from any directory:
#
#   scripts/submit.sh CONFIG [SBATCH_OPTION...]
#
# It submits
#   search  SEARCH_TASKS tasks (array) sharing output/search/<experiment>.journal
#   train   an array with one task per seed of the config, started once every
#           search task has succeeded (--dependency=afterok): it trains with the
#           search's best values
#   prune   an array with one task per seed; task i starts once train task i
#           has succeeded (--dependency=aftercorr), skipped without a prune section
# and prints the job ids. A job whose dependency fails is cancelled
# (--kill-on-invalid-dep=yes), so a failed search cancels training and pruning.
# SBATCH_OPTIONs (e.g. --partition=gpu --time=2:00:00) are added to every sbatch call.
#
# Environment:
#   STAGES        stages to submit, any of "search train prune" [all three]
#   SEARCH_TASKS  processes of the search [2]
#   GPUS          N: request --gres=gpu:N for every job [none]
#   REPO          repository for the jobs [this repository]
#   SETUP, PYTHON, VENV  the jobs' environment and interpreter (see common.sh)
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)}
export REPO
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO/scripts/common.sh"

# submit SBATCH_ARGS...: sbatch from $REPO; prints the job id.
submit() {
  local out
  out=$(sbatch --parsable "${common_args[@]}" "$@") || fail 1 "sbatch $* failed"
  echo "${out%%;*}"
}

wants() { [[ " $STAGES " == *" $1 "* ]]; }

[ $# -ge 1 ] || fail 2 "usage: scripts/submit.sh CONFIG [SBATCH_OPTION...]"
command -v sbatch >/dev/null || fail 2 "sbatch not found: run this on a Slurm login node"
STAGES=${STAGES:-search train prune}
for stage in $STAGES; do
  [[ $stage =~ ^(search|train|prune)$ ]] || fail 2 "STAGES: unknown stage '$stage' (use search, train, prune)"
done
SEARCH_TASKS=${SEARCH_TASKS:-2}
[[ $SEARCH_TASKS =~ ^[1-9][0-9]*$ ]] || fail 2 "SEARCH_TASKS must be a positive integer, got '$SEARCH_TASKS'"
config=$(resolve_config "$1")
shift
cd "$REPO" || exit 2
setup_python
read -r name seeds has_prune < <(config_info "$config") || exit 2

# sbatch does not create the log directory, and a job cannot start without it.
mkdir -p logs
common_args=(--export=ALL --output=logs/%x-%A_%a.out)
if [ -n "${GPUS:-}" ]; then
  common_args+=("--gres=gpu:$GPUS")
fi
common_args+=("$@")
last=$((seeds - 1))

if wants search; then
  storage="output/search/$name.journal"
  search_job=$(submit --array="0-$((SEARCH_TASKS - 1))" scripts/search.sh "$config" --storage "$storage")
  echo "search: job $search_job, $SEARCH_TASKS tasks sharing $storage"
fi
if wants train; then
  after_search=()
  if [ -n "${search_job:-}" ]; then
    after_search=(--dependency="afterok:$search_job" --kill-on-invalid-dep=yes)
  fi
  train_job=$(submit --array="0-$last" "${after_search[@]}" scripts/train.sh "$config")
  echo "train:  job $train_job, tasks 0-$last (one per seed)${search_job:+, after the search}"
fi
if wants prune; then
  if [ "$has_prune" != 1 ]; then
    echo "prune:  skipped, $config has no prune section"
  elif [ -n "${train_job:-}" ]; then
    prune_job=$(submit --array="0-$last" --dependency="aftercorr:$train_job" --kill-on-invalid-dep=yes \
      scripts/prune.sh "$config")
    echo "prune:  job $prune_job, tasks 0-$last; task i starts when train task i has succeeded"
  else
    prune_job=$(submit --array="0-$last" scripts/prune.sh "$config")
    echo "prune:  job $prune_job, tasks 0-$last (models must already be trained)"
  fi
fi
echo "logs:   $REPO/logs/<job name>-<job id>_<task>.out; watch with: squeue -u \"\$USER\""
