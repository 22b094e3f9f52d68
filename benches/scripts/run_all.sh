#!/usr/bin/env bash
# Runs every benchmark at full size, one after the other, and keeps what
# docs/benchmarks.md is written from:
#
#   OUTDIR/results.txt   every `name: value unit` figure
#   OUTDIR/machine.txt   nproc, kernel, CPU model, load at start and end
#   OUTDIR/samples/      raw samples (per-run throughput, RTTs, latencies, RSS)
#   OUTDIR/*.svg         plots of the samples (benches/scripts/plot.py)
#
# Usage: sudo benches/scripts/run_all.sh [OUTDIR]     (default docs/benchmarks)
# About 10 minutes on 2 cores. Needs root, etcd, iperf3, jq, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR="${1:-docs/benchmarks}"
mkdir -p "$OUTDIR/samples"
rm -f "$OUTDIR/results.txt" "$OUTDIR"/samples/*
export RESULTS_FILE="$PWD/$OUTDIR/results.txt" SAMPLES_DIR="$PWD/$OUTDIR/samples"
[[ "$OUTDIR" = /* ]] && export RESULTS_FILE="$OUTDIR/results.txt" SAMPLES_DIR="$OUTDIR/samples"
unset TINY
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "etcd: $(etcd --version | awk '/etcd Version/ {print $3}')"
    echo "iperf3: $(iperf3 --version | awk 'NR == 1 {print $2}')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUTDIR/machine.txt"
# An entry may start with VAR=value words (FAMILY=6: the IPv6 variants).
for s in allocation program_peers "FAMILY=6 program_peers" convergence startup memory responsiveness \
    dataplane "FAMILY=6 dataplane" scale health; do
    echo "=== $s ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))" >&2
    read -ra words <<<"$s"
    script="${words[-1]}"
    unset 'words[-1]'
    env "${words[@]}" bash "benches/scripts/$script.sh"
done
echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUTDIR/machine.txt"
python3 benches/scripts/plot.py "$SAMPLES_DIR" "$OUTDIR"
echo "=== results in $OUTDIR/results.txt" >&2
