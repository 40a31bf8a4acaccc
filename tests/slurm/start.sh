#!/usr/bin/env bash
# Start a real single-node SLURM (Debian's Slurm 22.05) on this host, by hand (no systemd).
#
#   tests/slurm/start.sh        # install if missing, configure, start, wait until the node is idle
#   tests/slurm/stop.sh         # stop it again
#
# The node is this host (hostname -s) with all its CPUs (nproc) and ~90 % of its memory, in one
# partition `debug` (Default=YES). No cgroups (proctrack/linuxproc, task/none) and no accounting
# database: `sacct` does not work here, so Snakemake's SLURM executor must query `squeue`
# (workflow/profiles/slurm sets slurm-status-command: squeue).
#
# Idempotent: if a SLURM already answers and its node is idle (or busy), exit 0 at once.
# Exit codes: 0 ready; 3 the packages are missing and cannot be installed (not root, or apt-get
# failed: no network) -- the pytest fixture skips on 3 outside CI; 1 anything else (logs printed).
# Needs root for everything but the "already running" check.
set -uo pipefail

WAIT_S=${KT_SLURM_START_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
MARK="# written by kt tests/slurm/start.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "start.sh: $*" >&2; }

node_ready() {
    # true when every node line of sinfo is idle/mixed/allocated (no '*' = not responding)
    local states
    states=$(timeout 10 sinfo -h -o %T 2>/dev/null) || return 1
    [ -n "$states" ] || return 1
    ! grep -qvxE 'idle|mixed|allocated|completing' <<<"$states"
}

show_logs() {
    say "SLURM did not come up; diagnostics follow"
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$f" ] && { echo "----- tail $f" >&2; tail -n 40 "$f" >&2; }
    done
    echo "----- sinfo" >&2
    timeout 10 sinfo -N -l >&2 2>&1 || true
    echo "----- scontrol show node" >&2
    timeout 10 scontrol show node >&2 2>&1 || true
}

# 0. Already running? Then there is nothing to do.
if command -v sinfo >/dev/null && node_ready; then
    say "SLURM is already running: $(sinfo -h -o '%P %D %T %C' | head -n1)"
    exit 0
fi

# 1. Packages.
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "packages missing (${missing[*]}) and not root: cannot install them"
        exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        say "packages missing (${missing[*]}) and no apt-get here"
        exit 3
    fi
    say "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from trying to start services (no init system here).
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    ok=1
    timeout 300 apt-get update -q >&2 || ok=0
    if [ "$ok" = 1 ]; then
        timeout 600 apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2 || ok=0
    fi
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$ok" = 0 ]; then
        say "apt-get could not install ${PACKAGES[*]}"
        exit 3
    fi
fi

if [ "$(id -u)" -ne 0 ]; then
    say "SLURM is installed but not running, and starting its daemons needs root"
    exit 1
fi

# 2. slurm.conf (ours is rewritten every time; a foreign one is kept aside as slurm.conf.orig).
host=$(hostname -s)
cpus=$(nproc)
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
real_mem=$((mem_total * 9 / 10))
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "keeping the existing $CONF as $CONF.orig"
    mv "$CONF" "$CONF.orig"
fi
cat >"$CONF" <<EOF
$MARK: a single-node test cluster.
ClusterName=kt
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# squeue must still see a finished job when the executor polls (>= 3x its first poll delay) and
# when the test looks at a run's jobs afterwards: keep finished jobs for an hour.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# Debian's slurm.conf lives in /etc/slurm; job steps and clients read it there.

# 3. munge: a key, then the daemon (as the munge user, like its service does).
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
fi
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    say "starting munged"
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged || { say "munged failed to start"; show_logs; exit 1; }
    else
        /usr/sbin/munged --force || { say "munged failed to start"; show_logs; exit 1; }
    fi
    for _ in $(seq 20); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.5; done
fi

# 4. slurmctld and slurmd (both daemonize; -c on slurmctld: forget jobs of an earlier run).
if ! pgrep -x slurmctld >/dev/null; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -c || { show_logs; exit 1; }
fi
if ! pgrep -x slurmd >/dev/null; then
    say "starting slurmd"
    /usr/sbin/slurmd || { show_logs; exit 1; }
fi

# 5. Wait (bounded) until the node is idle.
deadline=$((SECONDS + WAIT_S))
while [ "$SECONDS" -lt "$deadline" ]; do
    if node_ready; then
        say "SLURM is up: $(sinfo -h -o '%P %D %T %C' | head -n1) (partition nodes state cpus A/I/O/T)"
        exit 0
    fi
    # A node left DOWN by an earlier unclean stop: bring it back.
    if timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(down|drain)'; then
        timeout 10 scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 1
done
say "the node did not become idle within ${WAIT_S}s"
show_logs
exit 1
