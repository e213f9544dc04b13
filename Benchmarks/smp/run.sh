#!/usr/bin/env bash
# Benchmarks/smp/run.sh: the smp benchmark guest (hashing on one CPU, split
# over N through the mailboxes, and over N unbound threads through the
# scheduler; cross-CPU wake-up latency of mailbox work and of threads) on 1
# and on N vCPUs (default 2), interleaved, 3 runs by default. Ends with the
# threaded hashing times of each run side by side: 1 vCPU, N vCPUs, speedup.
#   Benchmarks/smp/run.sh [--accel qemu|kvm] [--cpus N] [--runs R]
set -euo pipefail
here="$(dirname "$0")"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$here/../run-on-1-and-n-cpus.sh" smp Benchmarks/smp/guest 3 "$@" | tee "$log"
echo "== threaded hashing through the scheduler (same work, same guest image)"
awk '
    /^== run / { run = $3; sub(",", "", run); cpus = $NF }
    /smp-bench: threads [0-9]+ unbound/ {
        for (i = 1; i <= NF; i++) if ($i == "cpus:") { t = $(i + 1); u = $(i + 2); sub(",", "", u) }
        if (cpus == 1) one[run] = t; else { many[run] = t; n = cpus }
        unit = u
    }
    END {
        printf "run  1 vCPU (%s)  %s vCPUs (%s)  speedup\n", unit, n, unit
        for (r = 1; r in one; r++) {
            if (many[r] > 0) printf "%-4s %14s  %14s  x%.2f\n", r, one[r], many[r], one[r] / many[r]
        }
    }' "$log"
