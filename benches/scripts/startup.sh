#!/usr/bin/env bash
# Start-up at scale: N leases already in etcd; time from twilld's start to
# /readyz OK (lease held and every peer programmed), and the etcd requests it
# made meanwhile, counted from etcd's own /metrics (grpc_server_started_total
# by method) and from twilld's debug log ("listed leases"). flanneld makes one
# range request plus one LeaseTimeToLive per lease; the goal is one listing.
# Anchors, same run: one listing of all N leases by twbench (etcd-client),
# and iproute2 programming the same N peers into a fresh namespace in
# flannel's layout (the kernel's share of flanneld's cold start: per lease
# what flannel's pkg/backend/vxlan does, AddARP = neigh replace, AddFDB =
# fdb replace, RouteReplace of <subnet> via <subnet>.0 dev flannel.1 onlink,
# proto boot). Beside it, for reference, iproute2 programming the layout
# twill uses where the kernel has nexthop objects (one object per peer, the
# route through it).
#
# Trials: a cold start (no VXLAN device: every entry is programmed) repeated
# TRIALS times (the device is deleted before each), then warm restarts (the
# kernel already holds everything: nothing to program).
#
# Usage: benches/scripts/startup.sh           (10,000 leases, 3 trials each)
#        TINY=1 benches/scripts/startup.sh    (100 leases, 1 trial each)
# Env: LEASES, TRIALS. Needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init startup

if [[ "$TW_TINY" == 1 ]]; then
    LEASES="${LEASES:-100}"; TRIALS="${TRIALS:-1}"
else
    LEASES="${LEASES:-10000}"; TRIALS="${TRIALS:-3}"
fi

tw_build
tw_single_host

tw_log "writing $LEASES leases"
out=$(ip netns exec "$ns" "$TWBENCH" populate --n "$LEASES")
tw_take "$out"

run_startup() {
    local label="$1"
    shift
    # twill_etcd logs each listing ("listed leases") at debug level.
    ip netns exec "$ns" env RUST_LOG=info,twill_etcd=debug "$TWBENCH" startup --label "$label" --trials "$TRIALS" \
        --readyz http://127.0.0.1:8471/readyz --metrics http://127.0.0.1:2379/metrics \
        --log "$TW_STATE/$label" "$@" -- \
        "$TWILLD" -etcd-endpoints=http://127.0.0.1:2379 -iface=10.0.0.2 \
        -subnet-file="$TW_STATE/subnet.env" -healthz-ip=127.0.0.1 -healthz-port=8471
}

tw_log "cold starts (VXLAN device deleted before each)"
out=$(run_startup "startup_${LEASES}_cold" --reset-dev flannel.1)
tw_take "$out"
tw_result "startup_${LEASES}_cold_listings" "$(grep -c 'listed leases' "$TW_STATE/startup_${LEASES}_cold.0")" n
tw_log "warm restarts (kernel already programmed)"
out=$(run_startup "startup_${LEASES}_warm")
tw_take "$out"
tw_result "startup_${LEASES}_warm_listings" "$(grep -c 'listed leases' "$TW_STATE/startup_${LEASES}_warm.0")" n

# A fresh namespace with flannel's device, for one iproute2 anchor.
scratch_host() {
    tw_ns "$1"
    sns=$(tw_n "$1")
    ip -n "$sns" link add eth0 type veth peer name eth0p
    ip -n "$sns" addr add 10.0.0.2/24 dev eth0
    ip -n "$sns" link set eth0 up
    ip -n "$sns" link set eth0p up
    ip -n "$sns" link add flannel.1 type vxlan id 1 local 10.0.0.2 dev eth0 dstport 8472 nolearning
    ip -n "$sns" link set flannel.1 up
}

# iproute2 programming $LEASES peers into namespace $sns: ARP and FDB as
# flannel does, routes as $1 says (flannel: via the gateway; nexthop: one
# object per peer and the route through it). Prints the milliseconds.
iproute2_program() {
    awk -v n="$LEASES" -v layout="$1" -v ipf="$TW_STATE/ip.$1.batch" -v brf="$TW_STATE/bridge.$1.batch" 'BEGIN {
        for (i = 0; i < n; i++) {
            a = 128 + int(i / 256); b = i % 256
            gw = sprintf("10.%d.%d.0", a, b); p = i + 1
            mac = sprintf("0e:00:00:%02x:%02x:%02x", int(i / 65536) % 256, int(i / 256) % 256, i % 256)
            printf "neigh replace %s lladdr %s dev flannel.1 nud permanent\n", gw, mac > ipf
            if (layout == "flannel") {
                printf "route replace %s/24 via %s dev flannel.1 onlink\n", gw, gw > ipf
            } else {
                id = ((10 * 256 + a) * 256 + b) * 256
                printf "nexthop replace id %d via %s dev flannel.1 onlink proto 241\n", id, gw > ipf
                printf "route replace %s/24 nhid %d proto 241\n", gw, id > ipf
            }
            printf "fdb replace %s dev flannel.1 dst 10.1.%d.%d self permanent\n", mac, int(p / 256), p % 256 > brf
        } }'
    local t0 t1
    t0=$(date +%s%N)
    ip -n "$sns" -batch "$TW_STATE/ip.$1.batch"
    ip netns exec "$sns" bridge -batch "$TW_STATE/bridge.$1.batch"
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'
}

tw_log "anchor: iproute2 programming the same $LEASES peers in flannel's layout (ip -batch + bridge -batch)"
scratch_host scratch
tw_result "startup_${LEASES}_anchor_iproute2_program_ms" "$(iproute2_program flannel)" ms
tw_log "reference: iproute2 programming them through nexthop objects"
scratch_host scratchnh
tw_result "startup_${LEASES}_iproute2_nexthop_program_ms" "$(iproute2_program nexthop)" ms
tw_result "startup_${LEASES}_cold_ratio_vs_iproute2_program" \
    "$(tw_div "$(tw_value "startup_${LEASES}_cold_ready_median_ms")" "$(tw_value "startup_${LEASES}_anchor_iproute2_program_ms")" %.2f)" x

list=$(tw_value populate_list_ms)
tw_result "startup_${LEASES}_cold_ratio_vs_listing" \
    "$(tw_div "$(tw_value "startup_${LEASES}_cold_ready_median_ms")" "$list" %.2f)" x
tw_result "startup_${LEASES}_warm_ratio_vs_listing" \
    "$(tw_div "$(tw_value "startup_${LEASES}_warm_ready_median_ms")" "$list" %.2f)" x
tw_report
