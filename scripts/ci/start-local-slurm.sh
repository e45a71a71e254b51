#!/usr/bin/env bash
# Start a single-node Slurm cluster on localhost (munged, slurmctld, slurmd) for
# tests and CI. Installs the Debian/Ubuntu packages when they are missing.
#
# Requirements: root, apt-get. No systemd and no cgroups are needed
# (proctrack/linuxproc, task/none). Consequences: --mem is not enforced,
# --gres=gpu is unavailable and sacct does not work (no accounting storage);
# use `scontrol show job ID` for states and exit codes.
#
# Idempotent: when the daemons recorded in LOCAL_SLURM_DIR still run, it only
# waits until the node is ready. A start from stopped wipes the Slurm state, so
# the queue is empty and job ids restart at 1.
#
# Environment (all optional):
#   LOCAL_SLURM_DIR      state, spool, logs, pid files   [/tmp/cka-prune-slurm]
#   LOCAL_SLURM_CPUS     CPUs of the node                [nproc, at least 16]
#   LOCAL_SLURM_MEM_MB   RealMemory of the node in MB    [MemTotal, at least 65536]
#   LOCAL_SLURM_TIMEOUT  seconds to wait for readiness   [60]
#   LOCAL_SLURM_FORCE=1  overwrite a slurm.conf this script did not write
set -euo pipefail

STATE_DIR="${LOCAL_SLURM_DIR:-/tmp/cka-prune-slurm}"
# The node advertises at least 16 CPUs and 64 GB (slurmd trusts slurm.conf: config_overrides),
# so the batch scripts' default requests (4 CPUs, 16 GB) run here unchanged; this one-node
# cluster enforces neither.
NODE_CPUS="${LOCAL_SLURM_CPUS:-$(( $(nproc) > 16 ? $(nproc) : 16 ))}"
NODE_MEM_MB="${LOCAL_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {m = int($2 / 1024); print (m > 65536 ? m : 65536)}' /proc/meminfo)}"
READY_TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"
SLURM_CONF_FILE=/etc/slurm/slurm.conf
CONF_MARKER="# written by scripts/ci/start-local-slurm.sh"
NODE=localhost
PARTITION=debug
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "[start-local-slurm] $*" >&2; }
die() { log "error: $*"; exit 1; }

# running_as PIDFILE NAME: the pid recorded in PIDFILE is alive and is NAME
# (guards against acting on a recycled pid).
running_as() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(<"$1")
  kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

install_missing_packages() {
  local pkg missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Start munged unless a working one exists; a munged we did not start is left
# alone and never recorded, so the stop script will not touch it.
start_munge() {
  if munge_works; then
    log "munge already works"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge_works && break; sleep 0.1; done
  munge_works || die "munged did not start; see /var/log/munge/munged.log"
  cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

write_slurm_conf() {
  cat >"$SLURM_CONF_FILE" <<EOF
$CONF_MARKER
# Single-node test cluster on localhost; no systemd, no cgroups.
ClusterName=localcluster
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# refuse_foreign NAME: die if a NAME runs that this script did not record; it
# would hold the port, and ours would exit quietly after daemonizing.
refuse_foreign() {
  local comm name pids=""
  for comm in /proc/[0-9]*/comm; do
    { read -r name <"$comm"; } 2>/dev/null || continue
    [ "$name" = "$1" ] && pids+=" ${comm//[!0-9]/}"
  done
  [ -z "$pids" ] || die "$1 already running (pid$pids) but not recorded in $STATE_DIR; stop it first"
}

start_slurm() {
  local ctld="$STATE_DIR/slurmctld.pid" slurmd="$STATE_DIR/slurmd.pid"
  if running_as "$ctld" slurmctld && running_as "$slurmd" slurmd; then
    log "slurmctld and slurmd already running"
    return 0
  fi
  if ! running_as "$ctld" slurmctld && ! running_as "$slurmd" slurmd; then
    rm -rf "${STATE_DIR:?}/state" "${STATE_DIR:?}/spool"
    mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool"
    write_slurm_conf
  fi
  if ! running_as "$ctld" slurmctld; then
    refuse_foreign slurmctld
    log "starting slurmctld"
    slurmctld -i || die "slurmctld failed; see $STATE_DIR/log/slurmctld.log"
  fi
  if ! running_as "$slurmd" slurmd; then
    refuse_foreign slurmd
    log "starting slurmd"
    slurmd -N "$NODE" || die "slurmd failed; see $STATE_DIR/log/slurmd.log"
  fi
}

wait_until_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) state=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
      state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n 1)
      case "$state" in
        idle | mixed | allocated | completing) log "ready: node $NODE is $state; logs in $STATE_DIR/log"; return 0 ;;
      esac
    fi
    sleep 0.5
  done
  log "node not ready after ${READY_TIMEOUT}s (state '$state')"
  sinfo -R >&2 || true
  tail -n 20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
  return 1
}

main() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  if [ -e "$SLURM_CONF_FILE" ] && ! grep -qF "$CONF_MARKER" "$SLURM_CONF_FILE" \
    && [ "${LOCAL_SLURM_FORCE:-0}" != 1 ]; then
    die "$SLURM_CONF_FILE was not written by this script (LOCAL_SLURM_FORCE=1 overwrites it)"
  fi
  install_missing_packages
  mkdir -p "$STATE_DIR/log" /etc/slurm
  start_munge
  start_slurm
  wait_until_ready
}

main "$@"
