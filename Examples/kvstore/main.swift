// kvstore: a persistent key-value server unikernel over the Rumprun
// application API: StorageDevice (the launcher's first -b disk) holds an
// append-only log of checksummed records (RecordLog.swift), recovered at
// boot; Network serves HTTP/1.1 (HTTPRequest.swift) with a thread per
// connection:
//   PUT /k/KEY (body = value), GET /k/KEY, DELETE /k/KEY, GET /stats, /quit
// Run it with:
//   rumprun-cli run qemu -i --machine pc -b disk.img \
//     -I net0,virtio-net,user,hostfwd=tcp:127.0.0.1:8080-:80 -W net0,inet,dhcp kvstore.img
//   curl -T file http://127.0.0.1:8080/k/name; curl http://127.0.0.1:8080/k/name
// Exit status: 0 after /quit, 2 without a usable disk, 3 without a network.
import NetStack
import Rumprun

/// The log's sectors on a StorageDevice.
struct DiskSectors: SectorStore {
    let device: StorageDevice
    var sectorSize: Int { device.sectorSize }
    var sectorCount: UInt64 { device.sectorCount }

    func read(sector: UInt64, count: Int) throws(KVStoreError) -> [UInt8] {
        do throws(StorageError) {
            return try device.read(at: sector * UInt64(sectorSize), length: count * sectorSize)
        } catch {
            throw .disk(error.description)
        }
    }

    func write(sector: UInt64, _ bytes: [UInt8]) throws(KVStoreError) {
        do throws(StorageError) { try device.write(at: sector * UInt64(sectorSize), bytes) } catch { throw .disk(error.description) }
    }

    func flush() throws(KVStoreError) {
        do throws(StorageError) { try device.flush() } catch { throw .disk(error.description) }
    }
}

func describe(_ error: KVStoreError) -> String {
    switch error {
    case .disk(let text): return "disk: \(text)"
    case .notAStore: return "the disk holds something else (no kvstore superblock in sector 0)"
    case .unsupportedSectorSize(let size): return "unsupported sector size \(size)"
    case .full(let needed, let available): return "disk full (\(needed) bytes needed, \(available) free)"
    case .emptyKey: return "empty key"
    case .keyTooLong(let length): return "key of \(length) bytes is too long"
    case .valueTooLarge(let length): return "value of \(length) bytes is too large"
    case .corrupt(let sector): return "record at sector \(sector) failed its checksum"
    }
}

func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

// MARK: Disk

let diskTag = Rumprun.environment("KVSTORE_DISK") ?? StorageDevice.configuredTags.first ?? "blk0"
let disk: StorageDevice
do throws(StorageError) {
    disk = try StorageDevice.open(diskTag)
} catch {
    print("kvstore: \(error.description)")
    Rumprun.exit(2)
}
print("kvstore: disk \(disk.tag): \(disk.sectorCount) sectors of \(disk.sectorSize) bytes, completions \(disk.interruptMode.map { "by \($0) interrupt" } ?? "polled")")

let log = RecordLog(store: DiskSectors(device: disk))
do throws(KVStoreError) {
    let report = try log.recover()
    if report.formatted { print("kvstore: blank disk, formatted") }
    for damage in report.damage {
        switch damage {
        case let .payloadChecksum(sector, sectors, key):
            print("kvstore: damaged record at sector \(sector) (\(sectors) sectors, key '\(text(key))'): checksum mismatch, skipped")
        case let .unreadableSectors(first, count):
            print("kvstore: damaged sectors \(first)..<\(first + count): no valid record header, skipped")
        }
    }
    print("kvstore: recovered \(report.records) records, \(log.keyCount) keys, \(report.damage.count) damaged, log ends at sector \(report.appendSector)")
} catch {
    print("kvstore: \(describe(error))")
    Rumprun.exit(2)
}
let storeLock = Mutex()

// MARK: Network

let network: Network
do throws(NetworkError) {
    network = try Network.start()
} catch {
    print("kvstore: \(error.description)")
    try? disk.close()
    Rumprun.exit(3)
}
for interface in network.interfaces {
    print("kvstore: \(interface.tag) \(interface.driver) \(interface.address.address.description)/\(interface.address.prefixLength)\(interface.viaDHCP ? " (DHCP)" : ""), \(interface.interruptMode.map { "\($0) interrupts" } ?? "polled")")
}
let port = UInt16(Rumprun.environment("KVSTORE_PORT").flatMap { Int($0) } ?? 80)
let listener: TCPListener
do throws(NetworkError) {
    listener = try network.listen(port: port, backlog: 32)
} catch {
    print("kvstore: cannot listen on port \(port): \(error.description)")
    Rumprun.exit(3)
}
print("kvstore: listening on port \(port)")

// MARK: Requests

final class Counters {
    var requests = 0
    var activeConnections = 0
    var connections = 0
    var quitting = false
}
let counters = Counters()
let countersLock = Mutex()

func response(_ status: StaticString, body: [UInt8], type: StaticString = "text/plain", keepAlive: Bool, head: Bool = false, extra: String = "") -> [UInt8] {
    let header = "HTTP/1.1 \(status)\r\nServer: swift-rumprun-kvstore\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
    return head ? Array(header.utf8) : Array(header.utf8) + body
}

func statsBody() -> [UInt8] {
    let keys = storeLock.withLock { log.keyCount }
    let (appendSector, free) = storeLock.withLock { (log.appendSector, log.freeBytes) }
    let (requests, connections) = countersLock.withLock { (counters.requests, counters.connections) }
    let s = network.statistics
    let body = "keys \(keys)\nlog_end_sector \(appendSector)\nfree_bytes \(free)\nrequests \(requests)\nconnections \(connections)\n"
        + "disk_requests \(disk.requestCount)\ndisk_failed_requests \(disk.failedRequestCount)\ndisk_interrupts \(disk.interruptCount)\n"
        + "network_interrupt_wakeups \(network.interruptWakeups)\nnetwork_loop_iterations \(network.loopIterations)\n"
        + "tcp_segments_received \(s.tcpSegmentsReceived)\ntcp_segments_sent \(s.tcpSegmentsSent)\n"
    return Array(body.utf8)
}

/// The response to one request, and whether the server should stop.
func handle(_ request: HTTPRequest) -> (bytes: [UInt8], quit: Bool) {
    let keepAlive = request.keepAlive
    let head = request.method == Array("HEAD".utf8)
    switch Route.of(method: request.method, target: request.target) {
    case .get(let key):
        let value: [UInt8]?
        do throws(KVStoreError) { value = try storeLock.withLock { Result { () throws(KVStoreError) in try log.get(key) } }.get() } catch {
            print("kvstore: GET \(text(key)): \(describe(error))")
            return (response("500 Internal Server Error", body: Array("\(describe(error))\n".utf8), keepAlive: keepAlive), false)
        }
        guard let value else { return (response("404 Not Found", body: Array("no such key\n".utf8), keepAlive: keepAlive, head: head), false) }
        return (response("200 OK", body: value, type: "application/octet-stream", keepAlive: keepAlive, head: head), false)
    case .put(let key):
        let isNew: Bool
        do throws(KVStoreError) { isNew = try storeLock.withLock { Result { () throws(KVStoreError) in try log.put(key, request.body) } }.get() } catch {
            print("kvstore: PUT \(text(key)): \(describe(error))")
            let status: StaticString
            switch error {
            case .full: status = "507 Insufficient Storage"
            case .valueTooLarge: status = "413 Content Too Large"
            default: status = "500 Internal Server Error"
            }
            return (response(status, body: Array("\(describe(error))\n".utf8), keepAlive: keepAlive), false)
        }
        return (response(isNew ? "201 Created" : "200 OK", body: Array("stored \(request.body.count) bytes\n".utf8), keepAlive: keepAlive), false)
    case .delete(let key):
        let existed: Bool
        do throws(KVStoreError) { existed = try storeLock.withLock { Result { () throws(KVStoreError) in try log.delete(key) } }.get() } catch {
            print("kvstore: DELETE \(text(key)): \(describe(error))")
            return (response("500 Internal Server Error", body: Array("\(describe(error))\n".utf8), keepAlive: keepAlive), false)
        }
        return existed
            ? (response("200 OK", body: Array("deleted\n".utf8), keepAlive: keepAlive), false)
            : (response("404 Not Found", body: Array("no such key\n".utf8), keepAlive: keepAlive), false)
    case .stats:
        return (response("200 OK", body: statsBody(), keepAlive: keepAlive, head: head), false)
    case .quit:
        return (response("200 OK", body: Array("bye\n".utf8), keepAlive: false), true)
    case .badKey:
        return (response("400 Bad Request", body: Array("keys are 1-250 characters of A-Z a-z 0-9 - . _ ~\n".utf8), keepAlive: keepAlive), false)
    case .notFound:
        return (response("404 Not Found", body: Array("not found\n".utf8), keepAlive: keepAlive), false)
    case .methodNotAllowed(let allowed):
        return (response("405 Method Not Allowed", body: Array("method not allowed\n".utf8), keepAlive: keepAlive, extra: "Allow: \(allowed)\r\n"), false)
    }
}

/// One connection: requests in order until the client closes, asks to
/// close, or is idle for 30 s.
func serve(_ stream: TCPStream) {
    try? stream.setNoDelay(true)
    var buffer: [UInt8] = []
    var continueSent = false
    serving: while true {
        switch HTTPParser.parse(buffer, maximumBody: Record.maximumValueLength) {
        case .incomplete(let expectsContinue):
            if expectsContinue && !continueSent {
                continueSent = true
                do throws(NetworkError) { try stream.write("HTTP/1.1 100 Continue\r\n\r\n") } catch { break serving }
            }
            do throws(NetworkError) {
                let bytes = try stream.read(maximumCount: 16384, timeout: 30_000_000_000)
                if bytes.isEmpty { break serving }
                buffer += bytes
            } catch {
                break serving
            }
        case .invalid(let status, let reason):
            let body = Array("\(reason)\n".utf8)
            let line: StaticString
            switch status {
            case 413: line = "413 Content Too Large"
            case 431: line = "431 Request Header Fields Too Large"
            case 501: line = "501 Not Implemented"
            case 505: line = "505 HTTP Version Not Supported"
            default: line = "400 Bad Request"
            }
            try? stream.write(response(line, body: body, keepAlive: false))
            break serving
        case .request(let request, let consumed):
            buffer.removeFirst(consumed)
            continueSent = false
            let answer = handle(request)
            countersLock.withLock { counters.requests += 1 }
            do throws(NetworkError) { try stream.write(answer.bytes, timeout: 60_000_000_000) } catch { break serving }
            if answer.quit {
                countersLock.withLock { counters.quitting = true }
                break serving
            }
            if !request.keepAlive { break serving }
        }
    }
    try? stream.shutdown()
    stream.close()
}

// MARK: Accept loop

while !countersLock.withLock({ counters.quitting }) {
    let stream: TCPStream
    do throws(NetworkError) {
        stream = try listener.accept(timeout: 200_000_000)
    } catch {
        if case .timedOut = error { continue }
        print("kvstore: accept: \(error.description)")
        break
    }
    countersLock.withLock {
        counters.activeConnections += 1
        counters.connections += 1
    }
    let worker = Thread.spawn(name: "kvstore-connection", stackSize: 128 * 1024) {
        serve(stream)
        countersLock.withLock { counters.activeConnections -= 1 }
        return 0
    }
    if let worker {
        worker.detach()
    } else {
        print("kvstore: no memory for a connection thread")
        stream.abort()
        countersLock.withLock { counters.activeConnections -= 1 }
    }
}

// Let connections in progress finish (at most 5 s), then the FINs go out.
listener.close()
let drainDeadline = Clock.monotonic + 5_000_000_000
while countersLock.withLock({ counters.activeConnections }) > 0 && Clock.monotonic < drainDeadline {
    Thread.sleep(nanoseconds: 10_000_000)
}
let served = countersLock.withLock { counters.requests }
network.stop(linger: 500_000_000)
do throws(StorageError) { try disk.close() } catch {
    print("kvstore: closing the disk: \(error.description)")
    Rumprun.exit(1)
}
print("kvstore: served \(served) requests, \(log.keyCount) keys stored, exiting")
Rumprun.exit(0)
