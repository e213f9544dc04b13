#!/bin/sh
# dump-qemu-tables.sh MACHINE SMP OUT.bin: boots QEMU (TCG, 64 MiB, no boot device)
# for 4 s so the firmware (SeaBIOS for pc/q35, qboot for microvm) installs its
# ACPI and MP tables, saves guest RAM through the monitor (pmemsave) and
# extracts the tables with extract-tables.py. Example:
#   sh dump-qemu-tables.sh pc 2,maxcpus=4 qemu-7.2-pc-smp2-max4.bin
set -e
here=$(dirname "$0")
work=$(mktemp -d)
m=$1; n=$2; out=$3; dump=$work/memory.bin
sock=$work/monitor.sock
rm -f $sock
qemu-system-x86_64 -M $m -smp $n -m 64M -display none -serial none -parallel none -net none -S -monitor unix:$sock,server,nowait -accel tcg &
pid=$!
sleep 1
python3 - "$sock" "$dump" <<'PY'
import socket,sys,time
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def cmd(c):
    s.sendall((c+"\n").encode()); time.sleep(0.5)
    try:
        s.settimeout(0.5); print(s.recv(65536).decode(errors="replace")[-200:])
    except Exception: pass
cmd("cont"); time.sleep(4)
cmd("stop")
cmd("pmemsave 0 0x4000000 \"%s\"" % sys.argv[2]); time.sleep(2)
cmd("quit")
PY
wait $pid
python3 "$here/extract-tables.py" "$dump" "$out"
rm -rf "$work"
