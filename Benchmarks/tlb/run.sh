#!/usr/bin/env bash
# Benchmarks/tlb/run.sh: the TLB shootdown benchmark guest with 1 vCPU
# (local flush only) and with N vCPUs (default 2), 1 run by default.
#   Benchmarks/tlb/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]
exec "$(dirname "$0")/../run-on-1-and-n-cpus.sh" tlb Benchmarks/tlb/guest 1 "$@"
