#!/usr/bin/env bash
# start-local-slurm.sh -- bring up a REAL Slurm cluster of two nodes on localhost
# (Debian 12 / Slurm 22.05) with fake GPUs and (optionally) slurmdbd accounting,
# so that the project's `snakemake --profile slurm` is tested end-to-end without mocks
# (tests/test_slurm_*.py; CI runs this script before the tests and
# stop-local-slurm.sh after them).
#
# Idempotent: installs missing packages, (re)writes configs, starts only the
# daemons that are not running (restarts Slurm daemons if a config changed),
# then waits until `sinfo` reports the node idle. Exits non-zero with a message
# on failure. Must run as root. No systemd required (daemons are started directly).
#
# Environment knobs (defaults in brackets):
#   SLURM_LAB_DIR      state/log/pid dir                  [$TMPDIR/local-slurm]
#   SLURM_NODE_NAME    NodeName of the first node         [$(hostname -s)]
#   SLURM_NODES        nodes, each its own slurmd (slurmd -N <name>) on its own port; the
#                      others are named <first>-2, <first>-3, ...   [2]
#                      Partition `main` (the default) holds the first node only, so one-node
#                      jobs always share it; partition `multi` holds every node.
#                      partition `short` holds the first node with a 30-minute limit (preflight tests).
#   SLURM_CPUS         CPUs advertised (may exceed nproc) [max(nproc, 4)]
#   SLURM_MEM_MB       RealMemory                         [85% of MemTotal]
#   SLURM_FAKE_GPUS    number of fake GPUs (0 = none)     [2]
#   SLURM_GPU_TYPE     GRES type name of the fake GPUs    [fake]
#   SLURM_PARTITION    default partition name             [main]
#   SLURM_ACCOUNTING   1 = slurmdbd+MariaDB (sacct works), 0 = accounting_storage/none [1]
#   SLURM_ENFORCE      with accounting: AccountingStorageEnforce, as most real clusters set it
#                      (an unknown or empty --qos is rejected)  [associations,limits,qos]
#   SLURM_START_TIMEOUT seconds to wait for each daemon / the node [60]
#   SLURM_CLEAN_STATE  1 = wipe slurmctld/slurmd state before starting [0]
set -Eeuo pipefail

LAB=${SLURM_LAB_DIR:-${TMPDIR:-/tmp}/local-slurm}
NODE=${SLURM_NODE_NAME:-$(hostname -s)}
NODES=${SLURM_NODES:-2}
NODE_NAMES=("$NODE"); for ((n = 2; n <= NODES; n++)); do NODE_NAMES+=("$NODE-$n"); done
# At least 4 CPUs are advertised so that small test jobs (a 2-task step, a pack shard next to
# a training job) are scheduled side by side on a 2-core machine instead of pending.
CPUS=${SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
# Memory per node: the machine's share of each.
MEM_MB=${SLURM_MEM_MB:-$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 * 85 / 100 / NODES ))}
GPUS=${SLURM_FAKE_GPUS:-2}
GPU_TYPE=${SLURM_GPU_TYPE:-fake}
PARTITION=${SLURM_PARTITION:-main}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
ENFORCE=${SLURM_ENFORCE-associations,limits,qos}
TIMEOUT=${SLURM_START_TIMEOUT:-60}
CLUSTER=localcluster
DBPASS=slurmdbpass
ETC=/etc/slurm
T_START=$(date +%s)

log() { echo "[start-local-slurm] $*"; }
die() { echo "[start-local-slurm] ERROR: $*" >&2; for f in "$LAB"/log/*.log; do [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 8 "$f" >&2; }; done; exit 1; }
trap 'die "command failed at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" -eq 0 ] || die "must be run as root"
[ -r /etc/debian_version ] || die "this script targets Debian (12); /etc/debian_version missing"

# pid_alive <pidfile> <comm-prefix>: true if the pid in the file is a live process of that name
pid_alive() {
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f"); [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/comm" ] && [[ "$(cat "/proc/$pid/comm")" == "$name"* ]]
}
wait_for() {  # wait_for <description> <command...>; WAIT_PID=<pidfile>:<name> also fails fast if that daemon died
  local what=$1; shift; local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < TIMEOUT )) || die "timed out after ${TIMEOUT}s waiting for $what"
    if [ -n "${WAIT_PID:-}" ] && (( SECONDS - t0 >= 2 )) && ! pid_alive "${WAIT_PID%%:*}" "${WAIT_PID##*:}"; then
      die "$what: daemon exited during startup (see its log below)"
    fi
    sleep 0.25
  done
  log "$what ready after $(( SECONDS - t0 ))s"
}

# ---------------------------------------------------------------- packages
pkgs=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server mariadb-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
    >"${TMPDIR:-/tmp}/start-local-slurm.apt.log" 2>&1 \
    || die "apt-get install failed, see ${TMPDIR:-/tmp}/start-local-slurm.apt.log"
fi
[ "$(slurmctld -V | awk '{print $2}' | cut -d. -f1)" -ge 22 ] || log "warning: expected Slurm >= 22.05, got $(slurmctld -V)"

# ---------------------------------------------------------------- dirs
mkdir -p "$LAB"/{state/ctld,state/d,log,dev} /run/munge
chown -R slurm:slurm "$LAB/state" "$LAB/log"
chown munge:munge /run/munge; chmod 755 /run/munge
if [ "${SLURM_CLEAN_STATE:-0}" = 1 ]; then rm -rf "${LAB:?}"/state/ctld/* "${LAB:?}"/state/d/*; fi

# fake GPUs: Slurm requires gres.conf File= entries (a Count-only gpu line registers 0 GPUs
# and the node goes INVALID) and each File must be a char/block device -> symlink to /dev/null.
# Every node has its own device files.
for name in "${NODE_NAMES[@]}"; do
  mkdir -p "$LAB/dev/$name" "$LAB/state/d-$name"; chown slurm:slurm "$LAB/state/d-$name"
  for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$LAB/dev/$name/gpu$i"; done
done

# ---------------------------------------------------------------- configs
changed=0; changed_dbd=0
install_conf() {  # install_conf <dest> <mode> <owner> ; content on stdin
  local dest=$1 mode=$2 owner=$3 tmp; tmp=$(mktemp)
  cat >"$tmp"
  if ! cmp -s "$tmp" "$dest"; then
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$dest"; log "wrote $dest"
    if [[ $dest == *slurmdbd.conf ]]; then changed_dbd=1; else changed=1; fi
  fi
  rm -f "$tmp"
}
mkdir -p "$ETC"
GRES_NODE=""; GRES_TYPES=""
if (( GPUS > 0 )); then GRES_NODE=" Gres=gpu:${GPU_TYPE}:${GPUS}"; GRES_TYPES="GresTypes=gpu"; fi
if [ "$ACCOUNTING" = 1 ]; then
  ACCT=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStorageTRES=gres/gpu\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=30'
  [ -n "$ENFORCE" ] && ACCT+=$'\n'"AccountingStorageEnforce=$ENFORCE"
else
  ACCT=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
fi
install_conf "$ETC/slurm.conf" 644 root:root <<EOF
# generated by start-local-slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$LAB/state/ctld
# one slurmd per node on this machine: %n is the node's name
SlurmdSpoolDir=$LAB/state/d-%n
SlurmctldPidFile=$LAB/state/slurmctld.pid
SlurmdPidFile=$LAB/state/slurmd-%n.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
# time between the SIGTERM at a time limit and the SIGKILL
KillWait=30
$ACCT
JobCompType=jobcomp/none
# keep the job comment (the executor plugin writes rule_<name>_wildcards_<...> there) in sacct
AccountingStoreFlags=job_comment
$GRES_TYPES
$(for ((n = 0; n < NODES; n++)); do
  echo "NodeName=${NODE_NAMES[n]} NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$((6818 + 10 * n)) CPUs=$CPUS RealMemory=$MEM_MB$GRES_NODE State=UNKNOWN"
done)
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( MEM_MB / CPUS ))
PartitionName=multi Nodes=ALL Default=NO MaxTime=INFINITE State=UP DefMemPerCPU=$(( MEM_MB / CPUS ))
PartitionName=short Nodes=$NODE Default=NO MaxTime=00:30:00 State=UP DefMemPerCPU=$(( MEM_MB / CPUS ))
EOF
if (( GPUS > 0 )); then
  install_conf "$ETC/gres.conf" 644 root:root <<EOF
AutoDetect=off
$(for name in "${NODE_NAMES[@]}"; do echo "NodeName=$name Name=gpu Type=$GPU_TYPE File=$LAB/dev/$name/gpu[0-$((GPUS - 1))]"; done)
EOF
else
  install_conf "$ETC/gres.conf" 644 root:root </dev/null
fi
if [ "$ACCOUNTING" = 1 ]; then
  install_conf "$ETC/slurmdbd.conf" 600 slurm:slurm <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LAB/log/slurmdbd.log
PidFile=$LAB/state/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
fi

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key; else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
if ! pid_alive /run/munge/munged.pid munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
fi
wait_for "munge" bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- restart Slurm daemons if configs changed
restart=()
[ "$changed" = 1 ] && restart+=("${NODE_NAMES[@]/#/slurmd-}" slurmd slurmctld)
[ "$changed_dbd" = 1 ] && restart+=(slurmdbd)
if ((${#restart[@]})); then
  for d in "${restart[@]}"; do
    if pid_alive "$LAB/state/$d.pid" "${d%%-*}"; then
      log "config changed: stopping $d"; pid=$(cat "$LAB/state/$d.pid"); kill "$pid"
      for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
fi

# ---------------------------------------------------------------- MariaDB + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising MariaDB datadir"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LAB/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed"
  fi
  if ! mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
    log "starting mariadbd (unix socket only, no TCP)"
    setsid nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
      --skip-networking --innodb-buffer-pool-size=64M \
      >"$LAB/log/mariadb.log" 2>&1 </dev/null &
    wait_for "mariadb" mysqladmin --socket=/run/mysqld/mysqld.sock ping
  fi
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || die "could not create the slurm database user"
  if ! pid_alive "$LAB/state/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"; /usr/sbin/slurmdbd || die "slurmdbd failed to start"
  fi
  # slurmdbd answers on 6819 once it has connected to the DB
  WAIT_PID="$LAB/state/slurmdbd.pid:slurmdbd" wait_for "slurmdbd" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if ! pid_alive "$LAB/state/slurmctld.pid" slurmctld; then
  log "starting slurmctld"; /usr/sbin/slurmctld || die "slurmctld failed to start"
fi
WAIT_PID="$LAB/state/slurmctld.pid:slurmctld" wait_for "slurmctld" bash -c 'scontrol ping | grep -q UP'
for name in "${NODE_NAMES[@]}"; do
  if ! pid_alive "$LAB/state/slurmd-$name.pid" slurmd; then
    log "starting slurmd for node $name"; /usr/sbin/slurmd -N "$name" || die "slurmd -N $name failed to start"
  fi
done

node_state() { sinfo -h -n "$1" -o '%t' 2>/dev/null | head -n1; }
for name in "${NODE_NAMES[@]}"; do
  t0=$SECONDS; resumed=0
  while :; do
    st=$(node_state "$name")
    case "$st" in
      idle|mix|alloc) break ;;
      drain*|drng*|inval*|down*|fail*)
        # a node drained by an earlier bad config stays drained: resume once
        if [ "$resumed" = 0 ] && (( SECONDS - t0 > 2 )); then
          log "node $name is '$st' ($(scontrol show node "$name" | sed -n 's/.*Reason=//p')); trying resume"
          scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true; resumed=1
        fi ;;
    esac
    (( SECONDS - t0 < TIMEOUT )) || die "node $name not idle after ${TIMEOUT}s (state='${st:-none}', reason: $(scontrol show node "$name" 2>/dev/null | sed -n 's/.*Reason=//p'))"
    sleep 0.25
  done
  log "node $name is $st after $(( SECONDS - t0 ))s"
done

if [ "$ACCOUNTING" = 1 ]; then
  wait_for "cluster registered in slurmdbd" bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"
  wait_for "sacct" sacct -n -X
fi
# smoke test: a 1-task job step
out=$(timeout 30 srun -N1 -n1 -t 1 hostname 2>&1) || die "srun smoke test failed: $out"
if (( NODES > 1 )); then
  # one task on every node of partition multi: each reports the node it ran on
  # -Q: only the tasks' output on stdout (no "queued and waiting" notes while nodes are busy)
  out=$(timeout 60 srun -Q -p multi -N"$NODES" --ntasks-per-node=1 -t 1 bash -c 'echo $SLURMD_NODENAME' \
    2>"$LAB/log/srun-smoke.err" | sort | tr '\n' ' ') \
    || die "srun smoke test on $NODES nodes failed: $out $(cat "$LAB/log/srun-smoke.err")"
  [ "$out" = "$(printf '%s\n' "${NODE_NAMES[@]}" | sort | tr '\n' ' ')" ] || die "srun on $NODES nodes ran on: $out"
fi
log "srun smoke test ok ($out); cluster up in $(( $(date +%s) - T_START ))s"
sinfo
