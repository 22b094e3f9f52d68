#!/usr/bin/env bash
# Many agents on one etcd: N lease managers in one process (twscale), each
# over its own EtcdRegistry connection, against a 3-member etcd cluster on
# loopback. Join storm, steady-state etcd requests per second (against
# flannel's algorithm for the same cluster, modelled from its source),
# restart storm, restart storm losing the etcd leader, and the resources of
# this process and of each member. See docs/benchmarks.md §8.
#
# Usage: benches/scripts/scale.sh           (N = 1,000, TTL 60 s, renew margin 20 s, 80 s window)
#        TINY=1 benches/scripts/scale.sh    (N = 20, TTL 6 s, margin 2 s, 8 s window)
# Env: AGENTS, TTL, MARGIN, STEADY (seconds), PROFILE (release|debug). Needs root
# only for lib.sh's state directories; no network namespace is made.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init scale

if [[ "$TW_TINY" == 1 ]]; then
    AGENTS="${AGENTS:-20}"; TTL="${TTL:-6}"; MARGIN="${MARGIN:-2}"; STEADY="${STEADY:-8}"
else
    AGENTS="${AGENTS:-1000}"; TTL="${TTL:-60}"; MARGIN="${MARGIN:-20}"; STEADY="${STEADY:-80}"
fi

profile="${PROFILE:-release}" flag=--release
[[ "$profile" == debug ]] && flag=
(cd "$TW_ROOT" && cargo build $flag -q -p twill-benches --bin twscale)
TWSCALE="${CARGO_TARGET_DIR:-$TW_ROOT/target}/$profile/twscale"

# Each agent holds a connection to each of the 3 members (and each member one
# per agent): 3 fds per agent here, N per member.
want=$((AGENTS * 4 + 1024))
if [[ $(ulimit -n) -lt $want ]]; then
    ulimit -n "$want"
fi

tw_log "$AGENTS agents, TTL ${TTL}s, renew margin ${MARGIN}s, steady window ${STEADY}s, load $(cut -d' ' -f1 /proc/loadavg)"
# etcd's data (its fsyncs) in memory, as lib.sh's tw_etcd: the testbed makes
# its member directories under TMPDIR.
out=$(TMPDIR="$TW_SHM" "$TWSCALE" --agents "$AGENTS" --ttl-secs "$TTL" \
    --renew-margin-secs "$MARGIN" --steady-secs "$STEADY")
tw_take "$out"
tw_report
