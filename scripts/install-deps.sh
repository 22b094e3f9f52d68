#!/usr/bin/env bash
# Installs what twill's tests, demo and benchmarks need on a fresh Debian 12
# machine. Idempotent: skips what is already there.
set -euo pipefail
need=()
for pair in etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler ip:iproute2 \
            bridge:iproute2 nft:nftables iperf3:iperf3 tcpdump:tcpdump openssl:openssl \
            ping:iputils-ping curl:curl jq:jq; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the etcd-server package start a system etcd on 2379.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
