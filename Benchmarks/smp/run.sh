#!/usr/bin/env bash
# Benchmarks/smp/run.sh: the smp benchmark guest (hashing on one CPU and
# split over N; cross-CPU wake-up latency) on 1 and on N vCPUs (default 2),
# interleaved, 3 runs by default.
#   Benchmarks/smp/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]
exec "$(dirname "$0")/../run-on-1-and-n-cpus.sh" smp Benchmarks/smp/guest 3 "$@"
