#!/usr/bin/env python3
"""Host peer of the drivers benchmark (Benchmarks/drivers/run.sh).

QEMU's `-netdev dgram` backend carries each Ethernet frame as one UDP datagram
between 127.0.0.1:GUEST_PORT (QEMU) and 127.0.0.1:HOST_PORT (this peer).

  peer.py guest --guest-port G --host-port H --seconds S --sizes 60,1514 --label NIC
      drives the benchmark guest (protocol in Benchmarks/drivers/guest/main.swift):
      for each size, the guest transmits for S seconds while the peer counts
      what arrives, then the peer transmits for S seconds while the guest counts.
  peer.py loopback --seconds S --sizes 60,1514
      the baseline: the same sender and receiver code, peer to peer over
      loopback UDP without QEMU, i.e. what the peer itself can push and take.

Result lines start with "RESULT|" (fields separated by "|"); run.sh makes the table.
"""
import argparse
import os
import socket
import struct
import sys
import time

HOST_MAC = bytes([0x02, 0, 0, 0, 0, 0x01])
GUEST_MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])  # rumprun-cli's first -I
ETHER_TYPE = b"\x88\xb5"
DATA = 0x10


def make_socket(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            break
        except OSError:
            continue
    sock.bind(("127.0.0.1", port))
    return sock


def control(command, size=0, milliseconds=0, test=0):
    """A command frame; `test` numbers transmit/receive commands so that the
    guest answers a repeated command instead of running the test again."""
    frame = GUEST_MAC + HOST_MAC + ETHER_TYPE + bytes([command]) + struct.pack(">HIH", size, milliseconds, test)
    return frame + bytes(60 - len(frame))


def data_frame(size, destination=GUEST_MAC):
    frame = bytearray(destination + HOST_MAC + ETHER_TYPE + bytes([DATA]) + bytes(4))
    frame += bytes((index & 0xFF) for index in range(len(frame), size))
    return frame


def blast(sock, address, size, seconds, destination=GUEST_MAC):
    """Sends DATA frames of `size` bytes to `address` for `seconds`; (frames, elapsed)."""
    frame = data_frame(size, destination)
    sent = 0
    send = sock.sendto
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(64):
            struct.pack_into(">I", frame, 15, sent & 0xFFFFFFFF)
            try:
                send(frame, address)
                sent += 1
            except (BlockingIOError, OSError):
                pass
        now = time.perf_counter()
    return sent, now - start


def count_frames(sock, size, idle, overall, started=None):
    """Counts DATA frames of `size` until `idle` seconds pass without one
    (after at least one arrived, or after `overall` seconds in all).
    (frames of that size, other DATA frames, first→last seconds, control frames seen)."""
    buffer = bytearray(2048)
    view = memoryview(buffer)
    frames = other = 0
    first = last = None
    controls = []
    sock.settimeout(idle)
    begin = started or time.perf_counter()
    receive = sock.recv_into
    clock = time.perf_counter
    while True:
        try:
            length = receive(view)
        except socket.timeout:
            if first is not None or clock() - begin > overall:
                break
            continue
        if length >= 15 and buffer[12] == 0x88 and buffer[13] == 0xB5:
            if buffer[14] == DATA:
                now = clock()
                if first is None:
                    first = now
                last = now
                if length == size:
                    frames += 1
                else:
                    other += 1
            else:
                controls.append(bytes(buffer[:length]))
        if first is not None and clock() - begin > overall:
            break
    return frames, other, (last - first) if first is not None else 0.0, controls


def drain(sock):
    """Drops whatever is queued (late answers to repeated commands)."""
    sock.setblocking(False)
    try:
        while True:
            sock.recv(2048)
    except (BlockingIOError, InterruptedError):
        pass
    sock.setblocking(True)


def request(sock, address, frame, answer, attempts=600, interval=0.5):
    """Sends `frame` until a control frame with command `answer` comes back; that frame."""
    drain(sock)
    sock.settimeout(interval)
    for _ in range(attempts):
        sock.sendto(frame, address)
        deadline = time.perf_counter() + interval
        while time.perf_counter() < deadline:
            try:
                reply = sock.recv(2048)
            except socket.timeout:
                break
            if len(reply) >= 15 and reply[12:14] == ETHER_TYPE and reply[14] == answer:
                return reply
    raise SystemExit(f"peer: no answer 0x{answer:02x} to command 0x{frame[14]:02x} from the guest")


def report(sock, address):
    reply = request(sock, address, control(4), 0x84, attempts=120)
    frames, nanoseconds, wrong, retries = struct.unpack_from(">QQQQ", reply, 15)
    return frames, nanoseconds, wrong, retries


def rate(frames, seconds):
    return frames / seconds if seconds > 0 else 0.0


def run_guest(arguments):
    sock = make_socket(arguments.host_port)
    address = ("127.0.0.1", arguments.guest_port)
    label = arguments.label
    request(sock, address, control(1), 0x81, attempts=int(arguments.boot_timeout / 0.5))
    print(f"peer: {label}: guest answered", flush=True)
    test = 0
    for size in arguments.sizes:
        milliseconds = int(arguments.seconds * 1000)
        test += 1
        # Guest → host.
        drain(sock)
        sock.settimeout(0.5)
        acknowledged = False
        received = other = 0
        span = 0.0
        for _ in range(120):
            sock.sendto(control(2, size, milliseconds, test), address)
            deadline = time.perf_counter() + 0.5
            while not acknowledged and time.perf_counter() < deadline:
                try:
                    reply = sock.recv(2048)
                except socket.timeout:
                    break
                acknowledged = len(reply) >= 15 and reply[12:14] == ETHER_TYPE and reply[14] in (0x82, DATA)
            if acknowledged:
                break
        if not acknowledged:
            raise SystemExit(f"peer: {label}: the guest did not start transmitting")
        started = time.perf_counter()
        received, other, span, _ = count_frames(sock, size, idle=2.0, overall=arguments.seconds + 60, started=started)
        guest_frames, guest_ns, _, retries = report(sock, address)
        guest_seconds = guest_ns / 1e9
        print(
            f"RESULT|{label}|guest transmit|{size}|{guest_frames}|{rate(guest_frames, guest_seconds):.0f}"
            f"|{received}|{rate(received, span):.0f}|{guest_frames - received}|ring-full retries {retries}",
            flush=True,
        )
        # Host → guest.
        test += 1
        request(sock, address, control(3, size, 0, test), 0x82)
        sent, elapsed = blast(sock, address, size, arguments.seconds)
        time.sleep(1.0)
        guest_frames, guest_ns, wrong, _ = report(sock, address)
        print(
            f"RESULT|{label}|guest receive|{size}|{guest_frames}|{rate(guest_frames, guest_ns / 1e9):.0f}"
            f"|{sent}|{rate(sent, elapsed):.0f}|{sent - guest_frames}|other sizes {wrong}",
            flush=True,
        )
    for _ in range(5):
        sock.sendto(control(5), address)
        time.sleep(0.1)


def run_loopback(arguments):
    for size in arguments.sizes:
        receiver = make_socket(0)
        port = receiver.getsockname()[1]
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            receiver.close()
            os.close(reader)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            time.sleep(0.3)
            sent, elapsed = blast(sender, ("127.0.0.1", port), size, arguments.seconds, destination=HOST_MAC)
            os.write(writer, f"{sent} {elapsed}".encode())
            os._exit(0)
        os.close(writer)
        received, other, span, _ = count_frames(receiver, size, idle=1.0, overall=arguments.seconds + 30)
        os.waitpid(pid, 0)
        sent_text = os.read(reader, 100).decode().split()
        os.close(reader)
        receiver.close()
        sent, elapsed = int(sent_text[0]), float(sent_text[1])
        print(
            f"RESULT|loopback|peer to peer|{size}|{sent}|{rate(sent, elapsed):.0f}|{received}|{rate(received, span):.0f}"
            f"|{sent - received}|",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    guest = sub.add_parser("guest")
    guest.add_argument("--guest-port", type=int, required=True)
    guest.add_argument("--host-port", type=int, required=True)
    guest.add_argument("--label", required=True)
    guest.add_argument("--boot-timeout", type=float, default=300)
    loop = sub.add_parser("loopback")
    for p in (guest, loop):
        p.add_argument("--seconds", type=float, default=3)
        p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[60, 1514])
    arguments = parser.parse_args()
    for size in arguments.sizes:
        if not 60 <= size <= 1514:
            parser.error(f"frame size {size} outside 60…1514")
    if arguments.mode == "guest":
        run_guest(arguments)
    else:
        run_loopback(arguments)


if __name__ == "__main__":
    main()
