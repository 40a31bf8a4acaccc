#!/usr/bin/env bash
# Stop the single-node SLURM that tests/slurm/start.sh started: slurmd, slurmctld, then munged.
# Bounded in time (KT_SLURM_STOP_TIMEOUT, default 20 s per daemon); never waits forever.
# Daemons are stopped through their own pid files (SIGTERM, then SIGKILL), after asking
# slurmctld to shut the cluster down cleanly. Exit 0 when nothing of it is left running.
set -uo pipefail

WAIT_S=${KT_SLURM_STOP_TIMEOUT:-20}
say() { echo "stop.sh: $*" >&2; }

# stop_pid NAME PIDFILE: SIGTERM the pid in PIDFILE, wait, then SIGKILL; true if it is gone.
stop_pid() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    # only a live process of that name (pid files can be stale)
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$name" ] || { rm -f "$pidfile"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((WAIT_S * 2))); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    say "$name ($pid) ignored SIGTERM for ${WAIT_S}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
    ! kill -0 "$pid" 2>/dev/null
}

# Let slurmctld tell slurmd to stop and save its state (returns at once; the daemons exit soon).
if command -v scontrol >/dev/null; then
    timeout 10 scontrol shutdown >/dev/null 2>&1 || true
fi

rc=0
stop_pid slurmd /run/slurmd.pid || rc=1
stop_pid slurmctld /run/slurmctld.pid || rc=1
stop_pid munged /run/munge/munged.pid || rc=1
[ "$rc" = 0 ] && say "SLURM stopped" || say "some daemon would not stop"
exit "$rc"
