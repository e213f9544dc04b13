#!/usr/bin/env bash
# Benchmarks/http: wrk against the httpd unikernel and, in the same run, a
# Linux guest (Debian's cloud kernel + a busybox initramfs running
# `busybox httpd`) serving the same page, on the same QEMU machine (pc, TCG),
# network backend (user networking, one TCP host forward on 127.0.0.1,
# virtio-net or e1000) and memory. Reports requests/s and p99 latency side by
# side, and bulk TCP throughput guest→host (one 16 MiB HTTP body).
#   Benchmarks/http/run.sh [nic=virtio-net|e1000] [seconds=20] [connections=8]
# Downloads (kernel .deb) and the initramfs are cached in .build-bench (gitignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. Scripts/lib.sh
. Benchmarks/linux-guest.sh
ensure_packages

nic="${1:-virtio-net}"
seconds="${2:-20}"
connections="${3:-8}"
memory=256
scratch="$root/.build-bench"
mkdir -p "$scratch"
bulk=$((16 * 1024 * 1024))
port_unikernel=18080
port_linux=18081
qemu_nic=$([ "$nic" = e1000 ] && echo e1000 || echo virtio-net-pci)

need=()
command -v wrk >/dev/null || need+=(wrk)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- The Linux guest: Debian's cloud kernel and a busybox initramfs. --------
# The cloud kernel has virtio but no e1000 driver; e1000 uses the generic one.
flavour=$([ "$nic" = e1000 ] && echo amd64 || echo cloud-amd64)
fetch_debian_kernel "$flavour"
kernel_version=${vmlinuz##*/vmlinuz-}
initrd="$scratch/initrd-$kernel_version-$nic.cpio.gz"
if [ ! -f "$initrd" ]; then
    echo "==> building the initramfs (busybox httpd)"
    tree="$scratch/initramfs-$nic"
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,proc,sys,dev,www,lib/modules,tmp}
    cp "$(command -v busybox)" "$tree/bin/busybox"
    # The NIC driver and what it depends on, dependencies first.
    order=()
    if [ "$nic" = e1000 ]; then add_module e1000; else add_module virtio_pci; add_module virtio_net; fi
    echo "${order[*]}" >"$tree/lib/modules/order"
    cat >"$tree/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in \$(cat /lib/modules/order); do [ -f /lib/modules/\$module.ko ] && insmod /lib/modules/\$module.ko; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
printf '%s\n' '<!DOCTYPE html>' '<html><body><h1>Hello from a swift-rumprun unikernel</h1></body></html>' >/www/index.html
head -c $bulk /dev/zero >/www/bulk
httpd -p 80 -h /www
echo "linux-guest: httpd ready"
while true; do sleep 3600; done
INIT
    chmod +x "$tree/init"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1 >"$initrd")
fi

# --- The unikernel. ----------------------------------------------------------
echo "==> building rumprun-cli, bake and the httpd image"
swift build --product rumprun-cli >/dev/null
swift build --product bake >/dev/null
image="$scratch/httpd.img"
.build/debug/bake hw_generic "$image" Examples/httpd >/dev/null

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { # url
    for _ in $(seq 1 600); do
        curl -s -f -m 5 -o /dev/null "$1" && return 0
        sleep 0.5
    done
    echo "error: $1 did not answer" >&2
    return 1
}

# wrk: requests/s and p99 (ms) for URL with extra wrk arguments.
measure() { # label url [wrk args...]
    local label="$1" url="$2"
    shift 2
    local out
    out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "$@" "$url")
    echo "$out" >"$scratch/wrk-$label.txt"
    local rps p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    echo "$label|$rps|$p99|${errors:-none}"
}

# Bulk guest→host: the best of three 16 MiB downloads, MiB/s.
bulk_rate() { # url
    local best=0 rate
    for _ in 1 2 3; do
        rate=$(curl -s -f -m 300 -o /dev/null -w '%{speed_download}' "$1")
        best=$(awk -v a="$best" -v b="$rate" 'BEGIN {print (b > a) ? b : a}')
    done
    awk -v r="$best" 'BEGIN {printf "%.2f", r / 1048576}'
}

results=()
echo "==> unikernel: httpd ($nic, -M pc, TCG, ${memory} MiB)"
.build/debug/rumprun-cli run qemu -i --machine pc -M "$memory" \
    -I "net0,$nic,user,hostfwd=tcp:127.0.0.1:$port_unikernel-:80" -W net0,inet,static,10.0.2.15/24,10.0.2.2 "$image" \
    >"$scratch/unikernel-console.log" 2>&1 &
pids+=($!)
unikernel_pid=$!
wait_for "http://127.0.0.1:$port_unikernel/"
results+=("$(measure unikernel-keepalive "http://127.0.0.1:$port_unikernel/")")
results+=("$(measure unikernel-close "http://127.0.0.1:$port_unikernel/" -H 'Connection: close')")
unikernel_bulk=$(bulk_rate "http://127.0.0.1:$port_unikernel/bytes/$bulk")
curl -s -m 10 "http://127.0.0.1:$port_unikernel/quit" >/dev/null || true
wait "$unikernel_pid" || true

echo "==> Linux guest: busybox httpd ($kernel_package, $nic, -M pc, TCG, ${memory} MiB)"
qemu-system-x86_64 -M pc -accel tcg -m "$memory" -nodefaults -no-reboot -display none \
    -serial "file:$scratch/linux-console.log" -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port_linux-:80" -device "$qemu_nic,netdev=net0" &
pids+=($!)
linux_pid=$!
wait_for "http://127.0.0.1:$port_linux/index.html"
results+=("$(measure linux-keepalive "http://127.0.0.1:$port_linux/index.html")")
results+=("$(measure linux-close "http://127.0.0.1:$port_linux/index.html" -H 'Connection: close')")
linux_bulk=$(bulk_rate "http://127.0.0.1:$port_linux/bulk")
kill "$linux_pid" 2>/dev/null || true
wait "$linux_pid" 2>/dev/null || true

{
    echo "HTTP benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), -M pc, TCG, $memory MiB, user networking, $nic"
    echo "wrk -t1 -c$connections -d${seconds}s --latency; Linux: $kernel_package with busybox httpd"
    echo
    echo "| server | requests/s | p99 latency | wrk errors |"
    echo "|---|---|---|---|"
    for row in "${results[@]}"; do echo "| ${row//|/ | } |"; done
    echo
    echo "| bulk guest→host (16 MiB body, best of 3) | MiB/s |"
    echo "|---|---|"
    echo "| unikernel | $unikernel_bulk |"
    echo "| Linux guest | $linux_bulk |"
} | tee "$scratch/results-$nic.md"
