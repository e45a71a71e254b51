#!/usr/bin/env bash
# Stop the cluster started by scripts/ci/start-local-slurm.sh: cancel all jobs,
# then stop slurmd, slurmctld and munged (the latter only if the start script
# started it), each by the pid recorded in LOCAL_SLURM_DIR.
#
# Usage: stop-local-slurm.sh [--purge]
#   --purge  also delete LOCAL_SLURM_DIR and the generated /etc/slurm/slurm.conf
set -uo pipefail

STATE_DIR="${LOCAL_SLURM_DIR:-/tmp/cka-prune-slurm}"
SLURM_CONF_FILE=/etc/slurm/slurm.conf
CONF_MARKER="# written by scripts/ci/start-local-slurm.sh"

log() { echo "[stop-local-slurm] $*" >&2; }

# signal_recorded PIDFILE NAME: SIGTERM the pid recorded in PIDFILE if it is
# NAME (not a recycled pid) and print it; remove the pid file.
signal_recorded() {
  local pidfile=$1 name=$2 pid
  if [ ! -s "$pidfile" ]; then
    log "$name: no pid file"
    return 0
  fi
  pid=$(<"$pidfile")
  rm -f "$pidfile"
  if ! kill -0 "$pid" 2>/dev/null || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    log "$name: pid $pid not running"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid"
  echo "$pid"
}

# wait_gone PID...: wait up to 20 s for the pids to exit, then SIGKILL the rest.
wait_gone() {
  local pid alive
  for _ in $(seq 100); do
    alive=()
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    [ ${#alive[@]} -eq 0 ] && return 0
    set -- "${alive[@]}"
    sleep 0.2
  done
  log "pid $* still running after 20 s; sending SIGKILL"
  kill -KILL "$@" 2>/dev/null
}

# stop_recorded PIDFILE:NAME...: stop these daemons together (each takes seconds).
stop_recorded() {
  local entry pid pids=()
  for entry in "$@"; do
    pid=$(signal_recorded "$STATE_DIR/${entry%%:*}" "${entry#*:}")
    [ -z "$pid" ] || pids+=("$pid")
  done
  [ ${#pids[@]} -eq 0 ] || wait_gone "${pids[@]}"
}

# Jobs left running would keep slurmstepd and their processes alive.
cancel_all_jobs() {
  [ -s "$STATE_DIR/slurmctld.pid" ] || return 0
  scontrol ping 2>/dev/null | grep -q 'is UP' || return 0
  [ -n "$(squeue -h -o %i 2>/dev/null)" ] || return 0
  log "cancelling all jobs"
  scancel --user=root 2>/dev/null
  for _ in $(seq 60); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  log "jobs still listed after 30 s"
}

cancel_all_jobs
stop_recorded slurmd.pid:slurmd slurmctld.pid:slurmctld
# munged last: the Slurm daemons authenticate through it while they shut down.
stop_recorded munged.pid:munged
if [ "${1:-}" = --purge ]; then
  log "removing $STATE_DIR"
  rm -rf "${STATE_DIR:?}"
  if [ -f "$SLURM_CONF_FILE" ] && grep -qF "$CONF_MARKER" "$SLURM_CONF_FILE"; then
    rm -f "$SLURM_CONF_FILE"
  fi
fi
log "stopped"
