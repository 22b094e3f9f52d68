#!/usr/bin/env bash
# Lease events at scale (issue 16, goal 1): what one lease event costs with
# N peers already programmed, N = 10, 100, 1,000, 10,000, in one twilld.
#
# One host (a namespace with etcd on its loopback and twilld). At each size,
# twbench puts one lease at a time (TRIALS trials, 20 ms apart) and takes,
# from the kernel's own netlink notifications, the time until the new peer's
# ARP, FDB and route entries exist; the anchor is the time etcd's watch
# delivers the same put to twbench. Beside it, twilld's CPU time over the
# trials (all threads, /proc/PID/task/*/schedstat) per event. twilld runs
# with -reconcile-interval=1h, so the figures are the event path alone; a
# last round at the largest size restarts it with its default interval
# (a full pass every 10 s, the safety net) and measures again.
#
# Usage: benches/scripts/incremental.sh             (10 .. 10,000 peers, 200 trials)
#        TINY=1 benches/scripts/incremental.sh      (10 and 100 peers, 20 trials)
#        TWILLD=/tmp/twilld-before benches/scripts/incremental.sh   (another binary)
# Env: SIZES, TRIALS. Needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init incremental

if [[ "$TW_TINY" == 1 ]]; then
    SIZES="${SIZES:-10 100}"; TRIALS="${TRIALS:-20}"
else
    SIZES="${SIZES:-10 100 1000 10000}"; TRIALS="${TRIALS:-200}"
fi

tw_build
tw_log "twilld: $TWILLD"
tw_single_host

# wait_peers N: until twilld has programmed exactly N peer routes (deadline).
wait_peers() {
    local want="$1" have=0
    for _ in $(seq 1 1200); do
        have=$(ip -n "$ns" route show proto 241 | wc -l)
        [[ "$have" -eq "$want" ]] && return 0
        sleep 0.1
    done
    echo "twilld programmed $have peers, not $want, within 120 s" >&2
    exit 1
}

# trials LABEL PID: one round of single-lease trials, figures named LABEL_*.
trials() {
    local out
    out=$(ip netns exec "$ns" "$TWBENCH" converge --trials "$TRIALS" --from 20000 --cpu-of "$2")
    tw_take "$(sed "s/^converge_/$1_/" <<<"$out")"
}

tw_twilld a twilld http://127.0.0.1:2379 10.0.0.2 -reconcile-interval=1h
pid=$TW_LAST_PID
written=0
largest=0
for n in $SIZES; do
    out=$(ip netns exec "$ns" "$TWBENCH" populate --n $((n - written)) --from 0)
    written=$n
    largest=$n
    wait_peers "$n"
    tw_log "$n peers programmed: $TRIALS single-lease trials"
    trials "events_$n" "$pid"
    wait_peers "$n"
done
kill -0 "$pid" || { echo "twilld died" >&2; tail "$TW_STATE/twilld.log" >&2; exit 1; }

tw_log "twilld restarted with its default -reconcile-interval (full passes every 10 s)"
tw_stop "$pid"
tw_twilld a twilld http://127.0.0.1:2379 10.0.0.2
pid=$TW_LAST_PID
wait_peers "$largest"
trials "events_${largest}_periodic" "$pid"
metrics=$(ip netns exec "$ns" curl -sf http://127.0.0.1:8471/metrics || true)
# Passes since the restart that were full ones (the metric is new: 0 when
# an older twilld does not have it).
all=$(awk '/^twill_reconciles_total/ {print $2}' <<<"$metrics")
incremental=$(awk '/^twill_reconciles_incremental_total/ {print $2}' <<<"$metrics")
tw_result events_periodic_full_passes "$(( ${all:-0} - ${incremental:-0} ))" n
kill -0 "$pid" || { echo "twilld died" >&2; tail "$TW_STATE/twilld.log" >&2; exit 1; }
tw_report
