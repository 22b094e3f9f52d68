#!/usr/bin/env bash
# The seed article's flannel POC, on one machine, with twilld instead of flanneld.
#
# Three hosts `test`, `test2`, `test3` (10.0.0.2/.3/.4 on one LAN) are network
# namespaces; each runs one member of a 3-member etcd cluster and one twilld
# talking to its local member at the default endpoint; the article's config is
# written with etcdctl; each host gets a docker0-like bridge addressed from
# FLANNEL_SUBNET and a "container" namespace. Then it shows what the article
# shows and pings container to container across hosts.
#
# As root (prefix sudo when you are not root):
#   ./scripts/poc.sh          run, show, ping, clean up
#   ./scripts/poc.sh --keep   leave everything running (prints how to enter it)
#   ./scripts/poc.sh --clean  remove what a --keep run left
#   ./scripts/poc.sh --dual-stack [--keep]
#                             the same with a dual-stack underlay (eth0 also holds fd00:10::N/64)
#                             and config (EnableIPv6, IPv6Network fd00:192:168::/48): shows
#                             flannel-v6.100 too and pings containers over IPv4 and IPv6
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
P=twpoc                       # every namespace, file and process we make is named with this
STATE=/run/$P
KEEP=0
DUAL=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --clean) CLEAN_ONLY=1 ;;
        --dual-stack) DUAL=1 ;;
        *) echo "usage: $0 [--dual-stack] [--keep|--clean]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "poc.sh needs root (network namespaces): run it as root, or sudo $0 $*" >&2; exit 1; }

HOSTS=(test test2 test3)
declare -A IP=([test]=10.0.0.2 [test2]=10.0.0.3 [test3]=10.0.0.4)
declare -A IP6=([test]=fd00:10::2 [test2]=fd00:10::3 [test3]=fd00:10::4)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '%s@%s# %s\n' root "$1" "${*:2}"; ip netns exec "$P-$1" "${@:2}"; }

# The pids we started whose process still runs what we started there (a pid file can outlive
# its process, and the pid be reused by someone else's).
our_pids() {
    for f in "$STATE"/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        case "$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" in
            *etcd*|*twilld*|*tcpdump*) echo "$pid" ;;
        esac
    done
}

cleanup() {
    pids=$(our_pids)
    # shellcheck disable=SC2086
    # `|| true`: a process may exit between the listing and the kill; under set -e that
    # failed kill would end the EXIT trap, and the run, with status 1 after a success.
    [ -n "$pids" ] && { kill $pids 2>/dev/null || true; }
    # SIGTERM first (etcd and twilld stop cleanly on it), SIGKILL only what is left after 5 s.
    for _ in $(seq 1 50); do
        pids=$(our_pids); [ -z "$pids" ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -n "$pids" ] && { kill -9 $pids 2>/dev/null || true; }
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

if [ "${CLEAN_ONLY:-0}" = 1 ]; then cleanup; echo "cleaned up"; exit 0; fi

say "Installing what the demo needs (etcd, iproute2, ...) and building twilld"
bash scripts/install-deps.sh
cargo build --release -q -p twilld
TWILLD=${CARGO_TARGET_DIR:-$ROOT/target}/release/twilld

cleanup
mkdir -p "$STATE"
[ "$KEEP" = 1 ] || trap cleanup EXIT

say "Three hosts on one LAN (10.0.0.0/24), as in the article"
ip netns add "$P-lan"
ip -n "$P-lan" link add br0 type bridge
ip -n "$P-lan" addr add 10.0.0.1/24 dev br0
ip -n "$P-lan" link set br0 up
ip -n "$P-lan" link set lo up
for h in "${HOSTS[@]}"; do
    ip netns add "$P-$h"
    ip link add "$P-$h-e" type veth peer name eth0 netns "$P-$h"
    ip link set "$P-$h-e" netns "$P-lan"
    ip -n "$P-lan" link set "$P-$h-e" master br0 up
    ip -n "$P-$h" link set lo up
    ip -n "$P-$h" addr add "${IP[$h]}/24" dev eth0
    ip -n "$P-$h" link set eth0 up
    ip -n "$P-$h" route add default via 10.0.0.1 dev eth0 onlink
    ip netns exec "$P-$h" sysctl -qw net.ipv4.ip_forward=1
    if [ "$DUAL" = 1 ]; then
        # nodad: usable at once, not after duplicate address detection.
        ip -n "$P-$h" -6 addr add "${IP6[$h]}/64" dev eth0 nodad
        ip netns exec "$P-$h" sysctl -qw net.ipv6.conf.all.forwarding=1
        echo "  $h: ${IP[$h]} and ${IP6[$h]} (namespace $P-$h)"
    else
        echo "  $h: ${IP[$h]} (namespace $P-$h)"
    fi
done

say "A 3-member etcd cluster, one member per host"
CLUSTER="test=http://10.0.0.2:2380,test2=http://10.0.0.3:2380,test3=http://10.0.0.4:2380"
for h in "${HOSTS[@]}"; do
    ip netns exec "$P-$h" etcd --name "$h" --data-dir "$STATE/etcd-$h" \
        --listen-client-urls "http://${IP[$h]}:2379,http://127.0.0.1:2379" \
        --advertise-client-urls "http://${IP[$h]}:2379" \
        --listen-peer-urls "http://${IP[$h]}:2380" \
        --initial-advertise-peer-urls "http://${IP[$h]}:2380" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new \
        --initial-cluster-token "$P" --log-level error --logger zap \
        >"$STATE/etcd-$h.log" 2>&1 &
    echo $! > "$STATE/etcd-$h.pid"; disown $!
done
export ETCDCTL_API=3
for _ in $(seq 1 100); do
    ip netns exec "$P-test2" etcdctl endpoint health --cluster >/dev/null 2>&1 && break
    sleep 0.2
done
run test2 etcdctl endpoint health --cluster

if [ "$DUAL" = 1 ]; then
say "The article's config with an IPv6 half, at /coreos.com/network/config"
cat > "$STATE/flannel-network.json" <<'JSON'
{
    "Network": "192.168.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "192.168.0.0",
    "SubnetMax": "192.168.5.0",
    "EnableIPv6": true,
    "IPv6Network": "fd00:192:168::/48",
    "IPv6SubnetLen": 64,
    "Backend": {
        "Type": "vxlan",
        "VNI": 100,
        "Port": 8472
    }
}
JSON
else
say "The article's config, at /coreos.com/network/config"
cat > "$STATE/flannel-network.json" <<'JSON'
{
    "Network": "192.168.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "192.168.0.0",
    "SubnetMax": "192.168.5.0",
    "Backend": {
        "Type": "vxlan",
        "VNI": 100,
        "Port": 8472
    }
}
JSON
fi
cat "$STATE/flannel-network.json"
echo 'root@test# etcdctl put /coreos.com/network/config "$(cat flannel-network.json)"'
ip netns exec "$P-test" etcdctl put /coreos.com/network/config "$(cat "$STATE/flannel-network.json")"

if [ "$DUAL" = 1 ]; then
    say "One twilld per host, with the article's flags (-iface=<eth0's IP>; the IPv6 address is found on eth0)"
else
    say "One twilld per host, with the article's flags (-iface=<eth0's IP>)"
fi
for h in "${HOSTS[@]}"; do
    # Three hosts share this machine's /run, so each gets its own subnet file.
    echo "  $h: twilld -iface=${IP[$h]} -subnet-file=$STATE/$h/subnet.env"
    RUST_LOG=info ip netns exec "$P-$h" "$TWILLD" -iface="${IP[$h]}" \
        -subnet-file="$STATE/$h/subnet.env" -healthz-port=8471 -healthz-ip=127.0.0.1 \
        >"$STATE/twilld-$h.log" 2>&1 &
    echo $! > "$STATE/twilld-$h.pid"; disown $!
done
for h in "${HOSTS[@]}"; do
    for _ in $(seq 1 150); do
        [ -f "$STATE/$h/subnet.env" ] && break
        if ! kill -0 "$(cat "$STATE/twilld-$h.pid")" 2>/dev/null; then
            echo "twilld on $h exited:"; cat "$STATE/twilld-$h.log"; exit 1
        fi
        sleep 0.1
    done
    [ -f "$STATE/$h/subnet.env" ] || { echo "twilld on $h wrote no subnet file:"; cat "$STATE/twilld-$h.log"; exit 1; }
done
# Ready = lease held and every peer programmed.
for h in "${HOSTS[@]}"; do
    for _ in $(seq 1 100); do
        ip netns exec "$P-$h" curl -sf http://127.0.0.1:8471/readyz >/dev/null && break
        sleep 0.1
    done
done

# Ready means "lease held, first pass done": a host ready before the others leased learns
# them from the watch afterwards. Wait (up to 15 s each) until every host's VXLAN devices
# hold an FDB entry for both peers, so what is shown and pinged below is the whole overlay.
devs=flannel.100
[ "$DUAL" = 1 ] && devs="$devs flannel-v6.100"
for h in "${HOSTS[@]}"; do
    for d in $devs; do
        for _ in $(seq 1 150); do
            [ "$(ip netns exec "$P-$h" bridge fdb show dev "$d" 2>/dev/null | grep -c ' dst .*permanent')" -ge 2 ] && break
            sleep 0.1
        done
    done
done

say "Subnets leased in etcd"
run test2 etcdctl get --prefix --keys-only /coreos.com/network/subnets/ | sed '/^$/d'
first=$(ip netns exec "$P-test2" etcdctl get --prefix --keys-only /coreos.com/network/subnets/ | sed '/^$/d' | head -1)
run test2 etcdctl get --print-value-only "$first"

say "subnet.env on each host"
for h in "${HOSTS[@]}"; do echo "--- $h"; cat "$STATE/$h/subnet.env"; done

say "Containers: a docker0 bridge on FLANNEL_SUBNET and one container per host"
for h in "${HOSTS[@]}"; do
    # shellcheck disable=SC1090
    . "$STATE/$h/subnet.env"
    gw=${FLANNEL_SUBNET%/*}
    len=${FLANNEL_SUBNET#*/}
    cip=${gw%.*}.2
    ip -n "$P-$h" link add docker0 type bridge
    ip -n "$P-$h" addr add "$FLANNEL_SUBNET" dev docker0
    ip -n "$P-$h" link set docker0 mtu "$FLANNEL_MTU" up
    ip netns add "$P-$h-c"
    ip link add "$P-$h-c" netns "$P-$h" type veth peer name eth0 netns "$P-$h-c"
    ip -n "$P-$h" link set "$P-$h-c" master docker0 mtu "$FLANNEL_MTU" up
    ip -n "$P-$h-c" link set lo up
    ip -n "$P-$h-c" addr add "$cip/$len" dev eth0
    ip -n "$P-$h-c" link set eth0 mtu "$FLANNEL_MTU" up
    ip -n "$P-$h-c" route add default via "$gw"
    echo "  $h: docker0 $FLANNEL_SUBNET mtu $FLANNEL_MTU, container $cip (namespace $P-$h-c)"
    echo "$cip" > "$STATE/$h.cip"
    if [ "$DUAL" = 1 ]; then
        # FLANNEL_IPV6_SUBNET is the subnet's ::1/64: the bridge's, the container takes ::2.
        gw6=${FLANNEL_IPV6_SUBNET%/*}
        len6=${FLANNEL_IPV6_SUBNET#*/}
        cip6=${gw6%1}2
        ip -n "$P-$h" -6 addr add "$FLANNEL_IPV6_SUBNET" dev docker0 nodad
        ip -n "$P-$h-c" -6 addr add "$cip6/$len6" dev eth0 nodad
        ip -n "$P-$h-c" -6 route add default via "$gw6"
        echo "  $h: docker0 $FLANNEL_IPV6_SUBNET, container $cip6"
        echo "$cip6" > "$STATE/$h.cip6"
    fi
    unset FLANNEL_IPV6_NETWORK FLANNEL_IPV6_SUBNET
done

say "What the article shows, on test2"
run test2 ip -d link show flannel.100
run test2 ip addr show flannel.100
run test2 bridge fdb show dev flannel.100
run test2 ip route
run test2 ip neigh show dev flannel.100
if [ "$DUAL" = 1 ]; then
    say "The IPv6 half, on test2: flannel-v6.100 (local = eth0's IPv6 address, MTU underlay - 70)"
    run test2 ip -d link show flannel-v6.100
    run test2 ip -6 addr show flannel-v6.100
    run test2 bridge fdb show dev flannel-v6.100
    run test2 ip -6 route show proto 241
    run test2 ip -6 neigh show dev flannel-v6.100
fi

say "Container to container, across hosts"
fail=0
for a in "${HOSTS[@]}"; do
    for b in "${HOSTS[@]}"; do
        [ "$a" = "$b" ] && continue
        dsts=$(cat "$STATE/$b.cip")
        [ "$DUAL" = 1 ] && dsts="$dsts $(cat "$STATE/$b.cip6")"
        for dst in $dsts; do
            if ip netns exec "$P-$a-c" ping -c 2 -W 2 -q "$dst" >"$STATE/ping.out" 2>&1; then
                printf '  %-5s -> %-5s %-12s ok   %s\n' "$a" "$b" "$dst" "$(grep -o 'rtt.*' "$STATE/ping.out")"
            else
                printf '  %-5s -> %-5s %-12s FAILED\n' "$a" "$b" "$dst"; cat "$STATE/ping.out"; fail=1
            fi
        done
    done
done

if command -v tcpdump >/dev/null 2>&1; then
    say "VXLAN on the wire (test2's eth0, UDP 8472, VNI 100)"
    ip netns exec "$P-test2" timeout 10 tcpdump -l -i eth0 -n -c 4 udp port 8472 \
        >"$STATE/tcpdump.out" 2>"$STATE/tcpdump.err" &
    tpid=$!
    # Ping once tcpdump says it is capturing, not after a guessed delay.
    for _ in $(seq 1 50); do
        grep -q 'listening on' "$STATE/tcpdump.err" 2>/dev/null && break
        sleep 0.1
    done
    ip netns exec "$P-test2-c" ping -c 2 -q "$(cat "$STATE/test3.cip")" >/dev/null 2>&1 || true
    wait "$tpid" 2>/dev/null || true
    sed 's/^/  /' "$STATE/tcpdump.out"
    if [ "$DUAL" = 1 ]; then
        say "VXLAN over IPv6 on the wire (test2's eth0, UDP 8472 in IPv6, VNI 100)"
        ip netns exec "$P-test2" timeout 10 tcpdump -l -i eth0 -n -c 4 ip6 and udp port 8472 \
            >"$STATE/tcpdump.out" 2>"$STATE/tcpdump.err" &
        tpid=$!
        for _ in $(seq 1 50); do
            grep -q 'listening on' "$STATE/tcpdump.err" 2>/dev/null && break
            sleep 0.1
        done
        ip netns exec "$P-test2-c" ping -c 2 -q "$(cat "$STATE/test3.cip6")" >/dev/null 2>&1 || true
        wait "$tpid" 2>/dev/null || true
        sed 's/^/  /' "$STATE/tcpdump.out"
    fi
fi

if [ "$fail" != 0 ]; then
    say "FAILED: some containers could not reach each other; twilld logs:"
    tail -n 20 "$STATE"/twilld-*.log
    exit 1
fi
if [ "$DUAL" = 1 ]; then
    say "All containers reach each other across hosts over IPv4 and IPv6 through twill's VXLAN overlays"
else
    say "All containers reach each other across hosts through twill's VXLAN overlay"
fi
if [ "$KEEP" = 1 ]; then
    echo "Left running. Enter a host:      sudo ip netns exec $P-test2 bash"
    echo "Enter a container:               sudo ip netns exec $P-test2-c bash"
    echo "twilld logs:                     $STATE/twilld-*.log"
    echo "Remove everything:               sudo $0 --clean"
fi
