#!/usr/bin/env bash
# Convergence: how long from a lease put into etcd until twilld has programmed
# the peer's ARP, FDB and route entries in its host's kernel.
#
# One host (a namespace with etcd on its loopback and twilld). twbench, inside
# the namespace, puts one lease at a time and timestamps the kernel's own
# netlink notifications (no polling); the anchor is the time etcd's watch
# delivers the same put to twbench. Then a join storm: N leases put at once
# (concurrent puts), time until all are programmed (anchor: all puts acked).
#
# Usage: benches/scripts/convergence.sh            (200 trials, storm of 1,000)
#        TINY=1 benches/scripts/convergence.sh     (10 trials, storm of 50)
# Env: TRIALS, STORM override the sizes. Needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init convergence

if [[ "$TW_TINY" == 1 ]]; then
    TRIALS="${TRIALS:-10}"; STORM="${STORM:-50}"
else
    TRIALS="${TRIALS:-200}"; STORM="${STORM:-1000}"
fi

tw_build
tw_log "host A: etcd on loopback, twilld on a 10.0.0.2 underlay"
tw_ns a
ip -n "$(tw_n a)" link add eth0 type veth peer name eth0p
ip -n "$(tw_n a)" link set eth0p up
ip -n "$(tw_n a)" addr add 10.0.0.2/24 dev eth0
ip -n "$(tw_n a)" link set eth0 up
tw_etcd a 127.0.0.1
tw_config a 10.128.0.0/9
tw_twilld a twilld-a http://127.0.0.1:2379 10.0.0.2
TWILLD_PID=$TW_LAST_PID

tw_log "$TRIALS single-lease trials"
out=$(ip netns exec "$(tw_n a)" "$TWBENCH" converge --trials "$TRIALS" --from 20000 \
    --samples "${SAMPLES_DIR:-$TW_STATE}/convergence_samples.txt")
tw_take "$out"

tw_log "join storm: $STORM leases at once"
out=$(ip netns exec "$(tw_n a)" "$TWBENCH" storm --n "$STORM" --from 24000)
tw_take "$out"

kill -0 "$TWILLD_PID" || { echo "twilld died" >&2; tail "$TW_STATE/twilld-a.log" >&2; exit 1; }
tw_report
