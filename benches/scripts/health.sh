#!/usr/bin/env bash
# Peer health probes at scale: twilld with N peers in etcd (the leases of
# hosts that do not exist, so every probe leaves eth0 and goes unanswered: the worst case,
# each miss re-asked at once and followed by an underlay echo), probing
# with its default budget (-peer-health-budget=100 probes/s). Measured over
# WINDOW seconds once every peer is programmed: probes sent per second
# (twill_peer_probes_total), packets out of flannel.1 and eth0 per second
# (sysfs tx_packets), and twilld's CPU (utime+stime from /proc/<pid>/stat)
# as a share of one core (the probe counter is published once a second, so
# a window may count up to a second more of probes). Anchor, same run: the same daemon and peers with
# -peer-health=false.
#
# Usage: benches/scripts/health.sh          (10,000 peers, 30 s windows)
#        TINY=1 benches/scripts/health.sh   (100 peers, 3 s windows)
# Env: PEERS, WINDOW. Needs root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init health

if [[ "$TW_TINY" == 1 ]]; then
    PEERS="${PEERS:-100}"; WINDOW="${WINDOW:-3}"
else
    PEERS="${PEERS:-10000}"; WINDOW="${WINDOW:-30}"
fi

tw_build
tw_single_host
# The peers' PublicIPs (10.1.0.0/16) routed out of eth0 to a gateway with a
# permanent ARP entry, so that every probe, the encapsulated overlay echoes
# and the underlay ones, really leaves eth0 (and is counted there) before
# nothing answers it.
ip -n "$ns" neigh add 10.0.0.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent
ip -n "$ns" route add 10.1.0.0/16 via 10.0.0.1 dev eth0
tw_log "writing $PEERS leases"
out=$(ip netns exec "$ns" "$TWBENCH" populate --n "$PEERS")
tw_take "$out"

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tx() { ip netns exec "$ns" cat "/sys/class/net/$1/statistics/tx_packets"; }

# measure LABEL PID: the figures of one window.
measure() {
    local label="$1" pid="$2"
    # Every peer programmed, and the probes past their start-up spread.
    for _ in $(seq 1 600); do
        [[ "$(tw_metric a twill_peers)" == "$PEERS" ]] && break
        sleep 0.1
    done
    [[ "$(tw_metric a twill_peers)" == "$PEERS" ]] || { echo "twilld did not program $PEERS peers" >&2; exit 1; }
    sleep 2
    local c0 p0 f0 e0 c1 p1 f1 e1
    c0=$(cpu_ticks "$pid"); p0=$(tw_metric a twill_peer_probes_total); f0=$(tx flannel.1); e0=$(tx eth0)
    sleep "$WINDOW"
    c1=$(cpu_ticks "$pid"); p1=$(tw_metric a twill_peer_probes_total); f1=$(tx flannel.1); e1=$(tx eth0)
    if [[ -n "$p0" ]]; then
        tw_result "health_${PEERS}_${label}_probes_per_s" "$(tw_div $((p1 - p0)) "$WINDOW" %.1f)" probes/s
    fi
    tw_result "health_${PEERS}_${label}_flannel_tx_per_s" "$(tw_div $((f1 - f0)) "$WINDOW" %.1f)" packets/s
    tw_result "health_${PEERS}_${label}_eth0_tx_per_s" "$(tw_div $((e1 - e0)) "$WINDOW" %.1f)" packets/s
    tw_result "health_${PEERS}_${label}_cpu" "$(awk -v t=$((c1 - c0)) -v hz="$ticks" -v w="$WINDOW" 'BEGIN { printf "%.2f\n", 100 * t / hz / w }')" "% of one core"
}

tw_log "probes on (default budget), $WINDOW s window"
TWILLD_LOG=warn tw_twilld a twilld-probes http://127.0.0.1:2379 10.0.0.2
pid=$TW_LAST_PID
measure probes "$pid"
unreachable=$(ip netns exec "$ns" curl -sf http://127.0.0.1:8471/metrics | grep -c '^twill_peer_reachable{.*} 0$' || true)
tw_result "health_${PEERS}_probes_unreachable_reported" "$unreachable" peers
warnings=$(grep -c ') unreachable: ' "$TW_STATE/twilld-probes.log" || true)
tw_result "health_${PEERS}_probes_unreachable_log_lines" "$warnings" lines
tw_stop "$pid"

tw_log "anchor: probes off (-peer-health=false), same peers"
TWILLD_LOG=warn tw_twilld a twilld-off http://127.0.0.1:2379 10.0.0.2 -peer-health=false
pid=$TW_LAST_PID
measure off "$pid"
tw_stop "$pid"
tw_report
