#!/usr/bin/env bash
# The seeded chaos soak (issue 18) for long runs: the harness of
# examples/twilld/tests/chaos.rs (five hosts, a 3-member etcd cluster, the
# real twilld with a 5 s lease TTL, a container per host) run for CHAOS_S
# seconds of fault holds per seed. Figures: faults applied and survived
# (no violation while held or after their heal), violations, the worst
# time to converge after a heal (every invariant, kernel entries
# included), container ping loss between hosts no fault touched, and the
# daemons' highest RSS and fd count. Every violation line names its seed
# and fault: replay it with SEED=<seed> FAULT=<fault> (see the test file).
#
# Usage: benches/scripts/chaos.sh                        (CHAOS_S=600, SEEDS="11 12 13")
#        TINY=1 benches/scripts/chaos.sh                 (CHAOS_S=3, SEEDS=1)
#        CHAOS_S=600 SEEDS="11" benches/scripts/chaos.sh
# Needs root and etcd. Namespaces and processes are the test's own, cleaned
# up by its Drop guards (also on a panic).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init chaos

if [[ "$TW_TINY" == 1 ]]; then
    CHAOS_S="${CHAOS_S:-3}"; SEEDS="${SEEDS:-1}"
else
    CHAOS_S="${CHAOS_S:-600}"; SEEDS="${SEEDS:-11 12 13}"
fi
profile="${PROFILE:-release}" flag=--release
[[ "$profile" == debug ]] && flag=

tw_log "chaos soak: seeds $SEEDS, $CHAOS_S s of faults each ($profile)"
log="$TW_STATE/chaos.log"
status=0
(cd "$TW_ROOT" && TWILL_REQUIRE_PRIVILEGED=1 CHAOS_S="$CHAOS_S" SEEDS="$SEEDS" \
    cargo test $flag -q -p twilld --test chaos -- chaos_soak --nocapture --test-threads=1) >"$log" 2>&1 || status=$?
grep -E '^CHAOS (summary|total|VIOLATION)' "$log" >&2 || true
tw_take "$(grep -E '^chaos_[a-z_]+: ' "$log" || true)"
tw_report
if [[ "$status" -ne 0 ]]; then
    echo "chaos: the soak failed (exit $status); fault log: $log" >&2
    KEEP_STATE=1
    exit "$status"
fi
