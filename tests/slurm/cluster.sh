#!/usr/bin/env bash
# Single-node SLURM test cluster (Debian 12, slurm 22.05) for rationale-bench tests and CI.
#
#   tests/slurm/cluster.sh install   # apt-get the packages (root; idempotent, fast when present)
#   tests/slurm/cluster.sh up        # start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   tests/slurm/cluster.sh env       # print the export lines for a running cluster
#   tests/slurm/cluster.sh status    # show what is running
#   tests/slurm/cluster.sh down      # cancel jobs, stop daemons, remove the state dir
#
# `up` and `env` print shell export lines on stdout (progress goes to stderr), `down` an unset line:
#   eval "$(tests/slurm/cluster.sh up)"     # SLURM_CONF, PATH (srun wrapper), RB_SLURM_ACCOUNT/PARTITION
#   eval "$(tests/slurm/cluster.sh down)"   # unset SLURM_CONF ...
# All configuration lives in the state dir ($RB_SLURM_DIR, default /tmp/rb-slurm), never in
# /etc/slurm: a slurm.conf there pointing at a dead controller makes every `snakemake` call stall
# ~10 s (docs/references.md); so does a SLURM_CONF still exported after `down`.
#
# Environment knobs: RB_SLURM_DIR (state dir), RB_SLURM_PORT_BASE (first of 4 consecutive TCP
# ports; default: first free block from 16810), RB_SLURM_CPUS (8), RB_SLURM_MEM_MB (16000),
# RB_SLURM_GPUS (2), RB_SLURM_ACCOUNT (rbtest), RB_SLURM_PARTITION (debug),
# RB_SLURM_UP_TIMEOUT (60 s).
set -euo pipefail

STATE=${RB_SLURM_DIR:-/tmp/rb-slurm}
CLUSTER=rbcluster
NODE=rbnode
ACCOUNT=${RB_SLURM_ACCOUNT:-rbtest}
PARTITION=${RB_SLURM_PARTITION:-debug}
CPUS=${RB_SLURM_CPUS:-8}
MEM_MB=${RB_SLURM_MEM_MB:-16000}
NGPUS=${RB_SLURM_GPUS:-2}
GPU_TYPE=fakegpu # gres type, i.e. what a gpu_model= resource must name
UP_TIMEOUT=${RB_SLURM_UP_TIMEOUT:-60}
DB_USER=slurm
DB_PASS=rbslurm
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd) # start order; stop in reverse
MARKER=.rb-slurm-state

ETC=$STATE/etc
CONF=$ETC/slurm.conf
LOGS=$STATE/log
RUN=$STATE/run

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
T0=$(date +%s%3N)
elapsed() {
  local ms=$(($(date +%s%3N) - T0))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
step() { log "$* (t=$(elapsed)s)"; }
die() {
  printf '[cluster.sh] ERROR: %s\n' "$1" >&2
  shift
  local f
  for f in "$@"; do
    [[ -f $f ]] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2 || true
  done
  [[ -z $UP_HINT ]] || printf '[cluster.sh] %s\n' "$UP_HINT" >&2
  exit 1
}
UP_HINT=""
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (daemons run as SlurmUser=root)"; }

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------
missing_packages() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  echo "${missing[@]}"
}

cmd_install() {
  need_root
  local missing
  missing=$(missing_packages)
  if [[ -z $missing ]]; then
    log "packages already installed"
  else
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package maintainer scripts from starting system-wide services (no systemd here
    # anyway); only add the usual container guard if the machine has none.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      added_policy=1
    fi
    local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
      -o Dpkg::Options::=--force-confold)
    log "installing: $missing"
    # shellcheck disable=SC2086
    if ! apt-get install "${apt_opts[@]}" $missing >"/tmp/rb-slurm-apt.log" 2>&1; then
      log "apt-get install failed; running apt-get update and retrying"
      apt-get update -q >>"/tmp/rb-slurm-apt.log" 2>&1 || true
      # shellcheck disable=SC2086
      apt-get install "${apt_opts[@]}" $missing >>"/tmp/rb-slurm-apt.log" 2>&1 || {
        [[ $added_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
        die "apt-get install failed" /tmp/rb-slurm-apt.log
      }
    fi
    [[ $added_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    missing=$(missing_packages)
    [[ -z $missing ]] || die "still missing after install: $missing" /tmp/rb-slurm-apt.log
    log "installed"
  fi
  # The Debian packages ship no slurm.conf; make sure none is there for clients to pick up.
  if [[ -e /etc/slurm/slurm.conf ]]; then
    log "WARNING: /etc/slurm/slurm.conf exists; clients without SLURM_CONF will use it" \
      "(and stall ~10 s per snakemake call if its controller is down)"
  fi
}

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
pid_of() { if [[ -f $RUN/$1.pid ]]; then cat "$RUN/$1.pid"; fi; }
# Running and not a zombie (the daemons are reparented to PID 1, which may reap them late).
pid_alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}
alive() {
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid ]] && pid_alive "$pid"
}

slurm_env() {
  export SLURM_CONF=$CONF
  # keep client tools off any system munge/slurm settings
  unset SLURM_CLUSTERS SQUEUE_CLUSTERS SACCT_CLUSTERS 2>/dev/null || true
}

# Start a foreground daemon detached from the caller: no inherited stdio (so a caller capturing
# our output does not hang), own session, PID recorded. RB_SLURM_DAEMON marks its environment so
# `down` can find slurmstepd processes it forked.
start_daemon() {
  local name=$1
  shift
  RB_SLURM_DAEMON=$STATE SLURM_CONF=$CONF setsid "$@" </dev/null >"$LOGS/$name.out" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_for() { # wait_for <seconds> <description> <logs...> -- <command...>
  local secs=$1 what=$2
  shift 2
  local logs=()
  while [[ $1 != -- ]]; do
    logs+=("$1")
    shift
  done
  shift
  local deadline=$((SECONDS + secs)) d probe=$LOGS/last-probe.out
  until "$@" >"$probe" 2>&1; do
    for d in "${DAEMONS[@]}"; do # a daemon that exited will not come back: fail now
      if [[ -f $RUN/$d.pid ]] && ! alive "$d"; then
        die "$d exited while waiting for $what" "$LOGS/$d.out" "${logs[@]}"
      fi
    done
    if ((SECONDS >= deadline)); then
      die "timed out after ${secs}s waiting for $what (check: $*)" "$probe" "${logs[@]}"
    fi
    sleep 0.2
  done
}

# A port is free when no TCP socket (IPv4 or IPv6, TIME_WAIT ignored) is bound to it locally.
port_free() {
  local hex
  hex=$(printf '%04X' "$1")
  ! awk -v p=":$hex" 'NR > 1 && substr($2, length($2) - 4) == p && $4 != "06" { found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_ports() {
  local base=${RB_SLURM_PORT_BASE:-}
  if [[ -n $base ]]; then
    local p
    for p in "$base" $((base + 1)) $((base + 2)) $((base + 3)); do
      port_free "$p" || die "port $p (from RB_SLURM_PORT_BASE=$base) is in use"
    done
  else
    local found=0
    for base in $(seq 16810 10 17800); do
      if port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) &&
        port_free $((base + 3)); then
        found=1
        break
      fi
    done
    [[ $found -eq 1 ]] || die "no 4 free TCP ports in 16810-17803; set RB_SLURM_PORT_BASE"
  fi
  CTLD_PORT=$base
  SLURMD_PORT=$((base + 1))
  DBD_PORT=$((base + 2))
  DB_PORT=$((base + 3))
}

gpu_files() {
  # Fake GPUs: gres needs distinct device files; with task/none slurm only uses them to number
  # the GPUs and sets CUDA_VISIBLE_DEVICES. Prefer /dev/tty0.., otherwise make char devices.
  local i ok=1
  for ((i = 0; i < NGPUS; i++)); do [[ -c /dev/tty$i ]] || ok=0; done
  if [[ $ok -eq 1 ]]; then
    echo "/dev/tty[0-$((NGPUS - 1))]"
  else
    mkdir -p "$STATE/dev"
    for ((i = 0; i < NGPUS; i++)); do
      [[ -c $STATE/dev/fakegpu$i ]] || mknod "$STATE/dev/fakegpu$i" c 1 $((20 + i)) ||
        die "cannot create fake GPU device $STATE/dev/fakegpu$i"
    done
    echo "$STATE/dev/fakegpu[0-$((NGPUS - 1))]"
  fi
}

print_env() {
  echo "export SLURM_CONF=$CONF"
  # shellcheck disable=SC2016
  echo "export PATH=$STATE/bin:\$PATH"
  echo "export RB_SLURM_ACCOUNT=$ACCOUNT"
  echo "export RB_SLURM_PARTITION=$PARTITION"
}

all_alive() {
  local d
  for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done
}

node_idle() {
  local st
  st=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null) || return 1
  [[ $st == idle || $st == mix || $st == alloc ]]
}

# ---------------------------------------------------------------------------------------------
# config files
# ---------------------------------------------------------------------------------------------
write_configs() {
  local host gres_file
  host=$(hostname -s)
  gres_file=$(gpu_files)
  mkdir -p "$ETC" "$LOGS" "$RUN" "$STATE/munge" "$STATE/ctld" "$STATE/slurmd" "$STATE/mysql"
  chmod 700 "$STATE/munge"

  cat >"$CONF" <<EOF
# Generated by tests/slurm/cluster.sh -- single-node test cluster, not for production.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.dpid
SlurmdPidFile=$RUN/slurmd.dpid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
# No cgroups here (no systemd, no delegated cgroup tree): track processes by /proc, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Advertise the configured CPUs/memory even though the machine has fewer.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 min.
MinJobAge=600
InactiveLimit=0
KillWait=5
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Clients reach slurmdbd through this munge socket (AuthInfo alone does not cover dbd connections).
AccountingStoragePass=$STATE/munge/munge.socket
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPU_TYPE:$NGPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

  # snakemake-executor-plugin-slurm-jobstep (0.6.x) drops every SLURM_* variable except a few job
  # ids before it runs `srun ... python -m snakemake` inside the allocation, so that srun loses
  # SLURM_CONF and finds no configuration (/etc/slurm/slurm.conf is deliberately absent). Callers
  # put this wrapper first in PATH (print_env does); it restores SLURM_CONF for srun only.
  mkdir -p "$STATE/bin"
  cat >"$STATE/bin/srun" <<EOF
#!/bin/sh
# Generated by tests/slurm/cluster.sh: restore SLURM_CONF for the test cluster, then run srun.
SLURM_CONF=\${SLURM_CONF:-$CONF}
export SLURM_CONF
exec $(command -v srun) "\$@"
EOF
  chmod 755 "$STATE/bin/srun"

  cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$gres_file
EOF

  cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.dpid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown root:root "$ETC/slurmdbd.conf"
  chmod 600 "$ETC/slurmdbd.conf"
}

# ---------------------------------------------------------------------------------------------
# up / down / status
# ---------------------------------------------------------------------------------------------
cmd_up() {
  need_root
  local p
  for p in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sinfo sacct sacctmgr; do
    command -v "$p" >/dev/null || die "'$p' not found; run '$0 install' first"
  done
  slurm_env

  if [[ -f $STATE/$MARKER ]]; then
    if all_alive && node_idle; then
      log "already up (state dir $STATE)"
      print_env
      return 0
    fi
    log "partially up or stale state in $STATE; tearing it down first"
    cmd_down
  elif [[ -e $STATE ]] && [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
    die "$STATE exists, is not empty and is not a cluster.sh state dir; set RB_SLURM_DIR elsewhere"
  fi

  UP_HINT="daemons started so far are left running, logs in $LOGS; clean up with: $0 down"
  mkdir -p "$STATE"
  touch "$STATE/$MARKER"
  pick_ports
  printf 'CTLD_PORT=%s\nSLURMD_PORT=%s\nDBD_PORT=%s\nDB_PORT=%s\n' \
    "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT" >"$STATE/ports"
  write_configs
  log "state dir $STATE, ports ctld=$CTLD_PORT slurmd=$SLURMD_PORT dbd=$DBD_PORT db=$DB_PORT"

  # munge ---------------------------------------------------------------------------------
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$STATE/munge/munge.key"
  start_daemon munged munged --foreground --force \
    --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$LOGS/munged.log" \
    --seed-file="$STATE/munge/munged.seed" --num-threads=10
  wait_for 15 munged "$LOGS/munged.out" "$LOGS/munged.log" -- \
    bash -c "munge -S '$STATE/munge/munge.socket' -n </dev/null | unmunge -S '$STATE/munge/munge.socket'"
  step "munged ready"

  # mariadb -------------------------------------------------------------------------------
  mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" --skip-test-db \
    --auth-root-authentication-method=socket >"$LOGS/mariadb-install-db.log" 2>&1 ||
    die "mariadb-install-db failed" "$LOGS/mariadb-install-db.log"
  local sock=$STATE/run/mysqld.sock
  start_daemon mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql" \
    --socket="$sock" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$RUN/mariadbd.dpid" --log-error="$LOGS/mariadbd.log" --skip-log-bin \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
    --innodb-flush-log-at-trx-commit=0
  wait_for 30 mariadbd "$LOGS/mariadbd.out" "$LOGS/mariadbd.log" -- \
    mariadb --no-defaults --socket="$sock" -uroot -e 'SELECT 1'
  mariadb --no-defaults --socket="$sock" -uroot -e "
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';" 2>"$LOGS/mariadb-grant.log" ||
    die "creating the slurm database user failed" "$LOGS/mariadb-grant.log" "$LOGS/mariadbd.log"
  step "mariadbd ready"

  # slurmdbd ------------------------------------------------------------------------------
  start_daemon slurmdbd slurmdbd -D
  wait_for 30 slurmdbd "$LOGS/slurmdbd.out" "$LOGS/slurmdbd.log" -- sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >"$LOGS/sacctmgr.log" 2>&1 ||
    die "sacctmgr add cluster failed" "$LOGS/sacctmgr.log" "$LOGS/slurmdbd.log"
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=rationale-bench-tests \
    Organization=rationale-bench >>"$LOGS/sacctmgr.log" 2>&1 ||
    die "sacctmgr add account failed" "$LOGS/sacctmgr.log" "$LOGS/slurmdbd.log"
  local users=(root) u
  u=$(id -un)
  [[ $u == root ]] || users+=("$u")
  [[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]] && users+=("$SUDO_USER")
  for u in "${users[@]}"; do
    sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" \
      >>"$LOGS/sacctmgr.log" 2>&1 ||
      die "sacctmgr add user $u failed" "$LOGS/sacctmgr.log" "$LOGS/slurmdbd.log"
  done
  step "slurmdbd ready, cluster/account/users registered"

  # slurmctld, slurmd ---------------------------------------------------------------------
  start_daemon slurmctld slurmctld -D -i -f "$CONF"
  wait_for 30 slurmctld "$LOGS/slurmctld.out" "$LOGS/slurmctld.log" -- scontrol ping
  step "slurmctld ready"
  start_daemon slurmd slurmd -D -N "$NODE" -f "$CONF"
  wait_for "$UP_TIMEOUT" "node $NODE to become idle" \
    "$LOGS/slurmd.out" "$LOGS/slurmd.log" "$LOGS/slurmctld.log" -- node_idle
  wait_for 30 "sacct" "$LOGS/slurmdbd.log" "$LOGS/slurmctld.log" -- sacct -n -X -a
  wait_for 30 "account $ACCOUNT visible to sacctmgr" "$LOGS/sacctmgr.log" -- \
    bash -c "sacctmgr -n -s list user root format=account%64 | grep -qw '$ACCOUNT'"

  log "up in $(elapsed) s: $(sinfo -h -o '%P %D %t %c CPUs %m MB %G' | head -1)"
  print_env
}

kill_pid() { # kill_pid <pid> <name>: TERM, wait up to 10 s, then KILL
  local pid=$1 name=$2 i
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (pid $pid) did not stop on TERM; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

# Processes of jobs of this cluster that outlive slurmd: slurmstepd (forked by our slurmd, has the
# RB_SLURM_DAEMON marker) and job processes (SLURM_JOB_ID plus our SLURM_CONF).
stray_pids() {
  local f pid env
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    env=$({ tr '\0' '\n' <"$f"; } 2>/dev/null) || continue
    [[ -n $env ]] || continue
    if grep -qxF "RB_SLURM_DAEMON=$STATE" <<<"$env" ||
      { grep -qxF "SLURM_CONF=$CONF" <<<"$env" && grep -q '^SLURM_JOB_ID=' <<<"$env"; }; then
      echo "$pid"
    fi
  done
}

cmd_down() {
  need_root
  slurm_env
  if [[ ! -e $STATE ]]; then
    log "not up (no $STATE)"
    echo "unset SLURM_CONF RB_SLURM_ACCOUNT RB_SLURM_PARTITION"
    return 0
  fi
  [[ -f $STATE/$MARKER ]] || die "$STATE is not a cluster.sh state dir; refusing to touch it"

  if alive slurmctld; then
    # Cancel jobs so slurmstepd and job processes exit cleanly.
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
      log "cancelling jobs"
      scancel -p "$PARTITION" 2>/dev/null || true
      local i
      for ((i = 0; i < 50; i++)); do
        [[ -z $(squeue -h -t R,CG,PD -o %i 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
  local d i pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}
    pid=$(pid_of "$d")
    [[ -n $pid ]] || continue
    kill_pid "$pid" "$d"
    step "$d stopped"
  done
  for pid in $(stray_pids); do kill_pid "$pid" "job process"; done
  rm -rf --one-file-system "$STATE"
  log "down"
  # For `eval "$(cluster.sh down)"`: a SLURM_CONF left pointing at the removed config makes every
  # snakemake call stall ~10 s (measured 11 s) while the SLURM client looks for a controller.
  echo "unset SLURM_CONF RB_SLURM_ACCOUNT RB_SLURM_PARTITION"
}

cmd_status() {
  slurm_env
  if [[ ! -f $STATE/$MARKER ]]; then
    echo "not up (no state dir $STATE)"
    return 1
  fi
  local d rc=0 pid
  for d in "${DAEMONS[@]}"; do
    pid=$(pid_of "$d")
    if alive "$d"; then
      echo "$d: running (pid $pid)"
    else
      echo "$d: NOT running${pid:+ (pid $pid)}"
      rc=1
    fi
  done
  [[ -f $STATE/ports ]] && tr '\n' ' ' <"$STATE/ports" && echo
  echo "SLURM_CONF=$CONF"
  if alive slurmctld; then
    sinfo -N -o '%N %P %t %c %m %G' 2>&1 || true
    squeue 2>&1 || true
  fi
  return $rc
}

cmd_env() {
  [[ -f $STATE/$MARKER ]] || die "not up (no state dir $STATE)"
  print_env
}

case ${1:-} in
install) cmd_install ;;
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
*)
  echo "usage: $0 {install|up|down|status|env}" >&2
  exit 2
  ;;
esac
