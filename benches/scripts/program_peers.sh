#!/usr/bin/env bash
# Programs N VXLAN peers (permanent ARP + FDB + onlink route each) in a fresh
# network namespace, once with twill-netlink's batch and once with
# `ip -batch` + `bridge -batch`, and prints both times and their ratio.
#
# FAMILY=6: the IPv6 layout flannel (and twill's vxlan backend) makes on
# flannel-v6.1 instead: permanent NDP entry for the peer's <subnet>::,
# `bridge fdb replace` with an IPv6 dst, `<subnet>/64 via <subnet>:: dev
# flannel-v6.1 onlink`, against `ip -6 -batch` + `bridge -batch`. Figures are
# named program6_* then.
#
# Usage: benches/scripts/program_peers.sh [N...]    (default: 1000 10000)
#        TINY=1 benches/scripts/program_peers.sh     (10 peers, once: CI smoke run)
#        FAMILY=6 benches/scripts/program_peers.sh   (IPv6 peers)
# Env: REPEAT (default 3): each size is measured REPEAT times, alternating
# twill and iproute2, and the medians are reported.
# Needs root. Everything happens in namespaces named twl-bench-<pid>-*,
# removed on exit. Ends with `name: value unit` lines.
set -euo pipefail

cd "$(dirname "$0")/../.."
if [[ $# -gt 0 ]]; then
    COUNTS=("$@")
elif [[ "${TINY:-0}" == "1" ]]; then
    COUNTS=(10)
    REPEAT="${REPEAT:-1}"
else
    COUNTS=(1000 10000)
fi
REPEAT="${REPEAT:-3}"
FAMILY="${FAMILY:-4}"
case "$FAMILY" in
    4) DEV=flannel.1; IPF=(); FLAG=(); NAME=program ;;
    6) DEV=flannel-v6.1; IPF=(-6); FLAG=(-6); NAME=program6 ;;
    *) echo "program_peers.sh: FAMILY=$FAMILY, want 4 or 6" >&2; exit 1 ;;
esac
if [[ $(id -u) -ne 0 ]]; then
    echo "program_peers.sh: needs root (network namespaces)" >&2
    exit 1
fi

# PROFILE=debug reuses the debug build the tests made (the CI smoke run).
PROFILE="${PROFILE:-release}"
if [[ "$PROFILE" == debug ]]; then
    cargo build -q -p twill-netlink --example program_peers
else
    cargo build --release -q -p twill-netlink --example program_peers
fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/examples/program_peers"
PREFIX="twl-bench-$$"
WORK="$(mktemp -d)"
NAMESPACES=()

cleanup() {
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A namespace with a veth underlay eth0 (10.0.0.2/24, and fd00::2/64 for IPv6) and
# flannel.1 (FAMILY=4) or flannel-v6.1 (FAMILY=6, local fd00::2, as flannel's
# device.go makes it) on it.
make_ns() {
    local ns="$1"
    ip netns add "$ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name eth0p
    ip -n "$ns" addr add 10.0.0.2/24 dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set eth0p up
    if [[ "$FAMILY" == 6 ]]; then
        ip -n "$ns" addr add fd00::2/64 dev eth0 nodad
        ip -n "$ns" link add flannel-v6.1 type vxlan id 1 local fd00::2 dev eth0 dstport 8472 nolearning
    else
        ip -n "$ns" link add flannel.1 type vxlan id 1 local 10.0.0.2 dev eth0 dstport 8472 nolearning
    fi
    ip -n "$ns" link set "$DEV" up
}

now() { date +%s.%N; }

# Same peers as the example: subnet 10.(128+i/256).(i%256).0/24,
# public 10.1.0.0+i+1, MAC 0e:00:00:ii:ii:ii.
write_batches() {
    local n="$1"
    if [[ "$FAMILY" == 6 ]]; then
        write_batches6 "$n"
        return
    fi
    awk -v n="$n" -v ipf="$WORK/ip.batch" -v brf="$WORK/bridge.batch" 'BEGIN {
        for (i = 0; i < n; i++) {
            gw = sprintf("10.%d.%d.0", 128 + int(i / 256), i % 256)
            p = i + 1
            pub = sprintf("10.1.%d.%d", int(p / 256), p % 256)
            mac = sprintf("0e:00:00:%02x:%02x:%02x", int(i / 65536) % 256, int(i / 256) % 256, i % 256)
            printf "neigh replace %s lladdr %s dev flannel.1 nud permanent\n", gw, mac > ipf
            printf "route replace %s/24 via %s dev flannel.1 onlink proto 241\n", gw, gw > ipf
            printf "fdb append %s dev flannel.1 dst %s self permanent\n", mac, pub > brf
        }
    }'
}

# Same peers as the example's -6: subnet fd80:0:<i/65536>:<i%65536>::/64,
# gateway its first address, PublicIPv6 fd01:: + i+1, MAC 0e:00:00:ii:ii:ii.
write_batches6() {
    local n="$1"
    awk -v n="$n" -v ipf="$WORK/ip.batch" -v brf="$WORK/bridge.batch" 'BEGIN {
        for (i = 0; i < n; i++) {
            gw = sprintf("fd80:0:%x:%x::", int(i / 65536), i % 65536)
            p = i + 1
            pub = sprintf("fd01::%x:%x", int(p / 65536), p % 65536)
            mac = sprintf("0e:00:00:%02x:%02x:%02x", int(i / 65536) % 256, int(i / 256) % 256, i % 256)
            printf "neigh replace %s lladdr %s dev flannel-v6.1 nud permanent\n", gw, mac > ipf
            printf "route replace %s/64 via %s dev flannel-v6.1 onlink proto 241\n", gw, gw > ipf
            printf "fdb replace %s dev flannel-v6.1 dst %s self permanent\n", mac, pub > brf
        }
    }'
}

count_entries() {
    local ns="$1"
    local routes neigh fdb
    routes=$(ip "${IPF[@]}" -n "$ns" route show proto 241 | wc -l)
    neigh=$(ip "${IPF[@]}" -n "$ns" neigh show dev "$DEV" nud permanent | wc -l)
    fdb=$(ip netns exec "$ns" bridge fdb show dev "$DEV" | grep -c ' dst ' || true)
    echo "$routes $neigh $fdb"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

RESULTS=()
for n in "${COUNTS[@]}"; do
    TWILL=(); IPR=()
    # Alternate the two, REPEAT times each, fresh namespaces every time; medians.
    for rep in $(seq 1 "$REPEAT"); do
        a="$PREFIX-twill-$n-$rep"
        b="$PREFIX-iproute2-$n-$rep"

        make_ns "$a"
        out=$(ip netns exec "$a" "$BIN" "${FLAG[@]}" "$n")
        t_twill=$(awk '/^seconds:/ {print $2}' <<<"$out")
        got=$(count_entries "$a")
        [[ "$got" == "$n $n $n" ]] || { echo "twill programmed '$got', want '$n $n $n'" >&2; exit 1; }

        make_ns "$b"
        write_batches "$n"
        t0=$(now)
        ip "${IPF[@]}" -n "$b" -batch "$WORK/ip.batch"
        ip netns exec "$b" bridge -batch "$WORK/bridge.batch"
        t1=$(now)
        t_ip=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
        got=$(count_entries "$b")
        [[ "$got" == "$n $n $n" ]] || { echo "iproute2 programmed '$got', want '$n $n $n'" >&2; exit 1; }
        echo "family=$FAMILY peers=$n run=$rep twill=${t_twill}s iproute2=${t_ip}s ($(awk '/^batch_size:/ {print $2}' <<<"$out") msgs/send)" >&2
        TWILL+=("$t_twill"); IPR+=("$t_ip")
        [[ -n "${SAMPLES_DIR:-}" ]] && echo "$n $rep $t_twill $t_ip" >>"$SAMPLES_DIR/${NAME}_peers_samples.txt"

        ip netns del "$a"; ip netns del "$b"
        NAMESPACES=()
    done
    t_twill=$(median "${TWILL[@]}")
    t_ip=$(median "${IPR[@]}")
    ratio=$(awk -v a="$t_twill" -v b="$t_ip" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    RESULTS+=("${NAME}_${n}_twill_s: $t_twill s")
    RESULTS+=("${NAME}_${n}_iproute2_s: $t_ip s")
    RESULTS+=("${NAME}_${n}_ratio_twill_vs_iproute2: $ratio x")
done

for r in "${RESULTS[@]}"; do
    echo "$r"
done
[[ -n "${RESULTS_FILE:-}" ]] && printf '%s\n' "${RESULTS[@]}" >>"$RESULTS_FILE"
exit 0
