#!/usr/bin/env bash
# A single-node Slurm "cluster" on this machine, for testing the submitit_slurm launcher.
#
#   scripts/slurm_local.sh start    # munged, MariaDB, slurmdbd, slurmctld, slurmd; waits until idle
#   scripts/slurm_local.sh stop     # stops exactly the daemons that `start` launched (by PID)
#   scripts/slurm_local.sh env      # prints `export SLURM_CONF=...` for sbatch / sinfo / sacct
#
# Needs root and the Debian packages slurm-wlm, slurmdbd, munge, mariadb-server (ci_slurm.sh
# installs them). Everything lives in $SLURM_LOCAL_DIR (default /tmp/mtlbench-slurm): configs,
# state, logs, the database, and one <daemon>.pid per daemon started. Only loopback addresses are
# used. Accounting (slurmdbd + MariaDB) is on because submitit asks `sacct` for the state of jobs.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/mtlbench-slurm}
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
DB_PASS=mtlbench-local
HOST=$(hostname -s)

log() { echo "[slurm_local] $*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds or WAIT_S pass.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${WAIT_S}s waiting for $what (logs: $STATE/*.log)"
    sleep 0.5
  done
}

# launch NAME COMMAND...: start COMMAND in the background, record its PID in $STATE/NAME.pid.
launch() {
  local name=$1; shift
  "$@" >>"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  log "started $name (pid $!)"
}

write_configs() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4 ))
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
  cat >"$STATE/slurm.conf" <<CONF
ClusterName=mtlbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.daemon.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$STATE/slurmdbd.conf"
}

start_munge() {
  mkdir -p /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge)"
  launch munged runuser -u munge -- /usr/sbin/munged --foreground
  wait_for "munged" sh -c 'munge -n | unmunge'
}

start_mariadb() {
  if [[ ! -d "$STATE/mysql/mysql" ]]; then
    mariadb-install-db --datadir="$STATE/mysql" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >"$STATE/mariadb-install.log" 2>&1 || die "mariadb-install-db failed"
  fi
  launch mariadbd /usr/sbin/mariadbd --no-defaults --datadir="$STATE/mysql" --user=root \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$STATE/mysql.sock" \
    --pid-file="$STATE/mariadbd.daemon.pid" --skip-name-resolve
  wait_for "MariaDB" mariadb --socket="$STATE/mysql.sock" -uroot -e "SELECT 1"
  mariadb --socket="$STATE/mysql.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
  export SLURM_CONF=$STATE/slurm.conf
  launch slurmdbd /usr/sbin/slurmdbd -D  # reads slurmdbd.conf next to $SLURM_CONF
  wait_for "slurmdbd" sacctmgr -i list cluster
  sacctmgr -i add cluster mtlbench >/dev/null 2>&1 || true
  launch slurmctld /usr/sbin/slurmctld -D -i
  wait_for "slurmctld" scontrol ping
  launch slurmd /usr/sbin/slurmd -D
  wait_for "node $HOST idle" sh -c "sinfo -h -n $HOST -o %T | grep -qx idle"
}

start() {
  [[ $(id -u) == 0 ]] || die "run as root (the daemons run as root in this sandbox)"
  for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
    if [[ -f "$STATE/$daemon.pid" ]] && kill -0 "$(cat "$STATE/$daemon.pid")" 2>/dev/null; then
      die "$daemon from an earlier start is still running; run '$0 stop' first"
    fi
  done
  mkdir -p "$STATE"
  write_configs
  start_munge
  start_mariadb
  start_slurm
  log "ready: export SLURM_CONF=$STATE/slurm.conf"
}

# stop_one NAME: TERM the recorded PID, wait up to 10 s, then KILL.
stop_one() {
  local name=$1 pidfile=$STATE/$1.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop() {
  # reverse start order; munged runs under runuser, so its recorded PID is runuser's: TERM reaches
  # munged through it, and the daemon's own pid file covers the rest.
  for daemon in slurmd slurmctld slurmdbd mariadbd; do stop_one "$daemon"; done
  if [[ -f /run/munge/munged.pid && -f "$STATE/munged.pid" ]]; then
    kill -TERM "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
  stop_one munged
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
