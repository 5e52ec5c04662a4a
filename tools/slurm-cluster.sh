#!/usr/bin/env bash
# A real, throwaway Slurm cluster on this machine, for tests and for trying the job scripts:
# one slurmctld and N slurmd daemons (default 2) on loopback, Debian's packages, munge auth.
#
#   tools/slurm-cluster.sh up       install packages if missing, write the config, start (idempotent;
#                                   restarts the cluster when the settings below changed)
#   tools/slurm-cluster.sh down     cancel jobs, stop the daemons (files stay, for the logs)
#   tools/slurm-cluster.sh status   daemons and sinfo; exit 1 when the cluster is not up
#   tools/slurm-cluster.sh env      print `export SLURM_CONF=...` for this cluster
#
# Everything (config, munge key and socket, state, spool, logs) lives under $BIGTRAIN_SLURM_DIR
# (default /tmp/bigtrain-slurm). Settings: BIGTRAIN_SLURM_NODES (2), BIGTRAIN_SLURM_CPUS (CPUs per
# node, 2), BIGTRAIN_SLURM_GPUS (GPUs per node, 2: see below), BIGTRAIN_SLURM_PORT (controller port
# 16817; the nodes use the next ports).
#
# The GPUs are stand-ins: character devices that are /dev/null (made with mknod), declared as Slurm
# `gpu` GRES, so that `--gpus-per-node` allocations and one-rank-per-GPU placement run through the real
# Slurm code; the ranks find no CUDA and train on CPU. BIGTRAIN_SLURM_GPUS=0 leaves them out. Needs root (apt, /etc/hosts, daemons) -- it is meant for CI
# containers and throwaway VMs, not for a machine that runs a real Slurm.
set -euo pipefail

DIR=${BIGTRAIN_SLURM_DIR:-/tmp/bigtrain-slurm}
NODES=${BIGTRAIN_SLURM_NODES:-2}
CPUS=${BIGTRAIN_SLURM_CPUS:-2}
GPUS=${BIGTRAIN_SLURM_GPUS:-2}
PORT=${BIGTRAIN_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
HOSTS_TAG="# bigtrain-slurm test cluster"
export SLURM_CONF=$CONF

node_names() { for i in $(seq 1 "$NODES"); do echo "bt-node$i"; done; }
say() { echo "slurm-cluster: $*" >&2; }
die() { say "error: $*"; exit 2; }

alive() { # alive PIDFILE: the daemon named in the pid file runs (a stopping daemon removes the file)
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

add_hosts() {
  # Job scripts use node names as addresses (MASTER_ADDR), so they must resolve.
  local name
  for name in $(node_names); do
    getent hosts "$name" >/dev/null && continue
    echo "127.0.0.1 $name $HOSTS_TAG" >>/etc/hosts || die "cannot add $name to /etc/hosts (read-only?)"
  done
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 711 "$DIR/munge" # munged insists that clients can reach its socket
  if [ ! -s "$DIR/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
  alive "$DIR/munge/munged.pid" && return
  munged --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
}

render_conf() {
  local host i=0 name gres
  host=$(hostname -s)
  {
    echo "# Written by tools/slurm-cluster.sh; regenerated on every 'up'."
    echo "ClusterName=bigtrain"
    [ "$GPUS" -gt 0 ] && echo "GresTypes=gpu"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    # cred_expire: a requeued job waits cred_expire+1 s before it may start again (default 120).
    echo "AuthInfo=socket=$DIR/munge/munge.sock,cred_expire=10"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
    echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
    # A container has no cgroups to track or bind processes with.
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    # The node lines below are the truth, not what slurmd finds on the (shared) hardware.
    echo "SlurmdParameters=config_overrides"
    echo "MpiDefault=none"
    echo "SwitchType=switch/none"
    echo "JobRequeue=1"
    echo "MinJobAge=120"
    echo "ReturnToService=2"
    echo "SchedulerType=sched/backfill"
    # The scheduler passes every second (default 60 s; backfill 30 s): a requeued job starts as soon as
    # its BeginTime (cred_expire above) has passed, not up to a pass later. A throwaway 2-node cluster.
    echo "SchedulerParameters=sched_interval=1,bf_interval=1"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "JobCompType=jobcomp/none"
    echo "KillWait=10"
    for name in $(node_names); do
      i=$((i + 1))
      gres=""
      [ "$GPUS" -gt 0 ] && gres=" Gres=gpu:$GPUS"
      echo "NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$CPUS$gres State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=bt-node[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
  }
}

write_conf() {
  mkdir -p "$DIR"/{state,spool,log,run}
  render_conf >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  write_gres
  # Let plain `sinfo`/`sbatch` find this cluster without SLURM_CONF, unless a real config is there.
  if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    mkdir -p /etc/slurm
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    say "/etc/slurm/slurm.conf belongs to someone else; use: export SLURM_CONF=$CONF"
  fi
}

write_gres() {
  # Slurm drops a GPU without a device file, and wants a character device: clones of /dev/null.
  local name g
  echo "AutoDetect=off" >"$DIR/gres.conf"
  [ "$GPUS" -gt 0 ] || return 0
  mkdir -p "$DIR/gpu"
  for name in $(node_names); do
    for g in $(seq 0 $((GPUS - 1))); do
      [ -c "$DIR/gpu/$name-gpu$g" ] || mknod "$DIR/gpu/$name-gpu$g" c 1 3 ||
        die "cannot make stand-in GPU devices (mknod); set BIGTRAIN_SLURM_GPUS=0"
    done
    echo "NodeName=$name Name=gpu File=$DIR/gpu/$name-gpu[0-$((GPUS - 1))]" >>"$DIR/gres.conf"
  done
}

wait_idle() {
  local t states
  for t in $(seq 1 60); do
    states=$(sinfo -h -N -o '%t' 2>/dev/null || true)
    if [ "$(grep -c -E '^(idle|mix|alloc)$' <<<"$states")" -eq "$NODES" ]; then
      return 0
    fi
    sleep 1
  done
  sinfo -N >&2 || true
  die "nodes did not come up; see $DIR/log/"
}

cmd_up() {
  install_packages
  [ "$(id -u)" -eq 0 ] || die "run as root (daemons, /etc/hosts)"
  if cmd_status >/dev/null 2>&1; then
    if render_conf | cmp -s - "$CONF"; then
      say "already up ($CONF)"
      return
    fi
    say "settings changed; restarting the cluster"
    cmd_down
  fi
  add_hosts
  start_munge
  write_conf
  local name
  # -c: a throwaway cluster starts with no jobs left over from an earlier run.
  alive "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
  for name in $(node_names); do
    alive "$DIR/run/slurmd-$name.pid" || slurmd -f "$CONF" -N "$name"
  done
  wait_idle
  say "up: $NODES nodes x $CPUS CPUs, $GPUS stand-in GPUs; SLURM_CONF=$CONF"
}

cmd_down() {
  local name pidfile t
  if alive "$DIR/run/slurmctld.pid"; then
    # Cancel jobs first: slurmstepd and the job's processes outlive a killed slurmd.
    scancel --full --quiet $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
    for t in $(seq 1 30); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for pidfile in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"; do
    alive "$pidfile" || continue
    kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
    for t in $(seq 1 20); do alive "$pidfile" || break; sleep 0.5; done
  done
  [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ] && rm -f /etc/slurm/slurm.conf
  if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    # /etc/hosts may be a bind mount (containers): rewrite in place, do not replace the file.
    local kept
    kept=$(grep -v "$HOSTS_TAG" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
  say "down (logs kept in $DIR/log)"
}

cmd_status() {
  local ok=0 name
  alive "$DIR/munge/munged.pid" || { echo "munged: not running"; ok=1; }
  alive "$DIR/run/slurmctld.pid" || { echo "slurmctld: not running"; ok=1; }
  for name in $(node_names); do
    alive "$DIR/run/slurmd-$name.pid" || { echo "slurmd $name: not running"; ok=1; }
  done
  [ $ok -eq 0 ] || return 1
  sinfo -N || return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
