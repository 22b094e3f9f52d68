#!/usr/bin/env bash
# CI smoke run: every benchmark script once at a tiny size (TINY=1), on the
# debug build the tests already made (PROFILE=debug). Fails if a script fails
# or prints no `name: value unit` figure. Not a timing test: no figure is
# compared with anything.
#
# Usage: bash benches/scripts/smoke.sh      (as root, like CI)
set -euo pipefail
cd "$(dirname "$0")"
export TINY=1 PROFILE="${PROFILE:-debug}"
# An entry may start with VAR=value words, the environment for that run
# (FAMILY=6: the IPv6 variants).
SCRIPTS=(program_peers.sh "FAMILY=6 program_peers.sh" convergence.sh startup.sh memory.sh
    responsiveness.sh dataplane.sh "FAMILY=6 dataplane.sh" allocation.sh scale.sh incremental.sh
    health.sh)
failed=()
start=$(date +%s)
for s in "${SCRIPTS[@]}"; do
    t0=$(date +%s)
    echo "=== smoke: $s"
    read -ra words <<<"$s"
    script="${words[-1]}"
    unset 'words[-1]'
    if out=$(env "${words[@]}" bash "./$script" 2> >(sed "s/^/  [$s] /" >&2)); then
        figures=$(grep -cE '^[A-Za-z0-9_]+: [^ ]+ .+$' <<<"$out" || true)
        if [[ "$figures" -eq 0 ]]; then
            echo "=== smoke: $s printed no figure" >&2
            failed+=("$s")
        else
            echo "$out" | sed 's/^/  /'
            echo "=== smoke: $s ok ($figures figures, $(( $(date +%s) - t0 )) s)"
        fi
    else
        echo "=== smoke: $s FAILED (exit $?)" >&2
        failed+=("$s")
    fi
done
passed=$(( ${#SCRIPTS[@]} - ${#failed[@]} ))
echo "smoke: took $(( $(date +%s) - start )) s"
echo "smoke: ${passed} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]] || { echo "failed: ${failed[*]}" >&2; exit 1; }
