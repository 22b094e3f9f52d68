#!/usr/bin/env bash
# Dataplane: TCP throughput (iperf3, 1 and 4 streams, median of RUNS runs)
# and ping RTT (p50/p99) over three paths between two hosts (namespaces, a
# veth underlay with MTU 1500), each in its own pair of hosts:
#
#   (a) underlay  host to host over the veth
#   (b) handbuilt container to container through a VXLAN overlay made with
#                 ip/bridge exactly as flannel makes it (flannel.1, learning
#                 off, MTU 1450, /32 address, permanent ARP + FDB + onlink
#                 route, a cni0 bridge with one container per host)
#   (c) twill     the same topology, programmed by twilld (etcd on host 1)
#
# Runs are interleaved (run 1 of a, b, c, then run 2 of b, c, a ...) so a
# noisy neighbour affects all three alike. Prints (b)/(a), (c)/(a) and (c)/(b)
# of the medians, and (c)/(b) "paired": the median of the per-run ratios.
# Also compares `ip -d link`, `ethtool -k` and the sysctls of the two
# flannel.1 devices (in the log).
#
# Usage: benches/scripts/dataplane.sh          (5 s runs, 3 runs, 200 pings)
#        TINY=1 benches/scripts/dataplane.sh   (1 s, 1 run, 20 pings)
# Env: SECONDS_PER_RUN, RUNS, PINGS. Needs root, iperf3, jq (ethtool if present).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init dataplane

if [[ "$TW_TINY" == 1 ]]; then
    T="${SECONDS_PER_RUN:-1}"; RUNS="${RUNS:-1}"; PINGS="${PINGS:-20}"
else
    T="${SECONDS_PER_RUN:-5}"; RUNS="${RUNS:-3}"; PINGS="${PINGS:-200}"
fi
for c in iperf3 jq; do
    command -v "$c" >/dev/null || { echo "dataplane.sh: needs $c (scripts/install-deps.sh)" >&2; exit 1; }
done
SAMPLES="${SAMPLES_DIR:-$TW_STATE}"
mkdir -p "$SAMPLES"

tw_build

# Two hosts of pair P on a veth underlay: P-h1 10.10.0.1, P-h2 10.10.0.2.
make_hosts() {
    local p="$1"
    tw_ns "$p-h1"
    tw_ns "$p-h2"
    tw_veth "$p-h1" eth0 10.10.0.1/24 "$p-h2" eth0 10.10.0.2/24 1500
    for h in h1 h2; do
        ip netns exec "$(tw_n "$p-$h")" sysctl -qw net.ipv4.ip_forward=1
    done
}

# add_container P HOST SUBNET_GW/LEN MTU: a cni0 bridge on the host holding
# the gateway address, and a container namespace P-cN with .2 behind it
# (its address in $CIP; not called in $(...), so the namespace is recorded).
add_container() {
    local p="$1" h="$2" gwlen="$3" mtu="$4"
    local host c gw len cip
    host="$(tw_n "$p-$h")"
    c="${h/h/c}"
    gw="${gwlen%/*}"
    len="${gwlen#*/}"
    cip="${gw%.*}.2"
    ip -n "$host" link add cni0 type bridge
    ip -n "$host" addr add "$gwlen" dev cni0
    ip -n "$host" link set cni0 mtu "$mtu" up
    tw_ns "$p-$c"
    ip link add "tw$$c" type veth peer name "tw$$d"
    ip link set "tw$$c" netns "$host"
    ip link set "tw$$d" netns "$(tw_n "$p-$c")"
    ip -n "$host" link set "tw$$c" name veth0 mtu "$mtu" master cni0 up
    ip -n "$(tw_n "$p-$c")" link set "tw$$d" name eth0 mtu "$mtu" up
    ip -n "$(tw_n "$p-$c")" addr add "$cip/$len" dev eth0
    ip -n "$(tw_n "$p-$c")" route add default via "$gw"
    CIP="$cip"
}

tw_log "(a) underlay pair"
make_hosts u

tw_log "(b) hand-built flannel VXLAN pair"
make_hosts f
declare -A SUBNET=([h1]=10.244.1 [h2]=10.244.2) UIP=([h1]=10.10.0.1 [h2]=10.10.0.2) \
    MAC=([h1]=0e:00:00:00:01:01 [h2]=0e:00:00:00:01:02)
for h in h1 h2; do
    ns=$(tw_n "f-$h")
    # As flannel's pkg/backend/vxlan/device.go: VNI 1, local = underlay
    # address, underlay device, learning off, kernel default port 8472,
    # MTU = underlay - 50, its own MAC, accept_ra 0, <subnet>.0/32, up.
    ip -n "$ns" link add flannel.1 type vxlan id 1 local "${UIP[$h]}" dev eth0 dstport 8472 nolearning
    ip -n "$ns" link set flannel.1 mtu 1450 address "${MAC[$h]}"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.flannel/1.accept_ra=0 2>/dev/null || true
    ip -n "$ns" addr add "${SUBNET[$h]}.0/32" dev flannel.1
    ip -n "$ns" link set flannel.1 up
done
for h in h1 h2; do
    o=h2; [[ "$h" == h2 ]] && o=h1
    ns=$(tw_n "f-$h")
    ip -n "$ns" neigh replace "${SUBNET[$o]}.0" lladdr "${MAC[$o]}" dev flannel.1 nud permanent
    ip netns exec "$ns" bridge fdb append "${MAC[$o]}" dev flannel.1 dst "${UIP[$o]}" self permanent
    ip -n "$ns" route replace "${SUBNET[$o]}.0/24" via "${SUBNET[$o]}.0" dev flannel.1 onlink
done
add_container f h2 10.244.2.1/24 1450
F_C2=$CIP
add_container f h1 10.244.1.1/24 1450

tw_log "(c) twilld pair (etcd on host 1)"
make_hosts t
tw_etcd t-h1 10.10.0.1
tw_config t-h1 10.244.0.0/16
tw_twilld t-h1 twilld-h1 http://10.10.0.1:2379 10.10.0.1
tw_twilld t-h2 twilld-h2 http://10.10.0.1:2379 10.10.0.2
for h in h1 h2; do
    # shellcheck disable=SC1090
    . "$TW_STATE/twilld-$h/subnet.env"
    add_container t "$h" "$FLANNEL_SUBNET" "$FLANNEL_MTU"
    [[ "$h" == h2 ]] && T_C2=$CIP
done
# Each twilld programs the other's lease once it sees it.
for _ in $(seq 1 100); do
    ip netns exec "$(tw_n t-c1)" ping -c 1 -W 1 -q "$T_C2" >/dev/null 2>&1 && break
    sleep 0.1
done
ip netns exec "$(tw_n f-c1)" ping -c 1 -W 2 -q "$F_C2" >/dev/null || { echo "hand-built overlay does not ping" >&2; exit 1; }
ip netns exec "$(tw_n t-c1)" ping -c 1 -W 2 -q "$T_C2" >/dev/null || { echo "twill overlay does not ping" >&2; exit 1; }

tw_log "comparing the two flannel.1 devices (hand-built vs twilld)"
describe() {
    local ns="$1"
    ip -n "$ns" -d link show flannel.1 | sed -E 's/link\/ether [0-9a-f:]+/link\/ether MAC/; s/local [0-9.]+/local IP/; s/ (mtu|index|ifindex) [0-9]+/ \1 N/g; s/^[0-9]+: //; s/@if[0-9]+//; s/ numtxqueues.*//' | grep -v "^ *$"
    if command -v ethtool >/dev/null; then ip netns exec "$ns" ethtool -k flannel.1 | grep -v fixed; fi
    ip netns exec "$ns" sysctl net.ipv4.conf.flannel/1.rp_filter net.ipv6.conf.flannel/1.accept_ra 2>/dev/null || true
}
describe "$(tw_n f-h1)" >"$SAMPLES/dataplane_flannel1_handbuilt.txt"
describe "$(tw_n t-h1)" >"$SAMPLES/dataplane_flannel1_twill.txt"
if diff -u "$SAMPLES/dataplane_flannel1_handbuilt.txt" "$SAMPLES/dataplane_flannel1_twill.txt" >"$SAMPLES/dataplane_flannel1.diff"; then
    tw_log "  identical (ip -d link, ethtool -k, rp_filter, accept_ra)"
    DEVICES_DIFFER=0
else
    tw_log "  they differ:"
    sed 's/^/    /' "$SAMPLES/dataplane_flannel1.diff" >&2
    DEVICES_DIFFER=1
fi

# One iperf3 server per path's receiving end.
declare -A SRV=([underlay]=u-h2 [handbuilt]=f-c2 [twill]=t-c2) \
    CLI=([underlay]=u-h1 [handbuilt]=f-c1 [twill]=t-c1) \
    DST=([underlay]=10.10.0.2 [handbuilt]=$F_C2 [twill]=$T_C2)
PATHS=(underlay handbuilt twill)

gbps() {
    jq -r '.end.sum_received.bits_per_second / 1e9 * 1000 | round / 1000'
}

declare -A TP
for run in $(seq 1 "$RUNS"); do
    # Rotate the order each run, so no path always runs right after another.
    k=$(( (run - 1) % 3 ))
    ORDER=("${PATHS[@]:k}" "${PATHS[@]:0:k}")
    for streams in 1 4; do
        for p in "${ORDER[@]}"; do
            # -1: serve one client, then exit.
            tw_bg "${SRV[$p]}" "iperf3-$p" iperf3 -s -1
            srv=$TW_LAST_PID
            for _ in $(seq 1 50); do
                ip netns exec "$(tw_n "${SRV[$p]}")" ss -ltn 2>/dev/null | grep -q ':5201 ' && break
                sleep 0.05
            done
            v=$(ip netns exec "$(tw_n "${CLI[$p]}")" iperf3 -c "${DST[$p]}" -t "$T" -P "$streams" -J | gbps)
            wait "$srv" 2>/dev/null || true
            TP[$p-$streams]="${TP[$p-$streams]:-} $v"
            echo "$p $streams $run $v" >>"$SAMPLES/dataplane_throughput.txt"
            tw_log "run $run, $streams stream(s), $p: $v Gbit/s"
        done
    done
done

for streams in 1 4; do
    for p in "${PATHS[@]}"; do
        # shellcheck disable=SC2086
        m=$(tw_median ${TP[$p-$streams]})
        tw_result "dataplane_${p}_${streams}stream_gbps" "$m" Gbit/s
    done
    u=$(tw_value "dataplane_underlay_${streams}stream_gbps")
    b=$(tw_value "dataplane_handbuilt_${streams}stream_gbps")
    c=$(tw_value "dataplane_twill_${streams}stream_gbps")
    tw_result "dataplane_handbuilt_vs_underlay_${streams}stream_ratio" "$(tw_div "$b" "$u")" x
    tw_result "dataplane_twill_vs_underlay_${streams}stream_ratio" "$(tw_div "$c" "$u")" x
    tw_result "dataplane_twill_vs_handbuilt_${streams}stream_ratio" "$(tw_div "$c" "$b")" x
    # Paired: (c)/(b) within each run (the two ran seconds apart), then the
    # median; less sensitive to a neighbour's load drifting across runs.
    # shellcheck disable=SC2086
    paired=$(paste <(printf '%s\n' ${TP[twill-$streams]}) <(printf '%s\n' ${TP[handbuilt-$streams]}) |
        awk '{ printf "%.4f\n", $1 / $2 }')
    # shellcheck disable=SC2086
    tw_result "dataplane_twill_vs_handbuilt_${streams}stream_paired_ratio" "$(printf '%.3f' "$(tw_median $paired)")" x
done

tw_log "ping RTT: $PINGS pings at 10 ms on each path"
for p in "${PATHS[@]}"; do
    ip netns exec "$(tw_n "${CLI[$p]}")" ping -n -c "$PINGS" -i 0.01 "${DST[$p]}" |
        sed -nE 's/.*time=([0-9.]+) ms/\1/p' >"$SAMPLES/dataplane_rtt_$p.txt"
    n=$(wc -l <"$SAMPLES/dataplane_rtt_$p.txt")
    [[ "$n" -ge $((PINGS * 9 / 10)) ]] || { echo "$p: only $n of $PINGS pings answered" >&2; exit 1; }
    read -r p50 p99 < <(sort -g "$SAMPLES/dataplane_rtt_$p.txt" | awk '{a[NR] = $1} END {
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.3f %.3f\n", a[i50], a[i99] }')
    tw_result "dataplane_${p}_rtt_p50_ms" "$p50" ms
    tw_result "dataplane_${p}_rtt_p99_ms" "$p99" ms
done
for q in p50 p99; do
    tw_result "dataplane_twill_vs_handbuilt_rtt_${q}_ratio" \
        "$(tw_div "$(tw_value "dataplane_twill_rtt_${q}_ms")" "$(tw_value "dataplane_handbuilt_rtt_${q}_ms")")" x
done
tw_result dataplane_flannel1_devices_differ "$DEVICES_DIFFER" bool
tw_report
