#!/usr/bin/env bash
# iperf3 between two containers on two hosts, same run, three ways:
#   underlay   host to host on the LAN, no overlay;
#   vxlan      container to container through twilld's VXLAN backend (kernel);
#   wireguard  container to container through twill-wg-agent (userspace
#              WireGuard: boringtun + TUN).
# Prints `name: value unit` lines. Needs root, etcd, iperf3.
#
#   examples/wireguard-backend/bench.sh            # 10 s per measurement, release build
#   DURATION=3 PROFILE=debug examples/wireguard-backend/bench.sh
#   WG_BEFORE=/path/to/old/twill-wg-agent ...   # also measures that build, same run
#
# Everything runs in network namespaces named twwgb-<pid>-*, removed on exit;
# every process started is stopped by PID. Nothing else is touched.
set -euo pipefail

DURATION="${DURATION:-10}"
PROFILE="${PROFILE:-release}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
P="twwgb-$$"
STATE="$(mktemp -d "/tmp/twwgb-$$.XXXX")"
PIDS=()
NSS=()

[[ $(id -u) -eq 0 ]] || { echo "bench.sh: needs root" >&2; exit 1; }
for t in etcd etcdctl iperf3 jq; do
    command -v "$t" >/dev/null || { echo "bench.sh: $t is not installed" >&2; exit 1; }
done

cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "# $*" >&2; }
result() { echo "$1: $2 $3"; }

if [[ "$PROFILE" == release ]]; then
    (cd "$ROOT" && cargo build --release -q -p twill-wg-agent -p twilld) >&2
    BIN="$ROOT/target/release"
else
    (cd "$ROOT" && cargo build -q -p twill-wg-agent -p twilld) >&2
    BIN="$ROOT/target/debug"
fi

ns_add() { ip netns add "$P-$1"; NSS+=("$P-$1"); ip -n "$P-$1" link set lo up; }
bg() { # bg NS LOG cmd... : runs in the namespace, remembered for cleanup
    local ns="$1" log="$2"; shift 2
    ip netns exec "$P-$ns" "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}

# Two hosts h1 (10.0.0.2), h2 (10.0.0.3) on a bridge, MTU 1500.
ns_add lan
ip -n "$P-lan" link add br0 type bridge
ip -n "$P-lan" link set br0 up
for i in 1 2; do
    ns_add "h$i"
    ip -n "$P-lan" link add "p$i" type veth peer name eth0 netns "$P-h$i"
    ip -n "$P-lan" link set "p$i" master br0 up
    ip -n "$P-h$i" addr add "10.0.0.$((i + 1))/24" dev eth0
    ip -n "$P-h$i" link set eth0 up
    ip netns exec "$P-h$i" sysctl -qw net.ipv4.ip_forward=1
done
bg h1 "$STATE/etcd.log" etcd --name bench --data-dir "$STATE/etcd" \
    --listen-client-urls http://10.0.0.2:2379 --advertise-client-urls http://10.0.0.2:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380
etcdctl_() { ip netns exec "$P-h1" etcdctl --endpoints=http://10.0.0.2:2379 "$@"; }
for _ in $(seq 1 100); do etcdctl_ endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

# Busy and total jiffies of all CPUs (busy: all but idle and iowait).
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# iperf3 CLIENT_NS SERVER_NS SERVER_IP -> Mbit/s received; $CPU_PIDS (if set)
# get their CPU use during the run printed as NAME_cpu_<label>.
iperf() {
    local cns="$1" sns="$2" ip="$3" name="$4" streams="${5:-1}"
    bg "$sns" "$STATE/iperf-server-$name.log" iperf3 -s -1 -B "$ip"
    local server=$LAST_PID
    for _ in $(seq 1 50); do
        ip netns exec "$P-$sns" ss -ltn | grep -q ":5201 " && break
        sleep 0.1
    done
    local -A before_user before_sys
    local label pid
    for label in "${!CPU_PIDS[@]}"; do
        pid=${CPU_PIDS[$label]}
        before_user[$label]=$(awk '{print $14}' "/proc/$pid/stat")
        before_sys[$label]=$(awk '{print $15}' "/proc/$pid/stat")
    done
    local t0 t1 busy0 total0
    read -r busy0 total0 < <(cpu_ticks)
    t0=$(date +%s%N)
    ip netns exec "$P-$cns" iperf3 -c "$ip" -t "$DURATION" -P "$streams" -J >"$STATE/iperf-$name.json"
    t1=$(date +%s%N)
    local busy1 total1
    read -r busy1 total1 < <(cpu_ticks)
    wait "$server" 2>/dev/null || true
    local bps
    bps=$(jq '.end.sum_received.bits_per_second' "$STATE/iperf-$name.json")
    result "$name" "$(awk -v b="$bps" 'BEGIN { printf "%.0f", b / 1e6 }')" Mbit/s
    result "${name}_retransmits" "$(jq '.end.sum_sent.retransmits' "$STATE/iperf-$name.json")" segments
    result "${name}_cpu_all" \
        "$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) 'BEGIN { printf "%.0f", 100 * b / t }')" \
        "% of all cores"
    # Cores kept busy (everything on the machine: both hosts, iperf3) per
    # Gbit/s carried.
    result "${name}_cores_per_gbit" \
        "$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v n="$(nproc)" -v bps="$bps" \
            'BEGIN { printf "%.2f", (b / t * n) / (bps / 1e9) }')" "cores per Gbit/s"
    local hz
    hz=$(getconf CLK_TCK)
    # The agents' CPU: user (crypto, our code) and system (TUN and UDP
    # syscalls, copies), in % of one core over the run.
    local secs
    secs=$(awk -v ns=$((t1 - t0)) 'BEGIN { print ns / 1e9 }')
    for label in "${!CPU_PIDS[@]}"; do
        pid=${CPU_PIDS[$label]}
        local u s
        u=$(awk '{print $14}' "/proc/$pid/stat")
        s=$(awk '{print $15}' "/proc/$pid/stat")
        result "${name}_cpu_${label}_user" \
            "$(awk -v d=$((u - before_user[$label])) -v hz="$hz" -v t="$secs" 'BEGIN { printf "%.0f", 100 * d / hz / t }')" "% of one core"
        result "${name}_cpu_${label}_sys" \
            "$(awk -v d=$((s - before_sys[$label])) -v hz="$hz" -v t="$secs" 'BEGIN { printf "%.0f", 100 * d / hz / t }')" "% of one core"
    done
}

# Starts one agent per host with config $1, then a container per host on
# its FLANNEL_SUBNET with FLANNEL_MTU. $2: wireguard or vxlan.
overlay_up() {
    local cfg="$1" kind="$2" i
    etcdctl_ del --prefix /coreos.com/network/ >/dev/null
    etcdctl_ put /coreos.com/network/config "$cfg" >/dev/null
    declare -gA AGENT_PIDS=()
    for i in 1 2; do
        mkdir -p "$STATE/$kind-h$i"
        if [[ "$kind" == wireguard ]]; then
            bg "h$i" "$STATE/$kind-h$i/agent.log" "${WG_AGENT:-$BIN/twill-wg-agent}" ${WG_FLAGS:-} \
                --etcd-endpoints=http://10.0.0.2:2379 --iface=eth0 \
                --key-file="$STATE/$kind-h$i/wgkey" --subnet-file="$STATE/$kind-h$i/subnet.env" \
                --release-on-exit
        else
            bg "h$i" "$STATE/$kind-h$i/agent.log" "$BIN/twilld" \
                -etcd-endpoints=http://10.0.0.2:2379 -iface=eth0 \
                -subnet-file="$STATE/$kind-h$i/subnet.env" -healthz-port=0 -ip-masq=false
        fi
        AGENT_PIDS[h$i]=$LAST_PID
    done
    for i in 1 2; do
        for _ in $(seq 1 100); do [[ -s "$STATE/$kind-h$i/subnet.env" ]] && break; sleep 0.1; done
        # shellcheck disable=SC1090
        . "$STATE/$kind-h$i/subnet.env"
        local gw="${FLANNEL_SUBNET%/*}" len="${FLANNEL_SUBNET#*/}"
        local cip="${gw%.*}.$(( ${gw##*.} + 1 ))"
        ns_add "$kind-c$i"
        ip -n "$P-h$i" link add "cni-$kind" type bridge
        ip -n "$P-h$i" addr add "$FLANNEL_SUBNET" dev "cni-$kind"
        ip -n "$P-h$i" link set "cni-$kind" up
        ip -n "$P-h$i" link add "v$kind" type veth peer name eth0 netns "$P-$kind-c$i"
        ip -n "$P-h$i" link set "v$kind" master "cni-$kind" up
        ip -n "$P-$kind-c$i" addr add "$cip/$len" dev eth0
        ip -n "$P-$kind-c$i" link set eth0 mtu "$FLANNEL_MTU" up
        ip -n "$P-$kind-c$i" route add default via "$gw"
        declare -g "C${i}_IP=$cip"
        declare -g "MTU=$FLANNEL_MTU"
    done
    for _ in $(seq 1 100); do
        ip netns exec "$P-$kind-c1" ping -c1 -W1 "$C2_IP" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench.sh: $kind overlay did not come up; logs:" >&2
    cat "$STATE/$kind-h1/agent.log" "$STATE/$kind-h2/agent.log" >&2
    exit 1
}

overlay_down() {
    local kind="$1" i
    for i in 1 2; do
        kill "${AGENT_PIDS[h$i]}"
        wait "${AGENT_PIDS[h$i]}" 2>/dev/null || true
        ip -n "$P-h$i" link del "cni-$kind" 2>/dev/null || true
        ip -n "$P-h$i" link del "v$kind" 2>/dev/null || true
        ip -n "$P-h$i" link del flannel.1 2>/dev/null || true
        ip netns del "$P-$kind-c$i" 2>/dev/null || true
    done
}

say "underlay: h1 -> h2, MTU 1500"
declare -A CPU_PIDS=()
iperf h1 h2 10.0.0.3 underlay_tcp

say "vxlan: container h1 -> container h2 through twilld"
overlay_up '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' vxlan
result vxlan_mtu "$MTU" bytes
iperf vxlan-c1 vxlan-c2 "$C2_IP" vxlan_tcp
iperf vxlan-c1 vxlan-c2 "$C2_IP" vxlan_tcp4 4
overlay_down vxlan

# wireguard LABEL: one and four streams through twill-wg-agent as
# $WG_AGENT/$WG_FLAGS set it.
wireguard() {
    local label="$1"
    overlay_up '{"Network":"10.245.0.0/16","Backend":{"Type":"wireguard"}}' wireguard
    result "${label}_mtu" "$MTU" bytes
    CPU_PIDS=([sender_agent]="${AGENT_PIDS[h1]}" [receiver_agent]="${AGENT_PIDS[h2]}")
    iperf wireguard-c1 wireguard-c2 "$C2_IP" "${label}_tcp"
    iperf wireguard-c1 wireguard-c2 "$C2_IP" "${label}_tcp4" 4
    CPU_PIDS=()
    for i in 1 2; do
        result "${label}_rss_h$i" "$(awk '/^VmRSS/ { print $2 }' "/proc/${AGENT_PIDS[h$i]}/status")" KiB
    done
    # Where packets were lost: the TUN queue (the agent did not read fast
    # enough) or the UDP socket's receive buffer (nor there).
    for i in 1 2; do
        result "${label}_tun_tx_dropped_h$i" \
            "$(ip netns exec "$P-h$i" cat /sys/class/net/flannel-wg/statistics/tx_dropped)" packets
        result "${label}_udp_rcvbuf_errors_h$i" \
            "$(ip netns exec "$P-h$i" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp)" packets
    done
    grep -h "data path up" "$STATE"/wireguard-h*/agent.log | head -1 | sed 's/^/# /' >&2 || true
    overlay_down wireguard
}

say "wireguard: container h1 -> container h2 through twill-wg-agent (default: a worker per core)"
wireguard wireguard
say "wireguard, one worker (--queues=1)"
WG_FLAGS=--queues=1 wireguard wireguard_q1
if [[ -n "${WG_BEFORE:-}" ]]; then
    say "wireguard before: $WG_BEFORE"
    WG_AGENT="$WG_BEFORE" wireguard wireguard_before
fi
result cores "$(nproc)" ""
