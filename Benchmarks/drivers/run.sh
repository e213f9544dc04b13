#!/usr/bin/env bash
# Benchmarks/drivers: the BareMetalKit drivers against QEMU's devices, each
# figure beside baselines measured in the same invocation.
#
#   virtio-blk: 4 KiB sequential and random writes and reads (IOPS, MiB/s) on
#     a raw 64 MiB image attached with rumprun-cli -b; the guest
#     (Benchmarks/drivers/guest) times them with the Rumprun clock (TSC) at
#     each queue depth given. Baselines: the same image on the host with dd
#     (O_DIRECT and through the page cache) and with linux/blkbench.c (the
#     same four patterns, queue depth 1, O_DIRECT and buffered); and a Linux
#     guest (Debian kernel, busybox initramfs) running blkbench and busybox
#     dd on the same QEMU disk configuration.
#   virtio-net and e1000 (-M pc): frames per second the guest transmits and
#     receives, 60 and 1514 bytes, through -netdev dgram on 127.0.0.1 with
#     peer.py as the host end. Baselines: peer.py to itself over loopback
#     (what the peer can push and take without QEMU) and a Linux guest
#     (linux/netbench.c on an AF_PACKET socket) with the same NIC and backend.
#
# Everything runs under TCG (KVM is not usable on the project's machines).
# Downloads, images and results are kept in .build-bench/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

usage() {
    cat <<EOF
usage: Benchmarks/drivers/run.sh [options]
  --seconds N      seconds per measured pattern or direction (default 3)
  --depths LIST    virtio-blk queue depths for the unikernel (default 1,16)
  --sizes LIST     frame sizes in bytes, 60..1514 (default 60,1514)
  --only blk|net   run one half only
  --no-linux       skip the Linux-guest baselines (no kernel download)
  --help           this text
Results: a table on stdout, also written to .build-bench/drivers-results.md.
EOF
}

seconds=3
depths=1,16
sizes=60,1514
only=all
linux=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=${2:?}; shift 2 ;;
        --depths) depths=${2:?}; shift 2 ;;
        --sizes) sizes=${2:?}; shift 2 ;;
        --only) only=${2:?}; shift 2 ;;
        --no-linux) linux=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option $1" >&2; usage >&2; exit 64 ;;
    esac
done
case "$only" in all|blk|net) ;; *) echo "error: --only takes blk or net" >&2; exit 64 ;; esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "error: --seconds takes a whole number of seconds" >&2; exit 64; }
[[ "$depths" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: --depths takes numbers separated by commas" >&2; exit 64; }
[[ "$sizes" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: --sizes takes numbers separated by commas" >&2; exit 64; }

. Scripts/lib.sh
. Benchmarks/linux-guest.sh
ensure_packages
need=()
command -v python3 >/dev/null || need+=(python3)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ "$linux" = 1 ]; then
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    command -v cpio >/dev/null || need+=(cpio)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing ${need[*]}; install them with apt-get (or run as root)" >&2
        exit 1
    fi
    echo "==> installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

scratch="$root/.build-bench"
mkdir -p "$scratch"
logs="$scratch/drivers-logs"
rm -rf "$logs"
mkdir -p "$logs"
memory=128
linux_memory=256
pids=()

# Kills a process and everything below it (rumprun-cli -i runs QEMU as a child).
kill_tree() { # pid
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill_tree "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> building rumprun-cli, bake and the benchmark guest"
swift build --product rumprun-cli >/dev/null
swift build --product bake >/dev/null
bin=$(swift build --show-bin-path)
image="$scratch/drivers-bench.img"
"$bin/bake" --quiet --source-root . hw_generic "$image" Benchmarks/drivers/guest
gcc -O2 -static -Wall -o "$scratch/blkbench" Benchmarks/drivers/linux/blkbench.c
gcc -O2 -static -Wall -o "$scratch/netbench" Benchmarks/drivers/linux/netbench.c

# --- The Linux guest: Debian's generic kernel (it has virtio-blk, virtio-net
# and e1000 as modules) and a busybox initramfs with blkbench and netbench.
if [ "$linux" = 1 ]; then
    fetch_debian_kernel amd64
    initrd="$scratch/initrd-drivers.cpio.gz"
    echo "==> building the Linux guest's initramfs"
    tree="$scratch/initramfs-drivers"
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,proc,sys,dev,lib/modules}
    cp "$(command -v busybox)" "$tree/bin/busybox"
    cp "$scratch/blkbench" "$scratch/netbench" "$tree/bin/"
    order=()
    for module in virtio_pci virtio_blk virtio_net e1000; do add_module "$module"; done
    echo "${order[*]}" >"$tree/lib/modules/order"
    cat >"$tree/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /lib/modules/order); do insmod /lib/modules/$module.ko 2>/dev/null; done
mode=; seconds=3
for word in $(cat /proc/cmdline); do
    case "$word" in bench=*) mode=${word#bench=} ;; seconds=*) seconds=${word#seconds=} ;; esac
done
case "$mode" in
blk)
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
    blkbench /dev/vda "$seconds" direct linux-guest
    # busybox dd, sequential 4 KiB with O_DIRECT over the whole disk.
    for direction in write read; do
        start=$(cat /proc/uptime | cut -d' ' -f1)
        if [ $direction = write ]; then
            dd if=/dev/zero of=/dev/vda bs=4096 count=16384 oflag=direct conv=fsync 2>/dev/null
        else
            dd if=/dev/vda of=/dev/null bs=4096 count=16384 iflag=direct 2>/dev/null
        fi
        end=$(cat /proc/uptime | cut -d' ' -f1)
        echo "DD|linux-guest|$direction|$start|$end"
    done
    ;;
net)
    ip link set eth0 up
    sleep 1
    netbench eth0
    ;;
esac
echo "linux-guest: done"
poweroff -f
INIT
    chmod +x "$tree/init"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1 >"$initrd")
fi

# Runs the Linux guest with extra QEMU arguments; its console goes to $1.
run_linux() { # console mode qemu-args...
    local console="$1" mode="$2"
    shift 2
    qemu-system-x86_64 -M pc -accel tcg -m "$linux_memory" -nodefaults -no-reboot -display none \
        -serial "file:$console" -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 bench=$mode seconds=$seconds" "$@" &
    pids+=($!)
    echo $! >"$logs/last-linux-pid"
}

results="$scratch/drivers-results.md"
rows_blk=()
rows_net=()
notes=()
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# dd's summary line to "requests|IOPS|MiB/s" for 4 KiB blocks.
dd_rate() { # dd stderr text
    awk '/copied/ { bytes = $1; for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) secs = $(i - 1);
         sub(",", ".", secs); iops = bytes / 4096 / secs;
         printf "%d|%.0f|%.2f", bytes / 4096, iops, bytes / 1048576 / secs }' <<<"$1"
}

if [ "$only" != net ]; then
    disk="$scratch/drivers-disk.img"
    echo "==> virtio-blk: unikernel (64 MiB raw image, -M pc, TCG, depths $depths, ${seconds}s per pattern)"
    dd if=/dev/zero of="$disk" bs=1M count=64 status=none
    "$bin/rumprun-cli" run qemu -i --timeout $((seconds * 40 + 300)) --machine pc -M "$memory" -b "$disk" "$image" \
        -- blk "$seconds" "$depths" >"$logs/unikernel-blk.log" 2>&1 &
    pids+=($!)
    status=0
    wait $! || status=$?
    grep '^bench:' "$logs/unikernel-blk.log" | sed 's/^/    /'
    [ "$status" = 0 ] || { echo "error: the unikernel's disk run ended with status $status (log: $logs/unikernel-blk.log)" >&2; exit 1; }
    while IFS= read -r line; do
        # bench: blk sequential write depth 1: N requests in T ms, I IOPS, M MiB/s, F failed
        rows_blk+=("$(sed -E 's/^bench: blk ([a-z]+ [a-z]+) depth ([0-9]+): ([0-9]+) requests in [0-9.]+ ms, ([0-9.]+) IOPS, ([0-9.]+) MiB\/s, ([0-9]+) failed/\1|\2|\3|\4|\5/' <<<"$line" |
            awk -F'|' '{printf "unikernel (BareMetalKit VirtioBlock)|%s|%s|%s|%.0f|%.2f", $1, $2, $3, $4, $5}')")
    done < <(grep -E '^bench: blk [a-z]+ [a-z]+ depth' "$logs/unikernel-blk.log")
    # The stamps the guest wrote must be in the file, each block at its place.
    stamped=$(sed -nE 's/^bench: blk stamped sequential blocks 0\.\.<([0-9]+) .*/\1/p' "$logs/unikernel-blk.log" | sort -n | tail -1)
    check=$(python3 - "$disk" "${stamped:-0}" <<'PY'
import struct, sys
path, stamped = sys.argv[1], int(sys.argv[2])
good = misplaced = missing = 0
with open(path, "rb") as f:
    data = f.read()
for block in range(len(data) // 4096):
    magic, passed, index = struct.unpack_from("<IIQ", data, block * 4096)
    if magic == 0x42445753:
        if index == block and 1 <= passed <= 64: good += 1
        else: misplaced += 1
    elif block < stamped:
        missing += 1
print(f"{good} {misplaced} {missing}")
PY
)
    read -r good misplaced missing <<<"$check"
    echo "    image check: $good blocks carry their own stamp, $misplaced misplaced, $missing of the first $stamped unwritten"
    notes+=("image check after the unikernel run: $good blocks carry their own stamp, $misplaced misplaced, $missing of the first ${stamped:-0} sequential blocks unwritten")
    if [ "$misplaced" != 0 ] || [ "$missing" != 0 ]; then echo "error: the image does not hold what the guest wrote" >&2; exit 1; fi

    echo "==> virtio-blk baselines on the host: dd and blkbench on the same image"
    for flags in "oflag=direct" ""; do
        out=$(dd if=/dev/zero of="$disk" bs=4096 count=16384 conv=notrunc,fsync $flags 2>&1)
        rows_blk+=("host dd ${flags:-page cache}${flags:+ (O_DIRECT)}|sequential write|1|$(dd_rate "$out")")
    done
    for flags in "iflag=direct" ""; do
        out=$(dd if="$disk" of=/dev/null bs=4096 $flags 2>&1)
        rows_blk+=("host dd ${flags:-page cache}${flags:+ (O_DIRECT)}|sequential read|1|$(dd_rate "$out")")
    done
    for mode in direct buffered; do
        while IFS='|' read -r _ label pattern depth requests iops mib _; do
            rows_blk+=("$label|$pattern|$depth|$requests|$iops|$mib")
        done < <("$scratch/blkbench" "$disk" "$seconds" "$mode" "host blkbench $([ $mode = direct ] && echo O_DIRECT || echo 'page cache')" | grep '^RESULT|')
    done

    if [ "$linux" = 1 ]; then
        echo "==> virtio-blk baseline: Linux guest ($kernel_package, blkbench + busybox dd, O_DIRECT on /dev/vda)"
        run_linux "$logs/linux-blk.log" blk -drive "file=$disk,if=none,id=d0,format=raw" -device virtio-blk-pci,drive=d0
        wait "$(cat "$logs/last-linux-pid")" || true
        tr -d '\r' <"$logs/linux-blk.log" | grep -E '^(RESULT|DD)\|' | sed 's/^/    /' || true
        while IFS='|' read -r _ _ pattern depth requests iops mib _; do
            rows_blk+=("Linux guest blkbench (O_DIRECT)|$pattern|$depth|$requests|$iops|$mib")
        done < <(tr -d '\r' <"$logs/linux-blk.log" | grep '^RESULT|')
        while IFS='|' read -r _ _ direction start end; do
            rows_blk+=("Linux guest busybox dd (O_DIRECT)|sequential $direction|1|16384|$(awk -v s="$start" -v e="$end" 'BEGIN {d = e - s; if (d <= 0) d = 0.01; printf "%.0f|%.2f", 16384 / d, 64 / d}')")
        done < <(tr -d '\r' <"$logs/linux-blk.log" | grep '^DD|')
        grep -q '^RESULT|' <(tr -d '\r' <"$logs/linux-blk.log") || echo "warning: the Linux guest printed no disk results (log: $logs/linux-blk.log)" >&2
    fi
fi

port_base=$((30000 + $$ % 1000 * 16))
# The host peer against the guest on $guest_port/$host_port, in the
# background so that INT/TERM traps run at once (bash defers them while a
# foreground command runs).
run_peer() { # label log
    python3 Benchmarks/drivers/peer.py guest --guest-port "$guest_port" --host-port "$host_port" --seconds "$seconds" --sizes "$sizes" \
        --label "$1" >"$2" 2>&1 &
    pids+=($!)
    wait $! || echo "error: the peer failed (log: $2)" >&2
}
if [ "$only" != blk ]; then
    echo "==> frames: host peer to itself over loopback (baseline)"
    python3 Benchmarks/drivers/peer.py loopback --seconds "$seconds" --sizes "$sizes" >"$logs/peer-loopback.log" 2>&1 &
    pids+=($!)
    wait $! || echo "error: the loopback baseline failed (log: $logs/peer-loopback.log)" >&2
    while IFS= read -r line; do rows_net+=("${line#RESULT|}"); done < <(grep '^RESULT|' "$logs/peer-loopback.log")
    index=0
    for nic in virtio-net e1000; do
        guest_port=$((port_base + index * 2))
        host_port=$((guest_port + 1))
        index=$((index + 1))
        backend="dgram,local.type=inet,local.host=127.0.0.1,local.port=$guest_port,remote.type=inet,remote.host=127.0.0.1,remote.port=$host_port"
        echo "==> frames: unikernel, $nic (-M pc, TCG, -netdev dgram)"
        "$bin/rumprun-cli" run qemu -i --timeout $((seconds * 20 + 400)) --machine pc -M "$memory" -I "net0,$nic,$backend" "$image" -- net \
            >"$logs/unikernel-$nic.log" 2>&1 &
        pids+=($!)
        guest=$!
        run_peer "unikernel $nic" "$logs/peer-unikernel-$nic.log"
        status=0
        wait "$guest" || status=$?
        grep '^bench:' "$logs/unikernel-$nic.log" | sed 's/^/    /'
        [ "$status" = 0 ] || echo "error: the unikernel ($nic) ended with status $status (log: $logs/unikernel-$nic.log)" >&2
        while IFS= read -r line; do rows_net+=("${line#RESULT|}"); done < <(grep '^RESULT|' "$logs/peer-unikernel-$nic.log")

        if [ "$linux" = 1 ]; then
            echo "==> frames: Linux guest, $nic (netbench on AF_PACKET)"
            model=$([ $nic = e1000 ] && echo e1000 || echo virtio-net-pci)
            run_linux "$logs/linux-$nic.log" net -netdev "$backend,id=net0" -device "$model,netdev=net0,mac=52:54:00:12:34:56"
            run_peer "Linux guest $nic" "$logs/peer-linux-$nic.log"
            wait "$(cat "$logs/last-linux-pid")" || true
            tr -d '\r' <"$logs/linux-$nic.log" | grep '^netbench:' | sed 's/^/    /' || true
            while IFS= read -r line; do rows_net+=("${line#RESULT|}"); done < <(grep '^RESULT|' "$logs/peer-linux-$nic.log")
        fi
    done
fi

{
    echo "Drivers benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $load_before at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), -M pc, TCG; unikernel $memory MiB, Linux guest $linux_memory MiB${kernel_package:+ ($kernel_package)}"
    if [ ${#rows_blk[@]} -gt 0 ]; then
        echo
        echo "virtio-blk, 4 KiB requests, ${seconds}s per pattern (writes include a final flush/fsync), raw image, QEMU cache=writeback (its default)"
        echo
        echo "| who | pattern | depth | requests | IOPS | MiB/s |"
        echo "|---|---|---|---|---|---|"
        for row in "${rows_blk[@]}"; do echo "| ${row//|/ | } |"; done
        for note in "${notes[@]}"; do echo; echo "$note"; done
    fi
    if [ ${#rows_net[@]} -gt 0 ]; then
        echo
        echo "Frames, ${seconds}s per size and direction, -netdev dgram on 127.0.0.1, peer.py (Python) as the host end."
        echo "'sender' counts frames handed to the driver (guest transmit) or to sendto (peer), 'receiver' those that arrived;"
        echo "rates are frames/s over the sender's sending time and the receiver's first-to-last-frame time."
        echo
        echo "| who | direction | size | sender frames | sender frames/s | receiver frames | receiver frames/s | lost | notes |"
        echo "|---|---|---|---|---|---|---|---|---|"
        for row in "${rows_net[@]}"; do
            IFS='|' read -r who direction size gframes grate hframes hrate lost extra <<<"$row"
            case "$direction" in
                "guest transmit") echo "| $who | guest → host | $size | $gframes | $grate | $hframes | $hrate | $lost | $extra |" ;;
                "guest receive") echo "| $who | host → guest | $size | $hframes | $hrate | $gframes | $grate | $lost | $extra |" ;;
                *) echo "| $who (baseline, no QEMU) | $direction | $size | $gframes | $grate | $hframes | $hrate | $lost | $extra |" ;;
            esac
        done
    fi
} | tee "$results"
