#!/usr/bin/env bash
# The README's test command: every test, for real (etcd processes, network
# namespaces, the kernel). Needs root. Missing capabilities fail the run
# instead of skipping tests (TWILL_REQUIRE_PRIVILEGED=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export TWILL_REQUIRE_PRIVILEGED=1
cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
