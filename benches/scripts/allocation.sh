#!/usr/bin/env bash
# Allocation: the criterion bench benches/benches/allocation.rs (twill's
# allocator vs flannel's linear scan over 65,536 subnets, 0 / 50 / 99.9 %
# taken), run with a short measurement time, its estimates printed as
# figures with twill's time as a ratio of the linear scan's (the anchor).
#
# Usage: benches/scripts/allocation.sh          (1 s warm-up, 2 s per bench)
#        TINY=1 benches/scripts/allocation.sh   (dev profile, 0.1 s per bench)
# Does not need root.
set -euo pipefail
cd "$(dirname "$0")/../.."
TW_RESULTS=()
. benches/scripts/lib.sh

if [[ "${TINY:-0}" == 1 ]]; then
    ARGS=(--profile "${PROFILE:-dev}")
    [[ "${PROFILE:-}" == debug ]] && ARGS=(--profile dev)
    [[ "${PROFILE:-}" == release ]] && ARGS=()
    CRIT=(--warm-up-time 0.05 --measurement-time 0.1 --sample-size 10)
else
    ARGS=()
    CRIT=(--warm-up-time 1 --measurement-time 2)
fi
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
cargo bench -q "${ARGS[@]}" -p twill-benches --bench allocation -- "${CRIT[@]}" --noplot >"$OUT" 2>&1 ||
    { cat "$OUT" >&2; exit 1; }

# "allocate_65536/twill_random/50%" then "time: [lo mid hi]" (maybe on one line).
parsed=$(awk '
    function ns(v, u) { return u == "ps" ? v / 1000 : u == "ns" ? v : (u == "µs" || u == "us") ? v * 1e3 : u == "ms" ? v * 1e6 : v * 1e9 }
    /^[A-Za-z0-9_.%\/]+( |$)/ && $1 !~ /^(Benchmarking|Found|Gnuplot|change|Performance|No|time:)/ { name = $1 }
    /time:/ { i = index($0, "["); split(substr($0, i + 1), f, " "); print name, ns(f[3], f[4]) }
' "$OUT")
[[ -n "$parsed" ]] || { cat "$OUT" >&2; echo "allocation.sh: no criterion estimates found" >&2; exit 1; }

label() { sed 's/99\.9%/99_9pct/; s/%/pct/' <<<"$1"; }
while read -r name v; do
    case "$name" in
        allocate_65536/*)
            IFS=/ read -r _ impl fill <<<"$name"
            tw_result "alloc_${impl}_$(label "$fill")_ns" "$(printf '%.2f' "$v")" ns ;;
        build_allocator_*)
            tw_result "alloc_build_allocator_$(label "${name#build_allocator_}")_us" "$(awk -v v="$v" 'BEGIN{printf "%.1f", v/1000}')" us ;;
    esac
done <<<"$parsed"
for fill in 0pct 50pct 99_9pct; do
    lin=$(tw_value "alloc_flannel_linear_${fill}_ns")
    for impl in twill_random twill_allocate_mut; do
        tw_result "alloc_${impl}_vs_flannel_linear_${fill}_ratio" \
            "$(tw_div "$(tw_value "alloc_${impl}_${fill}_ns")" "$lin" %.4g)" x
        tw_result "alloc_${impl}_speedup_over_flannel_linear_${fill}" \
            "$(tw_div "$lin" "$(tw_value "alloc_${impl}_${fill}_ns")" %.4g)" x
    done
done
tw_report
