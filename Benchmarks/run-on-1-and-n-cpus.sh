#!/usr/bin/env bash
# Benchmarks/run-on-1-and-n-cpus.sh: shared driver of the SMP-style
# benchmarks (smp, tlb): bakes GUEST_DIR and boots it with 1 vCPU and with
# N vCPUs, interleaved, on -M pc (the PIT calibrates the TSC there).
#   Benchmarks/run-on-1-and-n-cpus.sh NAME GUEST_DIR DEFAULT_RUNS [--accel qemu|kvm] [--cpus N] [--runs R]
set -euo pipefail
name=$1 guest=$2 runs=$3
shift 3
cd "$(dirname "$0")/.."
. Scripts/lib.sh
ensure_packages
accel=qemu cpus=2
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: Benchmarks/$name/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]" >&2; exit 64 ;;
    esac
done
swift build --product bake >/dev/null
swift build --product rumprun-cli >/dev/null
mkdir -p .build/images
.build/debug/bake hw_generic ".build/images/$name-bench.img" "$guest" >/dev/null
for run in $(seq "$runs"); do
    for n in 1 "$cpus"; do
        echo "== run $run, $accel, --smp $n"
        .build/debug/rumprun-cli run "$accel" -i --timeout 600 --machine pc --smp "$n" ".build/images/$name-bench.img"
    done
done
