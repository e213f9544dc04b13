// appio: exercises the Rumprun application I/O API against real peers:
// StorageDevice (typed bounds and alignment errors, writes from several
// threads at once, a transfer split across bounce-buffer chunks, read-back)
// and Network (TCP connect to a host echo server from several threads,
// connection refused, UDP send/receive, a receive timeout). The host side
// is Tests/IntegrationTests/AppIOTests.swift; peers are reached through
// QEMU's user network at 10.0.2.2. Ports come from the environment:
// APPIO_TCP_PORT, APPIO_UDP_PORT, APPIO_CLOSED_PORT; APPIO_POLLED=1 runs
// the disk and the NIC without interrupts. Exit 0 when every check passed,
// 1 otherwise.
import NetStack
import Rumprun

var failures = 0
func check(_ ok: Bool, _ label: String) {
    print("appio: \(label): \(ok ? "ok" : "FAILED")")
    if !ok { failures += 1 }
}

func port(_ name: String) -> UInt16 {
    guard let text = Rumprun.environment(name), let value = Int(text), value > 0, value < 65536 else {
        print("appio: \(name) not set")
        Rumprun.exit(2)
    }
    return UInt16(value)
}

/// A recognisable byte for sector `sector`, offset `offset`, writer `writer`.
func pattern(_ sector: UInt64, _ offset: Int, _ writer: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: Int(sector) &* 31 &+ offset &* 7 &+ writer &* 101)
}

// MARK: Storage

let polled = Rumprun.environment("APPIO_POLLED").map { $0.utf8.elementsEqual("1".utf8) } ?? false
let disk: StorageDevice
do throws(StorageError) { disk = try StorageDevice.open("blk0", interrupts: !polled) } catch {
    print("appio: \(error.description)")
    Rumprun.exit(2)
}
print("appio: disk \(disk.sectorCount) sectors, \(disk.interruptMode.map { "\($0)" } ?? "polled")")
do throws(StorageError) {
    _ = try StorageDevice.open("blk0")
    check(false, "second open refused")
} catch {
    check(error == .alreadyOpen(tag: "blk0"), "second open refused")
}
do throws(StorageError) {
    _ = try StorageDevice.open("nosuchdisk")
    check(false, "unknown tag refused")
} catch {
    if case .notConfigured = error { check(true, "unknown tag refused") } else { check(false, "unknown tag refused") }
}
do throws(StorageError) {
    try disk.write(at: 100, [UInt8](repeating: 1, count: 512))
    check(false, "misaligned offset refused")
} catch {
    check(error == .misaligned(offset: 100, length: 512, sectorSize: 512), "misaligned offset refused")
}
do throws(StorageError) {
    _ = try disk.read(at: 0, length: 700)
    check(false, "misaligned length refused")
} catch {
    check(error == .misaligned(offset: 0, length: 700, sectorSize: 512), "misaligned length refused")
}
do throws(StorageError) {
    _ = try disk.read(at: disk.capacity - 512, length: 1024)
    check(false, "read past the end refused")
} catch {
    check(error == .outOfRange(offset: disk.capacity - 512, length: 1024, capacity: disk.capacity), "read past the end refused")
}

// Four writers, each its own 64-sector region, eight 8-sector writes each.
var writers: [Thread] = []
for writer in 0..<4 {
    let thread = Thread.spawn(name: "writer") {
        for piece in 0..<8 {
            let first = UInt64(writer * 64 + piece * 8)
            var bytes = [UInt8](repeating: 0, count: 8 * 512)
            for index in bytes.indices { bytes[index] = pattern(first + UInt64(index / 512), index % 512, writer) }
            do throws(StorageError) { try disk.write(at: first * 512, bytes) } catch { return 1 }
        }
        return 0
    }
    if let thread { writers.append(thread) }
}
var writerFailures = 0
for thread in writers { writerFailures += thread.join() }
check(writers.count == 4 && writerFailures == 0, "four threads wrote their regions")
// One transfer larger than the bounce buffer (split into chunks).
let large = (0..<(160 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
do throws(StorageError) {
    try disk.write(at: 1024 * 512, large)
    try disk.flush()
    var intact = true
    for writer in 0..<4 {
        let bytes = try disk.read(at: UInt64(writer * 64) * 512, length: 64 * 512)
        for index in bytes.indices where bytes[index] != pattern(UInt64(writer * 64 + index / 512), index % 512, writer) {
            intact = false
            break
        }
    }
    check(intact, "every region reads back intact")
    check(try disk.read(at: 1024 * 512, length: large.count) == large, "a 160 KiB transfer reads back intact")
} catch {
    print("appio: disk: \(error.description)")
    check(false, "disk read-back")
}
print("appio: disk requests \(disk.requestCount), interrupts \(disk.interruptCount > 0 ? "counted" : "none")")

// MARK: Network

let network: Network
do throws(NetworkError) { network = try Network.start(interrupts: !polled) } catch {
    print("appio: \(error.description)")
    Rumprun.exit(3)
}
let host = IPv4Address(10, 0, 2, 2)
let tcpPort = port("APPIO_TCP_PORT")
let udpPort = port("APPIO_UDP_PORT")
let closedPort = port("APPIO_CLOSED_PORT")

/// Connects to the host's echo server, sends `line`, reads to end of stream.
func exchange(_ line: String) -> Result<[UInt8], NetworkError> {
    Result { () throws(NetworkError) in
        let stream = try network.connect(to: host, port: tcpPort, timeout: 30_000_000_000)
        try stream.write(line)
        try stream.shutdown()
        var received: [UInt8] = []
        while true {
            let bytes = try stream.read(maximumCount: 1024, timeout: 30_000_000_000)
            if bytes.isEmpty { break }
            received += bytes
        }
        stream.close()
        return received
    }
}

switch exchange("hello from the guest\n") {
case .success(let bytes):
    check(bytes.elementsEqual("echo: hello from the guest\n".utf8), "TCP connect, write, shutdown, read to end of stream")
case .failure(let error):
    print("appio: tcp: \(error.description)")
    check(false, "TCP connect, write, shutdown, read to end of stream")
}

var clients: [Thread] = []
var clientResults = [Bool](repeating: false, count: 3)
for client in 0..<3 {
    if let thread = Thread.spawn(name: "client", { () -> Int in
        if case .success(let bytes) = exchange("client \(client)\n") {
            clientResults[client] = bytes.elementsEqual("echo: client \(client)\n".utf8)
        }
        return 0
    }) {
        clients.append(thread)
    }
}
for thread in clients { _ = thread.join() }
check(clients.count == 3 && clientResults.allSatisfy { $0 }, "three threads exchange over TCP at once")

do throws(NetworkError) {
    _ = try network.connect(to: host, port: closedPort, timeout: 30_000_000_000)
    check(false, "connecting to a closed port is refused")
} catch {
    check(error == .connectionRefused, "connecting to a closed port is refused (\(error.description))")
}

do throws(NetworkError) {
    let socket = try network.bindUDP()
    let start = Clock.monotonic
    do throws(NetworkError) {
        _ = try socket.receive(timeout: 200_000_000)
        check(false, "UDP receive times out")
    } catch {
        check(error == .timedOut && Clock.monotonic - start >= 200_000_000, "UDP receive times out")
    }
    try socket.send(Array("ping".utf8), to: host, port: udpPort)
    let reply = try socket.receive(timeout: 30_000_000_000)
    check(reply.payload.elementsEqual("pong".utf8) && reply.source.port == udpPort, "UDP send and receive")
    socket.close()
} catch {
    print("appio: udp: \(error.description)")
    check(false, "UDP send and receive")
}
print("appio: network \(network.interfaces[0].interruptMode.map { "\($0)" } ?? "polled"), interrupts \(network.interruptWakeups > 0 ? "counted" : "none")")

network.stop(linger: 200_000_000)
do throws(StorageError) { try disk.close() } catch { check(false, "disk close") }
print("appio: \(failures) failures")
Rumprun.exit(failures == 0 ? 0 : 1)
