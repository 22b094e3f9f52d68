# Shared helpers for benches/scripts/*.sh (source it; needs bash and root).
#
#   . "$(dirname "$0")/lib.sh"
#   tw_init dataplane          # state dir, namespace prefix twbench-<pid>-, trap EXIT
#   tw_build                   # twilld + twbench ($PROFILE: release, or debug; $TWILLD: use that binary)
#   tw_ns a                    # namespace twbench-<pid>-a, lo up; $(tw_n a) is its name
#   tw_etcd a 127.0.0.1        # etcd in namespace a, listening on that address
#   tw_bg a NAME cmd...        # any process in a namespace, killed on exit
#   tw_result name value unit  # one figure, printed by tw_report at the end
#
# Everything started is recorded and stopped by PID on exit; every namespace
# made is deleted; nothing else is touched.

TW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TW_TINY="${TINY:-0}"
TW_PIDS=()
TW_NAMESPACES=()
TW_RESULTS=()

tw_init() {
    TW_NAME="$1"
    if [[ $(id -u) -ne 0 ]]; then
        echo "$TW_NAME: needs root (network namespaces)" >&2
        exit 1
    fi
    TW_PREFIX="twbench-$$"
    TW_STATE="$(mktemp -d "/tmp/twbench-$$-$TW_NAME.XXXX")"
    # etcd writes (fsync) to memory, so the disk of a shared machine is not measured.
    TW_SHM="$(mktemp -d "/dev/shm/twbench-$$-$TW_NAME.XXXX")"
    trap tw_cleanup EXIT
    trap 'exit 130' INT TERM
}

tw_cleanup() {
    local pid
    for pid in "${TW_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${TW_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    local ns
    for ns in "${TW_NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ "${KEEP_STATE:-0}" == 1 ]]; then
        echo "state kept in $TW_STATE" >&2
    else
        rm -rf "$TW_STATE"
    fi
    rm -rf "$TW_SHM"
}

# Builds twilld and the twbench helper; sets $TWILLD and $TWBENCH.
# PROFILE=debug reuses the debug build the tests made (the CI smoke run).
# TWILLD=/path/to/twilld measures that binary instead (only twbench is built),
# e.g. an older build kept for a before/after comparison.
tw_build() {
    local profile="${PROFILE:-release}" flag=--release given="${TWILLD:-}"
    [[ "$profile" == debug ]] && flag=
    local dir="${CARGO_TARGET_DIR:-$TW_ROOT/target}/$profile"
    if [[ -n "$given" ]]; then
        [[ -x "$given" ]] || { echo "TWILLD=$given: not an executable" >&2; exit 1; }
        (cd "$TW_ROOT" && cargo build $flag -q -p twill-benches --bin twbench)
        TWILLD="$(cd "$(dirname "$given")" && pwd)/$(basename "$given")"
    else
        (cd "$TW_ROOT" && cargo build $flag -q -p twilld -p twill-benches --bin twilld --bin twbench)
        TWILLD="$dir/twilld"
    fi
    TWBENCH="$dir/twbench"
}

tw_n() { echo "$TW_PREFIX-$1"; }

tw_ns() {
    local ns
    ns="$(tw_n "$1")"
    ip netns add "$ns"
    TW_NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
}

# tw_veth A IFA ADDR_A/LEN B IFB ADDR_B/LEN [MTU]: a veth pair between two namespaces.
tw_veth() {
    local a b mtu="${7:-1500}"
    a="$(tw_n "$1")"
    b="$(tw_n "$4")"
    ip link add "tw$$x" type veth peer name "tw$$y"
    ip link set "tw$$x" netns "$a"
    ip link set "tw$$y" netns "$b"
    ip -n "$a" link set "tw$$x" name "$2" mtu "$mtu"
    ip -n "$b" link set "tw$$y" name "$5" mtu "$mtu"
    ip -n "$a" addr add "$3" dev "$2"
    ip -n "$b" addr add "$6" dev "$5"
    ip -n "$a" link set "$2" up
    ip -n "$b" link set "$5" up
}

# tw_bg NS NAME cmd...: runs cmd in namespace NS in the background, output
# to $TW_STATE/NAME.log; sets $TW_LAST_PID.
tw_bg() {
    local ns name
    ns="$(tw_n "$1")"
    name="$2"
    shift 2
    ip netns exec "$ns" "$@" >"$TW_STATE/$name.log" 2>&1 &
    TW_LAST_PID=$!
    TW_PIDS+=("$TW_LAST_PID")
}

# tw_stop PID: stops one process we started.
tw_stop() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

# tw_etcd NS ADDR: a single etcd member in namespace NS, clients on ADDR:2379
# (and 127.0.0.1:2379), data in memory; waits until it answers.
tw_etcd() {
    local ns="$1" addr="$2" urls="http://127.0.0.1:2379"
    [[ "$addr" != 127.0.0.1 ]] && urls="http://$addr:2379,$urls"
    tw_bg "$ns" "etcd-$ns" etcd --name "etcd-$ns" --data-dir "$TW_SHM/etcd-$ns" \
        --listen-client-urls "$urls" --advertise-client-urls "http://$addr:2379" \
        --listen-peer-urls "http://127.0.0.1:2380" --initial-advertise-peer-urls "http://127.0.0.1:2380" \
        --initial-cluster "etcd-$ns=http://127.0.0.1:2380" --log-level error --logger zap \
        --quota-backend-bytes $((4 << 30))
    for _ in $(seq 1 100); do
        ETCDCTL_API=3 ip netns exec "$(tw_n "$ns")" etcdctl --endpoints "http://127.0.0.1:2379" \
            endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "etcd in $ns did not start:" >&2
    cat "$TW_STATE/etcd-$ns.log" >&2
    return 1
}

# tw_etcdctl NS args...
tw_etcdctl() {
    local ns="$1"
    shift
    ETCDCTL_API=3 ip netns exec "$(tw_n "$ns")" etcdctl --endpoints "http://127.0.0.1:2379" "$@"
}

# tw_config NS NETWORK: writes the flannel network config (vxlan, VNI 1).
tw_config() {
    tw_etcdctl "$1" put /coreos.com/network/config \
        "{\"Network\":\"$2\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"vxlan\",\"VNI\":1}}" >/dev/null
}

# tw_twilld NS NAME ETCD_URL UNDERLAY_IP [flags...]: twilld in namespace NS,
# health on 127.0.0.1:8471 there, subnet file in the state dir; sets
# $TW_LAST_PID and waits until /readyz answers 200.
tw_twilld() {
    local ns="$1" name="$2" etcd="$3" ip="$4"
    shift 4
    tw_bg "$ns" "$name" env RUST_LOG="${TWILLD_LOG:-info}" "$TWILLD" -etcd-endpoints="$etcd" -iface="$ip" \
        -subnet-file="$TW_STATE/$name/subnet.env" -healthz-ip=127.0.0.1 -healthz-port=8471 "$@"
    local pid=$TW_LAST_PID
    tw_wait_ready "$ns" "$pid" "$name"
    TW_LAST_PID=$pid
}

# tw_wait_ready NS PID NAME [timeout_s]
tw_wait_ready() {
    local ns="$1" pid="$2" name="$3" timeout="${4:-60}"
    for _ in $(seq 1 $((timeout * 20))); do
        ip netns exec "$(tw_n "$ns")" curl -sf -o /dev/null http://127.0.0.1:8471/readyz && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "twilld $name exited:" >&2
            tail -n 30 "$TW_STATE/$name.log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "twilld $name not ready within ${timeout}s:" >&2
    tail -n 30 "$TW_STATE/$name.log" >&2
    return 1
}

# tw_metric NS NAME: a value from twilld's /metrics in namespace NS.
tw_metric() {
    ip netns exec "$(tw_n "$1")" curl -sf http://127.0.0.1:8471/metrics | awk -v m="$2" '$1 == m {print $2}'
}

# tw_median v1 v2 ...
tw_median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# tw_div A B [FORMAT]: A / B.
tw_div() {
    awk -v a="$1" -v b="$2" -v f="${3:-%.3f}" 'BEGIN { if (b + 0 == 0) print "nan"; else printf f "\n", a / b }'
}

# tw_result NAME VALUE UNIT: a figure, printed at the end by tw_report.
tw_result() {
    TW_RESULTS+=("$1: $2 $3")
    echo "  $1: $2 $3" >&2
}

# tw_take LINES: records every `name: value unit` line of a helper's output.
tw_take() {
    local line
    while IFS= read -r line; do
        [[ "$line" =~ ^([a-zA-Z0-9_]+):\ ([^ ]+)\ (.+)$ ]] || continue
        tw_result "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
    done <<<"$1"
}

# tw_value NAME: the value of a recorded figure.
tw_value() {
    local r
    for r in "${TW_RESULTS[@]}"; do
        [[ "$r" == "$1: "* ]] && { r="${r#*: }"; echo "${r%% *}"; return 0; }
    done
    echo nan
}

tw_report() {
    local r
    for r in "${TW_RESULTS[@]}"; do
        echo "$r"
    done
    if [[ -n "${RESULTS_FILE:-}" ]]; then
        printf '%s\n' "${TW_RESULTS[@]}" >>"$RESULTS_FILE"
    fi
}

tw_log() { printf '== %s\n' "$*" >&2; }

# The single-host benchmarks' set-up: host namespace `a` with eth0 10.0.0.2/24
# (a veth whose peer stays unattached), etcd on its loopback, Network
# 10.128.0.0/9. Sets $ns to the namespace's name.
tw_single_host() {
    tw_ns a
    ns=$(tw_n a)
    ip -n "$ns" link add eth0 type veth peer name eth0p
    ip -n "$ns" link set eth0p up
    ip -n "$ns" addr add 10.0.0.2/24 dev eth0
    ip -n "$ns" link set eth0 up
    tw_etcd a 127.0.0.1
    tw_config a 10.128.0.0/9
}
