#!/usr/bin/env bash
# Memory: twilld's resident set (VmRSS from /proc/<pid>/status) with 0, 1,000
# and N peers, and after CYCLES cycles of removing all N peers and adding them
# back (growth would be a leak). Anchor: twilld's own RSS with 0 peers.
# Peers are programmed for real (twbench waits for their routes in the kernel
# through a netlink monitor socket, then lets twilld settle for a second).
#
# Usage: benches/scripts/memory.sh          (N = 10,000, 10 cycles)
#        TINY=1 benches/scripts/memory.sh   (N = 100, 2 cycles)
# Env: PEERS, CYCLES, SETTLE (ms after the last route, before a sample), TWILLD_FLAGS,
# SMAPS_DIR (a copy of /proc/<pid>/smaps at each sample, to see which mapping grew),
# TWBENCH_SAMPLE_HOOK (a shell command run at each sample with "$1" the sample's name and
# "$2" twilld's pid, e.g. gdb calling malloc_stats()). Needs root.
# Each sample's VmRSS, RssAnon and RssFile go to stderr, also with 0 peers within each cycle.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
tw_init memory

if [[ "$TW_TINY" == 1 ]]; then
    PEERS="${PEERS:-100}"; CYCLES="${CYCLES:-2}"; MID=10; SETTLE=200
else
    PEERS="${PEERS:-10000}"; CYCLES="${CYCLES:-10}"; MID=1000; SETTLE=${SETTLE:-1000}
fi

tw_build
tw_single_host
# Logging at warn: 10,000 "peer added" lines per cycle would measure the log pipe.
# TWILLD_FLAGS: more twilld flags (e.g. -peer-health=false, to measure without the prober).
TWILLD_LOG=warn tw_twilld a twilld http://127.0.0.1:2379 10.0.0.2 ${TWILLD_FLAGS:-}
pid=$TW_LAST_PID

tw_log "RSS with 0, $MID, $PEERS peers and after $CYCLES cycles of -$PEERS/+$PEERS"
out=$(ip netns exec "$ns" "$TWBENCH" memory --pid "$pid" --n "$PEERS" --mid "$MID" \
    --cycles "$CYCLES" --settle-ms "$SETTLE" --samples "${SAMPLES_DIR:-$TW_STATE}/memory_samples.txt" \
    ${SMAPS_DIR:+--smaps "$SMAPS_DIR"})
tw_take "$out"
kill -0 "$pid" || { echo "twilld died" >&2; exit 1; }
tw_report
