#!/bin/bash
# A one-node SLURM cluster on 127.0.0.1 for tests/test_slurm.py (and for trying launch/slurm/ by hand).
#
# Run as root on Debian/Ubuntu; no systemd needed. Idempotent: a second run leaves a healthy
# cluster alone and restarts the daemons of a broken one. Installs slurm-wlm and munge with
# apt-get when missing, writes /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd, and
# returns once `sinfo` shows the node idle.
set -euo pipefail

NODE=localhost
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd

log() { echo "setup_slurm: $*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "setup_slurm: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

node_idle() {
  sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null | grep -qE '^(idle|mix|alloc)'
}

if command -v sbatch >/dev/null && [[ -f $CONF ]] && node_idle; then
  log "cluster already up"
  sinfo
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# Munge authenticates every slurm message; the key only has to be the same on all (here: one) hosts.
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating the munge key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then
    mungekey --create --force --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown -R munge:munge /etc/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge

# Declare at least 2 CPUs so a 2-task job fits even on a 1-core machine; config_overrides makes
# slurmd trust these numbers instead of draining a node whose hardware reports fewer.
cpus=$(nproc)
(( cpus < 2 )) && cpus=2
mkdir -p /etc/slurm "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
cat > "$CONF" <<EOF
# Written by .ci/setup_slurm.sh: one node on loopback, for tests.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits out its old credential's lifetime before it may start again (default 120 s).
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

# (Re)start the daemons: stale ones from an earlier config would not pick up the new one.
stop() {
  local pidfile=$1
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}
stop /run/slurmd.pid
stop /run/slurmctld.pid

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  stop /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

log "starting slurmctld and slurmd"
slurmctld -c  # -c: forget jobs a previous cluster left behind (they ran under another config)
slurmd -N "$NODE"

for _ in $(seq 120); do
  if node_idle; then
    log "cluster up"
    sinfo
    exit 0
  fi
  # A node left DOWN/DRAINED by an earlier cluster is brought back explicitly.
  scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
echo "setup_slurm: the node did not become idle within 60 s; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log" >&2
sinfo >&2 || true
tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
exit 1
