# shellcheck shell=bash
# Shared by scripts/search.sh, train.sh, prune.sh and submit.sh; sourced, not run.
# The caller has set `set -euo pipefail`. Sets REPO: the repository this file is in.
#
# Environment read here (set it when calling sbatch or submit.sh; jobs inherit it):
#   SETUP          shell commands that set up the cluster environment before python is
#                  looked for, e.g. SETUP='module load anaconda/3 cuda; conda activate cka'
#                  [none]; scripts/env.sh, if it exists, is sourced first (edit a copy of
#                  scripts/env.sh.example)
#   PYTHON         the interpreter (a conda env's python, say) [$VENV/bin/python]
#   VENV           virtualenv to activate [$REPO/.venv; python3 from PATH if absent]
#   MAX_REQUEUES   requeue a job this many times when its time limit is near [0]

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

# fail STATUS MESSAGE: one line on stderr, then exit (2 = user error, as the CLIs).
fail() {
  echo "${PROG:-${0##*/}}: $2" >&2
  exit "$1"
}

# The job's environment and interpreter: source scripts/env.sh if it exists, run
# $SETUP, then use $PYTHON if set, else $VENV (default $REPO/.venv), else python3 on
# PATH (a module or conda environment the setup loaded). Sets PYTHON.
setup_python() {
  if [ -f "$REPO/scripts/env.sh" ]; then
    set +u  # module and conda scripts read unset variables
    # shellcheck source=/dev/null
    source "$REPO/scripts/env.sh" || fail 2 "scripts/env.sh failed"
    set -u
  fi
  if [ -n "${SETUP:-}" ]; then
    set +u
    eval "$SETUP" || fail 2 "SETUP failed: $SETUP"
    set -u
  fi
  if [ -n "${PYTHON:-}" ]; then
    PYTHON=$(command -v "$PYTHON") || fail 2 "PYTHON=$PYTHON not found (after SETUP)"
    return
  fi
  local venv=${VENV:-$REPO/.venv}
  if [ -f "$venv/bin/activate" ]; then
    # shellcheck source=/dev/null
    source "$venv/bin/activate"
  elif [ -n "${VENV:-}" ]; then
    fail 2 "VENV=$VENV is not a virtualenv (no bin/activate); for a conda env set PYTHON"
  else
    echo "${PROG:-${0##*/}}: no $venv; using $(command -v python3 || echo 'python3 (not found)')" >&2
  fi
  PYTHON=$(command -v python3) || fail 2 "python3 not found"
}

# resolve_config PATH: the config as the job will see it from $REPO. Relative
# paths are relative to the directory sbatch was called from; a config inside
# the repository is passed on relative to it, anything else as an absolute path.
resolve_config() {
  local path=$1 dir
  [[ $path == /* ]] || path="${SLURM_SUBMIT_DIR:-$PWD}/$path"
  [ -f "$path" ] || fail 2 "config file not found: $1"
  dir=$(cd "$(dirname -- "$path")" && pwd -P)
  path="$dir/$(basename -- "$path")"
  case "$path" in
    "$REPO"/*) echo "${path#"$REPO"/}" ;;
    *) echo "$path" ;;
  esac
}

# config_info CONFIG: "<experiment name> <number of seeds> <has prune section>"
# (has: 1 or 0), read by the project's own config loader, so the name is the
# one in output/<name>/. Run from $REPO.
config_info() {
  "$PYTHON" - "$1" <<'PY'
import sys

from src.config import load_config
from src.errors import UserError

try:
    cfg = load_config(sys.argv[1])
except UserError as err:
    sys.exit(f"error: {err}")
print(cfg.name, len(cfg.seeds), int(cfg.prune is not None))
PY
}

print_job_header() {
  local commit
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) || commit=unknown
  if [ "$commit" != unknown ] && ! git -C "$REPO" diff --quiet HEAD 2>/dev/null; then
    commit="$commit (with uncommitted changes)"
  fi
  echo "=== ${SLURM_JOB_NAME:-${0##*/}} started $(date -Iseconds)"
  echo "host:     $(hostname)"
  echo "job:      ${SLURM_JOB_ID:-none (not under Slurm)}"
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    echo "array:    job ${SLURM_ARRAY_JOB_ID}, task ${SLURM_ARRAY_TASK_ID}"
  fi
  echo "restarts: ${SLURM_RESTART_COUNT:-0}"
  echo "repo:     $REPO"
  echo "commit:   $commit"
  echo "python:   $PYTHON ($("$PYTHON" --version 2>&1))"
  echo "threads:  ${OMP_NUM_THREADS:-default}"
}

# stop_child PID REASON: ask python to save its state and stop.
stop_child() {
  echo "$2: stopping python (pid $1)"
  kill -TERM "$1" 2>/dev/null || true
}

# run_python ARGS...: run python in the background and wait, so that this shell
# can react to signals while it runs. Slurm's time-limit warning
# (--signal=B:USR1@...) goes to this shell only: it becomes SIGTERM for python,
# which saves its state and stops; with MAX_REQUEUES > SLURM_RESTART_COUNT the
# job is then requeued and resumes. SIGINT (Ctrl-C; a background python ignores
# it) becomes SIGTERM too. SIGTERM is passed on only outside Slurm: scancel,
# preemption and the time limit signal every process of a job, and a second
# SIGTERM could interrupt python while it saves. Returns python's exit status.
run_python() {
  local child="" status warned=0 signalled=0
  # The traps come first: a signal that arrives while python starts must not find the
  # default action (which would end this shell and leave python running).
  trap 'signalled=1; warned=1; stop_child "$child" "time limit near"' USR1
  trap 'signalled=1; stop_child "$child" interrupted' INT
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    trap 'signalled=1; echo "terminated: Slurm stops python too; waiting for it"' TERM
  else
    trap 'signalled=1; stop_child "$child" terminated' TERM
  fi
  "$PYTHON" "$@" &
  child=$!
  status=0
  wait "$child" || status=$?
  # A trapped signal interrupts `wait` (status 128 + the signal); wait again for python's own
  # status, which bash keeps even when python has ended meanwhile (so `kill -0` cannot tell).
  while [ "$signalled" = 1 ]; do
    signalled=0
    status=0
    wait "$child" || status=$?
  done
  trap - USR1 TERM INT
  echo "=== python exited with status $status at $(date -Iseconds)"
  if [ "$warned" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ] \
    && [ "${SLURM_RESTART_COUNT:-0}" -lt "${MAX_REQUEUES:-0}" ]; then
    echo "requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)) of ${MAX_REQUEUES})"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$status"
}

# start_job: run from the repository with the job's python, unbuffered, with as many
# threads as Slurm gave the task, and print the job header.
start_job() {
  cd "$REPO" || exit 2
  setup_python
  # Slurm logs are files: without this, python's output arrives in 8 KiB blocks.
  export PYTHONUNBUFFERED=1
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    # torch would otherwise start one thread per core of the whole node.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
  fi
  print_job_header
}

# run_entry ENTRY PER_SEED CONFIG [ARGS...]: the body of search.sh, train.sh and
# prune.sh. PER_SEED "seed": array task i runs the config's seeds[i]; "all": every
# task runs the same command (search processes that share one storage).
run_entry() {
  local entry=$1 per_seed=$2 config seeds
  shift 2
  PROG="${entry#main_}"
  PROG="${PROG%.py}.sh"
  [ $# -ge 1 ] || fail 2 "usage: sbatch [sbatch options] scripts/$PROG CONFIG [$entry options]"
  config=$(resolve_config "$1")
  shift
  start_job
  read -r _ seeds _ < <(config_info "$config") || exit 2
  local args=("$entry" "$config")
  if [ "$per_seed" = seed ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    [ "$SLURM_ARRAY_TASK_ID" -lt "$seeds" ] \
      || fail 2 "array task $SLURM_ARRAY_TASK_ID but $config has $seeds seeds (use --array=0-$((seeds - 1)))"
    args+=(--seed-index "$SLURM_ARRAY_TASK_ID")
  fi
  args+=("$@")
  echo "command:  python ${args[*]}"
  echo
  run_python "${args[@]}"
}

# copy_records STUDY OUT: a grid study's per-seed records, output/<study>/<cell>/<config>/<seed>.json,
# copied afresh into OUT/records/<cell>/<config>/ (committed with the study's report).
copy_records() {
  local study=$1 out=$2 config cell name
  rm -rf "$out/records"
  for config in "$study"/*/*.json; do
    cell=$(basename "$(dirname "$config")") name=$(basename "$config" .json)
    mkdir -p "$out/records/$cell/$name"
    cp output/"$(basename "$study")/$cell/$name"/[0-9]*.json "$out/records/$cell/$name/"
  done
}
