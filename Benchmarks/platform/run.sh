#!/bin/bash
# Benchmarks/platform/run.sh: bakes the platform benchmark guest
# (Benchmarks/platform/guest) and boots it with rumprun-cli, printing the
# guest's figures (context switch, create+join, malloc/free, timer wake-up,
# boot-to-main), each beside its in-run baseline.
#
#   Benchmarks/platform/run.sh [--accel qemu|kvm] [--machine microvm|pc] [--runs N]
#
# Needs the host tools built (swift build --product bake; swift build --product rumprun-cli).
set -eu
cd "$(dirname "$0")/../.."
accel=qemu
machine=microvm
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=$2; shift 2 ;;
        --machine) machine=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: $0 [--accel qemu|kvm] [--machine microvm|pc] [--runs N]" >&2; exit 64 ;;
    esac
done
. Scripts/lib.sh
ensure_packages
bin=$(swift build --show-bin-path)
for tool in bake rumprun-cli; do
    [ -x "$bin/$tool" ] || { echo "error: $bin/$tool not built (swift build --product $tool)" >&2; exit 1; }
done
image=$(mktemp -d)/platform-bench.img
"$bin/bake" --quiet --source-root . hw_generic "$image" Benchmarks/platform/guest
echo "platform benchmark: machine $machine, accelerator $accel, $runs run(s)"
i=0
while [ $i -lt "$runs" ]; do
    "$bin/rumprun-cli" run "$accel" -i --timeout 300 --machine "$machine" "$image"
    i=$((i + 1))
done
rm -rf "$(dirname "$image")"
