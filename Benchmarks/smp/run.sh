#!/usr/bin/env bash
# Benchmarks/smp/run.sh: bakes the smp benchmark guest and runs it on 1 and
# on N vCPUs (default 2) in the same invocation, interleaved, on -M pc (the
# PIT calibrates the TSC there). Usage: Benchmarks/smp/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]
set -euo pipefail
cd "$(dirname "$0")/../.."
. Scripts/lib.sh
ensure_packages
accel=qemu cpus=2 runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: $0 [--accel qemu|kvm] [--cpus N] [--runs R]" >&2; exit 64 ;;
    esac
done
swift build --product bake >/dev/null
swift build --product rumprun-cli >/dev/null
mkdir -p .build/images
.build/debug/bake hw_generic .build/images/smp-bench.img Benchmarks/smp/guest >/dev/null
for run in $(seq "$runs"); do
    for n in 1 "$cpus"; do
        echo "== run $run, $accel, --smp $n"
        .build/debug/rumprun-cli run "$accel" -i --timeout 600 --machine pc --smp "$n" .build/images/smp-bench.img
    done
done
