#!/usr/bin/env bash
# Benchmarks/tlb/run.sh: bakes the TLB shootdown benchmark guest and runs it
# with 1 vCPU (local flush only) and with N vCPUs, on -M pc (the PIT
# calibrates the TSC there). Usage: Benchmarks/tlb/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]
set -euo pipefail
cd "$(dirname "$0")/../.."
. Scripts/lib.sh
ensure_packages
accel=qemu cpus=2 runs=1
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
.build/debug/bake hw_generic .build/images/tlb-bench.img Benchmarks/tlb/guest >/dev/null
for run in $(seq "$runs"); do
    for n in 1 "$cpus"; do
        echo "== run $run, $accel, --smp $n"
        .build/debug/rumprun-cli run "$accel" -i --timeout 600 --machine pc --smp "$n" .build/images/tlb-bench.img
    done
done
