#!/usr/bin/env bash
# Installs what twill's build, tests, demo and benchmarks need on a fresh Debian 12
# machine, then checks that each thing the build relies on works, so a gap fails here in
# seconds with one line naming the package instead of minutes later inside a build script.
# Idempotent: installs only what is missing. Needs root only when something is missing.
set -euo pipefail

# command-or-file : Debian package. A path (starting with /) is checked with -e.
# libprotobuf-dev carries google/protobuf/*.proto, which etcd-client's build imports; it is
# only a Recommends of protobuf-compiler, so --no-install-recommends would leave it out.
# stress-ng keeps cores busy for `scripts/test.sh --busy` (the suite must pass on a busy host).
# containernetworking-plugins: the real bridge and host-local CNI plugins that twill-cni's
# `flannel` delegates to in its tests (crates/twill-cni/tests/cluster.rs, docs/cni.md).
need=()
for pair in etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler \
            /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev \
            cc:gcc /usr/include/stdio.h:libc6-dev \
            ip:iproute2 bridge:iproute2 nft:nftables iperf3:iperf3 tcpdump:tcpdump \
            openssl:openssl ping:iputils-ping curl:curl jq:jq stress-ng:stress-ng \
            pgrep:procps /usr/lib/cni/bridge:containernetworking-plugins; do
    what=${pair%%:*}; pkg=${pair#*:}
    if [ "${what#/}" != "$what" ]; then [ -e "$what" ] && continue
    else command -v "$what" >/dev/null 2>&1 && continue; fi
    need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${need[@]}" | sort -u | paste -sd' ')
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing Debian packages: $pkgs; run as root, or: sudo apt-get install -y $pkgs" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the etcd-server package start a system etcd on 2379.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
        || { echo "install-deps: apt-get install failed for: $pkgs" >&2; exit 1; }
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi

# What the build relies on, checked for real (each failure is one line naming the package).
fail() { echo "install-deps: $*" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust (https://rustup.rs) first"
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
cat > "$probe/probe.proto" <<'PROTO'
syntax = "proto3";
import "google/protobuf/descriptor.proto";
message Probe { google.protobuf.FileDescriptorProto d = 1; }
PROTO
protoc -I"$probe" --descriptor_set_out="$probe/probe.pb" "$probe/probe.proto" 2>"$probe/err" \
    || fail "protoc cannot compile a .proto importing google/protobuf/descriptor.proto (package libprotobuf-dev): $(head -1 "$probe/err")"
printf 'int main(void){return 0;}\n' > "$probe/probe.c"
cc -o "$probe/probe" "$probe/probe.c" 2>"$probe/err" \
    || fail "cc cannot build a C program (packages gcc, libc6-dev): $(head -1 "$probe/err")"
etcd --version >/dev/null 2>&1 || fail "etcd does not run (package etcd-server)"
[ "$(jq -n '[1] | length' 2>/dev/null)" = 1 ] || fail "jq does not run (package jq; scripts/check-layering.sh reads cargo metadata with it)"
