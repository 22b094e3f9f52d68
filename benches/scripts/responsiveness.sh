#!/usr/bin/env bash
# Responsiveness while programming: N leases already in etcd; twilld (vxlan)
# is started in a host namespace with /healthz on, and twbench, from the same
# namespace, polls GET /healthz back to back (a new TCP connection each, 5 ms
# apart), timing each request from connect to the full answer, through:
#
#   cold      from twilld's start until every one of the N peers has its ARP,
#             FDB and route entries (watched on a netlink monitor socket);
#   idle      the anchor: the same daemon, all N programmed, nothing to do
#             (12 s: one periodic reconcile at twilld's default 10 s falls in it);
#   recreate  `ip link del flannel.1` until twilld's periodic reconcile has
#             re-created it and every peer is back.
#
# Per window: requests, worst, p99, p50, and how many took >= 100 ms (the
# issue-14 goal is none at N = 10,000). Also put → programmed for one lease
# put when the cold start's first entry appears, against the same on the
# idle daemon (a peer joining while the daemon programs).
#
# Usage: benches/scripts/responsiveness.sh                 (10,000 leases)
#        TINY=1 benches/scripts/responsiveness.sh          (100 leases, seconds)
#        TWILLD=/tmp/twilld-before benches/scripts/responsiveness.sh
#                                                          (another twilld binary)
# Env: LEASES, IDLE_S, RECONCILE_INTERVAL (twilld's -reconcile-interval; its
# default when unset, 1s with TINY=1), TWILLD. Needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init responsiveness

if [[ "$TW_TINY" == 1 ]]; then
    LEASES="${LEASES:-100}"; IDLE_S="${IDLE_S:-1}"; RECONCILE_INTERVAL="${RECONCILE_INTERVAL:-1s}"
else
    LEASES="${LEASES:-10000}"; IDLE_S="${IDLE_S:-12}"; RECONCILE_INTERVAL="${RECONCILE_INTERVAL:-}"
fi

tw_build
tw_log "twilld: $TWILLD"
tw_single_host

tw_log "writing $LEASES leases"
out=$(ip netns exec "$ns" "$TWBENCH" populate --n "$LEASES")
tw_take "$out"

flags=(-etcd-endpoints=http://127.0.0.1:2379 -iface=10.0.0.2 -subnet-file="$TW_STATE/subnet.env"
    -healthz-ip=127.0.0.1 -healthz-port=8471)
[[ -n "$RECONCILE_INTERVAL" ]] && flags+=(-reconcile-interval="$RECONCILE_INTERVAL")
tw_log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
tw_result responsiveness_load_before "$(cut -d' ' -f1 /proc/loadavg)" loadavg
tw_log "cold start, idle ${IDLE_S}s, flannel.1 deleted and re-created; /healthz polled throughout"
out=$(ip netns exec "$ns" env RUST_LOG="${TWILLD_LOG:-info}" "$TWBENCH" responsiveness --idle-s "$IDLE_S" \
    --log "$TW_STATE/twilld.log" --samples "${SAMPLES_DIR:-$TW_STATE}/responsiveness_samples.txt" -- \
    "$TWILLD" "${flags[@]}")
tw_take "$out"
tw_result responsiveness_load_after "$(cut -d' ' -f1 /proc/loadavg)" loadavg
tw_report
