#!/usr/bin/env bash
# The README's test command: every test, for real (etcd processes, network
# namespaces, the kernel). Needs root. Missing capabilities fail the run
# instead of skipping tests (TWILL_REQUIRE_PRIVILEGED=1).
#
#   ./scripts/test.sh [--busy] [cargo test args...]
#     --busy  keep both cores busy (stress-ng --cpu 2) while the tests run: the suite
#             must pass on a loaded machine, since its waits are on conditions, not time.
set -euo pipefail
cd "$(dirname "$0")/.."
busy=0
if [ "${1:-}" = "--busy" ]; then busy=1; shift; fi
bash scripts/install-deps.sh
export TWILL_REQUIRE_PRIVILEGED=1
# Build first so that --busy loads the tests, not the compiler.
cargo test --workspace --all-targets --no-run -q
stress_pid=
if [ "$busy" = 1 ]; then
    stress-ng --cpu 2 --timeout 3600s --quiet &
    stress_pid=$!
    # Only the stress-ng we started, by PID.
    trap 'kill "$stress_pid" 2>/dev/null; wait "$stress_pid" 2>/dev/null' EXIT
    echo "test.sh: stress-ng --cpu 2 running (pid $stress_pid)"
fi
start=$(date +%s)
cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
echo "test.sh: suite wall time $(( $(date +%s) - start )) s${stress_pid:+ (with stress-ng --cpu 2)}"
