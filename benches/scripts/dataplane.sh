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
# FAMILY=6: the same three paths over IPv6, on a dual-stack underlay
# (fd10::1/64, fd10::2/64 beside the IPv4 addresses): (a) host to host over
# IPv6; (b) the hand-built overlay made dual-stack as flannel makes it with
# EnableIPv6 (flannel.1 as above, plus flannel-v6.1: local = the host's IPv6
# address, learning off, MTU 1430 (the kernel's 1500 - 70), its own MAC,
# accept_ra 0, <v6 subnet>::/128, permanent NDP + FDB (IPv6 dst) + onlink
# IPv6 route per peer; containers dual-stack, MTU 1450 as flannel's
# subnet.env says for dual stack); (c) twilld with EnableIPv6 and
# IPv6Network, containers from subnet.env (FLANNEL_IPV6_SUBNET). The traffic
# measured is container IPv6 to container IPv6 (iperf3 -6, ping -6); the
# flannel-v6.1 devices are compared. Figures are named dataplane6_*.
#
# Usage: benches/scripts/dataplane.sh          (5 s runs, 3 runs, 200 pings)
#        TINY=1 benches/scripts/dataplane.sh   (1 s, 1 run, 20 pings)
#        FAMILY=6 benches/scripts/dataplane.sh (IPv6, as above)
# Env: SECONDS_PER_RUN, RUNS, PINGS, FAMILY. Needs root, iperf3, jq,
# python3 for FAMILY=6 (ethtool if present).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
FAMILY="${FAMILY:-4}"
case "$FAMILY" in
    4) NAME=dataplane; VX=flannel.1; IPF=() ;;
    6) NAME=dataplane6; VX=flannel-v6.1; IPF=(-6) ;;
    *) echo "dataplane.sh: FAMILY=$FAMILY, want 4 or 6" >&2; exit 1 ;;
esac
tw_init "$NAME"

if [[ "$TW_TINY" == 1 ]]; then
    T="${SECONDS_PER_RUN:-1}"; RUNS="${RUNS:-1}"; PINGS="${PINGS:-20}"
else
    T="${SECONDS_PER_RUN:-5}"; RUNS="${RUNS:-3}"; PINGS="${PINGS:-200}"
fi
NEEDS=(iperf3 jq)
[[ "$FAMILY" == 6 ]] && NEEDS+=(python3)
for c in "${NEEDS[@]}"; do
    command -v "$c" >/dev/null || { echo "dataplane.sh: needs $c (scripts/install-deps.sh)" >&2; exit 1; }
done
SAMPLES="${SAMPLES_DIR:-$TW_STATE}"
mkdir -p "$SAMPLES"

tw_build

# Two hosts of pair P on a veth underlay: P-h1 10.10.0.1, P-h2 10.10.0.2
# (and fd10::1, fd10::2 for FAMILY=6, without DAD so they are usable at once).
make_hosts() {
    local p="$1"
    tw_ns "$p-h1"
    tw_ns "$p-h2"
    tw_veth "$p-h1" eth0 10.10.0.1/24 "$p-h2" eth0 10.10.0.2/24 1500
    for h in h1 h2; do
        ip netns exec "$(tw_n "$p-$h")" sysctl -qw net.ipv4.ip_forward=1
        if [[ "$FAMILY" == 6 ]]; then
            ip netns exec "$(tw_n "$p-$h")" sysctl -qw net.ipv6.conf.all.forwarding=1
            ip -n "$(tw_n "$p-$h")" addr add "fd10::${h#h}/64" dev eth0 nodad
        fi
    done
}

# v6_next ADDR: the IPv6 address after ADDR (the container's, after the
# bridge's gateway address).
v6_next() { python3 -c 'import ipaddress, sys; print(ipaddress.IPv6Address(sys.argv[1]) + 1)' "$1"; }

# add_container P HOST SUBNET_GW/LEN MTU [SUBNET6_GW/LEN]: a cni0 bridge on
# the host holding the gateway address, and a container namespace P-cN with
# .2 behind it (its address in $CIP; not called in $(...), so the namespace
# is recorded). With an IPv6 gateway, the same in IPv6 too (the container's
# address in $CIP6).
add_container() {
    local p="$1" h="$2" gwlen="$3" mtu="$4" gwlen6="${5:-}"
    local host c gw len cip gw6 len6
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
    if [[ -n "$gwlen6" ]]; then
        gw6="${gwlen6%/*}"
        len6="${gwlen6#*/}"
        CIP6="$(v6_next "$gw6")"
        ip -n "$host" addr add "$gwlen6" dev cni0 nodad
        ip -n "$(tw_n "$p-$c")" addr add "$CIP6/$len6" dev eth0 nodad
        ip -n "$(tw_n "$p-$c")" -6 route add default via "$gw6"
    fi
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
declare -A GW6=()
if [[ "$FAMILY" == 6 ]]; then
    declare -A SUBNET6=([h1]=fd00:244:0:1 [h2]=fd00:244:0:2) UIP6=([h1]=fd10::1 [h2]=fd10::2) \
        MAC6=([h1]=0e:00:00:00:06:01 [h2]=0e:00:00:00:06:02)
    for h in h1 h2; do
        ns=$(tw_n "f-$h")
        # As flannel's device.go with EnableIPv6: flannel-v6.<VNI>, local =
        # the underlay's IPv6 address, same port and learning off; flannel
        # asks MTU 1450 and the kernel caps an IPv6 VXLAN at underlay - 70;
        # its own MAC, accept_ra 0, <v6 subnet>::/128 (ConfigureIPv6), up.
        ip -n "$ns" link add flannel-v6.1 type vxlan id 1 local "${UIP6[$h]}" dev eth0 dstport 8472 nolearning
        ip -n "$ns" link set flannel-v6.1 mtu 1430 address "${MAC6[$h]}"
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.flannel-v6/1.accept_ra=0
        ip -n "$ns" -6 addr add "${SUBNET6[$h]}::/128" dev flannel-v6.1
        ip -n "$ns" link set flannel-v6.1 up
        GW6[$h]="${SUBNET6[$h]}::1/64"
    done
    for h in h1 h2; do
        o=h2; [[ "$h" == h2 ]] && o=h1
        ns=$(tw_n "f-$h")
        # As vxlan_network.go: AddV6ARP, AddV6FDB (NeighSet: replace), and
        # the onlink route via the peer's <v6 subnet>::.
        ip -n "$ns" -6 neigh replace "${SUBNET6[$o]}::" lladdr "${MAC6[$o]}" dev flannel-v6.1 nud permanent
        ip netns exec "$ns" bridge fdb replace "${MAC6[$o]}" dev flannel-v6.1 dst "${UIP6[$o]}" self permanent
        ip -n "$ns" -6 route replace "${SUBNET6[$o]}::/64" via "${SUBNET6[$o]}::" dev flannel-v6.1 onlink
    done
fi
add_container f h2 10.244.2.1/24 1450 "${GW6[h2]:-}"
F_C2=$CIP; F_C2_6=${CIP6:-}
add_container f h1 10.244.1.1/24 1450 "${GW6[h1]:-}"

tw_log "(c) twilld pair (etcd on host 1)"
make_hosts t
tw_etcd t-h1 10.10.0.1
if [[ "$FAMILY" == 6 ]]; then
    tw_etcdctl t-h1 put /coreos.com/network/config \
        '{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:244::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1}}' >/dev/null
    tw_twilld t-h1 twilld-h1 http://10.10.0.1:2379 10.10.0.1 -public-ipv6=fd10::1
    tw_twilld t-h2 twilld-h2 http://10.10.0.1:2379 10.10.0.2 -public-ipv6=fd10::2
else
    tw_config t-h1 10.244.0.0/16
    tw_twilld t-h1 twilld-h1 http://10.10.0.1:2379 10.10.0.1
    tw_twilld t-h2 twilld-h2 http://10.10.0.1:2379 10.10.0.2
fi
for h in h1 h2; do
    FLANNEL_IPV6_SUBNET=
    # shellcheck disable=SC1090
    . "$TW_STATE/twilld-$h/subnet.env"
    if [[ "$FAMILY" == 6 && -z "$FLANNEL_IPV6_SUBNET" ]]; then
        echo "twilld-$h wrote no FLANNEL_IPV6_SUBNET:" >&2
        cat "$TW_STATE/twilld-$h/subnet.env" >&2
        exit 1
    fi
    add_container t "$h" "$FLANNEL_SUBNET" "$FLANNEL_MTU" "$FLANNEL_IPV6_SUBNET"
    [[ "$h" == h2 ]] && { T_C2=$CIP; T_C2_6=${CIP6:-}; }
done
if [[ "$FAMILY" == 6 ]]; then
    F_C2=$F_C2_6; T_C2=$T_C2_6
fi
# Each twilld programs the other's lease once it sees it.
for _ in $(seq 1 100); do
    ip netns exec "$(tw_n t-c1)" ping "${IPF[@]}" -c 1 -W 1 -q "$T_C2" >/dev/null 2>&1 && break
    sleep 0.1
done
ip netns exec "$(tw_n f-c1)" ping "${IPF[@]}" -c 1 -W 2 -q "$F_C2" >/dev/null || { echo "hand-built overlay does not ping $F_C2" >&2; exit 1; }
ip netns exec "$(tw_n t-c1)" ping "${IPF[@]}" -c 1 -W 2 -q "$T_C2" >/dev/null || { echo "twill overlay does not ping $T_C2" >&2; exit 1; }

tw_log "comparing the two $VX devices (hand-built vs twilld)"
# The MTU is kept (flannel-v6.1's 1430 is part of its layout); MACs,
# addresses and indexes are masked.
describe() {
    local ns="$1" sys="${VX//./\/}"
    ip -n "$ns" -d link show "$VX" | sed -E 's/link\/ether [0-9a-f:]+/link\/ether MAC/; s/local [0-9a-f.:]+/local IP/; s/ (index|ifindex) [0-9]+/ \1 N/g; s/^[0-9]+: //; s/@if[0-9]+//; s/ numtxqueues.*//' | grep -v "^ *$"
    if command -v ethtool >/dev/null; then ip netns exec "$ns" ethtool -k "$VX" | grep -v fixed; fi
    ip netns exec "$ns" sysctl "net.ipv4.conf.$sys.rp_filter" "net.ipv6.conf.$sys.accept_ra" 2>/dev/null || true
    ip -n "$ns" "${IPF[@]}" addr show dev "$VX" scope global | sed -nE 's/.*inet6? [0-9a-f.:]+(\/[0-9]+).*/address \1/p'
}
DEVFILE="${NAME}_${VX//[.-]/}"
describe "$(tw_n f-h1)" >"$SAMPLES/${DEVFILE}_handbuilt.txt"
describe "$(tw_n t-h1)" >"$SAMPLES/${DEVFILE}_twill.txt"
if diff -u "$SAMPLES/${DEVFILE}_handbuilt.txt" "$SAMPLES/${DEVFILE}_twill.txt" >"$SAMPLES/${DEVFILE}.diff"; then
    tw_log "  identical (ip -d link, ethtool -k, rp_filter, accept_ra)"
    DEVICES_DIFFER=0
else
    tw_log "  they differ:"
    sed 's/^/    /' "$SAMPLES/${DEVFILE}.diff" >&2
    DEVICES_DIFFER=1
fi

# One iperf3 server per path's receiving end.
declare -A SRV=([underlay]=u-h2 [handbuilt]=f-c2 [twill]=t-c2) \
    CLI=([underlay]=u-h1 [handbuilt]=f-c1 [twill]=t-c1) \
    DST=([underlay]=10.10.0.2 [handbuilt]=$F_C2 [twill]=$T_C2)
[[ "$FAMILY" == 6 ]] && DST[underlay]=fd10::2
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
            v=$(ip netns exec "$(tw_n "${CLI[$p]}")" iperf3 "${IPF[@]}" -c "${DST[$p]}" -t "$T" -P "$streams" -J | gbps)
            wait "$srv" 2>/dev/null || true
            TP[$p-$streams]="${TP[$p-$streams]:-} $v"
            echo "$p $streams $run $v" >>"$SAMPLES/${NAME}_throughput.txt"
            tw_log "run $run, $streams stream(s), $p: $v Gbit/s"
        done
    done
done

for streams in 1 4; do
    for p in "${PATHS[@]}"; do
        # shellcheck disable=SC2086
        m=$(tw_median ${TP[$p-$streams]})
        tw_result "${NAME}_${p}_${streams}stream_gbps" "$m" Gbit/s
    done
    u=$(tw_value "${NAME}_underlay_${streams}stream_gbps")
    b=$(tw_value "${NAME}_handbuilt_${streams}stream_gbps")
    c=$(tw_value "${NAME}_twill_${streams}stream_gbps")
    tw_result "${NAME}_handbuilt_vs_underlay_${streams}stream_ratio" "$(tw_div "$b" "$u")" x
    tw_result "${NAME}_twill_vs_underlay_${streams}stream_ratio" "$(tw_div "$c" "$u")" x
    tw_result "${NAME}_twill_vs_handbuilt_${streams}stream_ratio" "$(tw_div "$c" "$b")" x
    # Paired: (c)/(b) within each run (the two ran seconds apart), then the
    # median; less sensitive to a neighbour's load drifting across runs.
    # shellcheck disable=SC2086
    paired=$(paste <(printf '%s\n' ${TP[twill-$streams]}) <(printf '%s\n' ${TP[handbuilt-$streams]}) |
        awk '{ printf "%.4f\n", $1 / $2 }')
    # shellcheck disable=SC2086
    tw_result "${NAME}_twill_vs_handbuilt_${streams}stream_paired_ratio" "$(printf '%.3f' "$(tw_median $paired)")" x
done

tw_log "ping RTT: $PINGS pings at 10 ms on each path"
for p in "${PATHS[@]}"; do
    ip netns exec "$(tw_n "${CLI[$p]}")" ping "${IPF[@]}" -n -c "$PINGS" -i 0.01 "${DST[$p]}" |
        sed -nE 's/.*time=([0-9.]+) ms/\1/p' >"$SAMPLES/${NAME}_rtt_$p.txt"
    n=$(wc -l <"$SAMPLES/${NAME}_rtt_$p.txt")
    [[ "$n" -ge $((PINGS * 9 / 10)) ]] || { echo "$p: only $n of $PINGS pings answered" >&2; exit 1; }
    read -r p50 p99 < <(sort -g "$SAMPLES/${NAME}_rtt_$p.txt" | awk '{a[NR] = $1} END {
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.3f %.3f\n", a[i50], a[i99] }')
    tw_result "${NAME}_${p}_rtt_p50_ms" "$p50" ms
    tw_result "${NAME}_${p}_rtt_p99_ms" "$p99" ms
done
for q in p50 p99; do
    tw_result "${NAME}_twill_vs_handbuilt_rtt_${q}_ratio" \
        "$(tw_div "$(tw_value "${NAME}_twill_rtt_${q}_ms")" "$(tw_value "${NAME}_handbuilt_rtt_${q}_ms")")" x
done
tw_result "${NAME}_${VX//[.-]/}_devices_differ" "$DEVICES_DIFFER" bool
tw_report
