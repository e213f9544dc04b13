// Integration: networking guests under QEMU (TCG) with real peers: the httpd
// and udp-echo unikernels (NetStack on virtio-net or e1000) through QEMU's
// user network with host forwards, and raw Ethernet frames through a QEMU
// dgram backend on 127.0.0.1 with a peer written here.
import Foundation
import Testing
import UnikernelBake

#if canImport(Glibc)
    import Glibc
#endif

extension Integration {
    static let udpEcho: Result<String, Error> = Result { try bake("Examples/udp-echo").path }
    static let frames: Result<String, Error> = Result { try bake("Tests/Guests/frames").path }

    /// A free 127.0.0.1 port for this test process, named by `offset` (the
    /// same offset gives the same port for the whole run). See `HostPorts`.
    static func port(_ offset: Int) -> Int { HostPorts.shared.port(named: offset) }

    /// GETs `url` with curl; the body's bytes, nil on failure.
    static func curlBytes(_ url: String) -> [UInt8]? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = ["-s", "-f", "-m", "120", url]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return process.terminationStatus == 0 ? [UInt8](data) : nil
    }

    /// Starts rumprun-cli in the background; the console is collected
    /// until the guest ends.
    static func start(_ arguments: [String]) throws -> BackgroundGuest {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try tool("rumprun-cli"))
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let box = DataBox()
        let reader = Thread { box.data = out.fileHandleForReading.readDataToEndOfFile(); box.done.signal() }
        reader.start()
        return BackgroundGuest(process: process, box: box)
    }
}

/// Host ports for QEMU forwards and the peers written here. They used to be
/// `20000 + (pid % 2000) * 8 + offset`, unchecked: that reached into
/// Linux's ephemeral range (32768 up), where any outgoing connection of this
/// machine (curl, QEMU's user network connecting to our servers, the other
/// test runs on the machine) may hold the port, and offsets past 7 ran into
/// the next process's block. Now a port comes from below the ephemeral
/// range and only if both a TCP and a UDP bind to it on 127.0.0.1 succeed
/// right now (no listener, no bound socket, no TIME_WAIT), and is never
/// handed out twice in one process. Another process may still bind it
/// between this check and QEMU's bind; below the ephemeral range only an
/// explicit bind can, which makes that window small.
final class HostPorts: @unchecked Sendable {
    static let shared = HostPorts()

    private let lock = NSLock()
    private var named: [Int: Int] = [:]
    private var handedOut: Set<Int> = []
    private let lowest = 20000
    private let end: Int  // exclusive: the first ephemeral port
    private var cursor: Int

    private init() {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let ephemeralStart = range.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
        end = max(min(ephemeralStart, 65536), lowest + 1000)
        // Processes start in different places, so they rarely probe the same ports.
        cursor = lowest + Int(getpid()) * 97 % (end - lowest)
    }

    func port(named name: Int) -> Int {
        lock.withLock {
            if let port = named[name] { return port }
            for _ in 0..<(end - lowest) {
                let candidate = cursor
                cursor = cursor + 1 == end ? lowest : cursor + 1
                if handedOut.contains(candidate) || !Self.isFree(candidate) { continue }
                handedOut.insert(candidate)
                named[name] = candidate
                return candidate
            }
            preconditionFailure("no free port on 127.0.0.1 in \(lowest)..<\(end)")
        }
    }

    /// Whether a TCP and a UDP socket can both bind `port` on 127.0.0.1.
    static func isFree(_ port: Int) -> Bool {
        for type in [Int32(SOCK_STREAM.rawValue), Int32(SOCK_DGRAM.rawValue)] {
            let descriptor = socket(AF_INET, type, 0)
            guard descriptor >= 0 else { return false }
            defer { close(descriptor) }
            var address = UDPPeer.loopback(port)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if bound != 0 { return false }
        }
        return true
    }
}

/// A guest started with `Integration.start`.
final class BackgroundGuest {
    let process: Process
    let box: DataBox

    init(process: Process, box: DataBox) {
        self.process = process
        self.box = box
    }

    /// Waits for the guest to end; its console and exit status.
    func finish() -> (status: Int32, console: String) {
        box.done.wait()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: box.data, as: UTF8.self).replacingOccurrences(of: "\r", with: ""))
    }

    /// Ends a guest the test did not finish (a failed #require, a guest
    /// that never answered). SIGTERM to rumprun-cli alone left QEMU running:
    /// rumprun-cli dies without taking its QEMU child along, and the orphan
    /// (httpd, kvstore and frames guests wait for the host forever) then
    /// spun on beside every later test. QEMU, rumprun-cli's child, is killed
    /// first; rumprun-cli then returns by itself.
    deinit {
        guard process.isRunning else { return }
        let parent = process.processIdentifier
        for child in Self.children(of: parent) { kill(child, SIGKILL) }
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(parent, SIGKILL) }
    }

    /// The process ids whose parent is `parent` (from /proc).
    static func children(of parent: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { return false }
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == parent
        }
    }
}

/// A UDP socket bound to 127.0.0.1 with a receive timeout.
final class UDPPeer {
    let descriptor: Int32

    init(port: Int = 0, timeout: Double) throws {
        descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(descriptor >= 0)
        var address = UDPPeer.loopback(port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0, "bind 127.0.0.1:\(port): errno \(errno)")
        var interval = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 1 << 20
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(descriptor) }

    static func loopback(_ port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    func send(_ bytes: [UInt8], to port: Int) {
        var address = UDPPeer.loopback(port)
        _ = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// The next datagram, or nil after the timeout.
    func receive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        return count < 0 ? nil : Array(buffer[0..<count])
    }
}

/// The httpd example: a NIC driver and NetStack in a guest, with curl and
/// Linux's stack (through QEMU's user network) as the peer.
@Suite(.serialized) struct HTTPServerTests {
    @Test(arguments: [
        ("virtio-net", "static,10.0.2.15/24,10.0.2.2"), ("virtio-net", "dhcp"), ("e1000", "static,10.0.2.15/24,10.0.2.2"), ("e1000", "dhcp"),
    ])
    func curlGetsPagesFromTheUnikernel(driver: String, addressing: String) throws {
        let image = try Integration.httpd.get()
        let port = Integration.port(0)
        let guest = try Integration.start([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc",
            "-I", "net0,\(driver),user,hostfwd=tcp:127.0.0.1:\(port)-:80", "-W", "net0,inet,\(addressing)", image,
        ])

        let base = "http://127.0.0.1:\(port)"
        var page: String? = nil
        let deadline = Date().addingTimeInterval(120)
        // The probe is the first counted request (the checks below expect
        // "requests 3" and "served 6"), so it must never give up on a
        // request the guest may already have counted: with curl's 10 s it
        // could, e.g. when QEMU's user network, holding curl's connection,
        // reached the booting guest only with its SYN retransmitted at
        // ~9 s and the answer came after 10 s; the retry was counted too.
        // A probe that fails before the guest listens fails fast (reset).
        while page == nil && Date() < deadline && guest.process.isRunning {
            page = Integration.curl([base + "/"], seconds: 120)
            if page == nil { usleep(200_000) }
        }
        #expect(page == "<!DOCTYPE html>\n<html><body><h1>Hello from a swift-rumprun unikernel</h1></body></html>\n")
        // Two requests on one keep-alive connection, then a 404.
        let both = Integration.curl([base + "/", base + "/stats"]) ?? ""
        #expect(both.hasPrefix("<!DOCTYPE html>"))
        #expect(both.contains("requests 3\n"))
        #expect(both.contains("checksum_errors 0\n"))
        #expect(Integration.curl([base + "/missing"]) == nil)
        // A bulk body (guest → host over many segments) arrives intact.
        let bulk = Integration.curlBytes(base + "/bytes/300000") ?? []
        #expect(bulk.count == 300000)
        #expect(bulk.enumerated().allSatisfy { $0.element == UInt8($0.offset % 251) })
        #expect(Integration.curl([base + "/quit"]) == "bye\n")
        let run = guest.finish()
        #expect(run.console.contains("httpd: \(driver) driver\n"))
        #expect(run.console.contains("httpd: listening on port 80\n"))
        #expect(run.console.contains("httpd: served 6 requests, exiting\n"), "console: \(run.console)")
        if addressing == "dhcp" { #expect(run.console.contains("httpd: DHCP lease 10.0.2.15/24\n")) }
        #expect(run.status == 0)
    }
}

/// The udp-echo example through a QEMU `hostfwd=udp:` forward: datagrams of
/// many sizes up to the MTU (and one that IPv4 fragments) come back byte
/// for byte; "quit" ends the guest with status 0.
@Suite(.serialized) struct UDPEchoTests {
    @Test(arguments: [("virtio-net", "dhcp"), ("e1000", "static,10.0.2.15/24,10.0.2.2")])
    func datagramsComeBackByteExact(driver: String, addressing: String) throws {
        let image = try Integration.udpEcho.get()
        let port = Integration.port(1)
        let guest = try Integration.start([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc",
            "-I", "net0,\(driver),user,hostfwd=udp:127.0.0.1:\(port)-:7", "-W", "net0,inet,\(addressing)", image,
        ])
        let peer = try UDPPeer(timeout: 1)
        var generator = SystemRandomNumberGenerator()

        /// Sends `payload` until its echo comes back (the guest may still be
        /// booting; a datagram may be lost); the echo, or nil after 120 s.
        func echo(_ payload: [UInt8]) -> [UInt8]? {
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline && guest.process.isRunning {
                peer.send(payload, to: port)
                while let reply = peer.receive() {
                    if reply == payload { return reply }
                }
            }
            return nil
        }

        // 1472 is the largest payload in one 1500-byte IPv4 packet; 4000 is
        // sent in three fragments and reassembled on both sides.
        let sizes = [1, 0, 2, 17, 64, 100, 255, 256, 511, 512, 999, 1024, 1200, 1400, 1471, 1472, 1473, 4000]
        var matched = 0
        for size in sizes {
            let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if echo(payload) != nil { matched += 1 } else { Issue.record("no echo for \(size) bytes") }
        }
        #expect(matched == sizes.count)
        #expect(echo(Array("quit".utf8)) == Array("quit".utf8))
        let run = guest.finish()
        #expect(run.console.contains("udp-echo: \(driver) driver\n"))
        #expect(run.console.contains("udp-echo: listening on UDP port 7\n"))
        #expect(run.console.contains(", checksum errors 0, exiting\n"), "console: \(run.console)")
        if addressing == "dhcp" { #expect(run.console.contains("udp-echo: DHCP lease 10.0.2.15/24\n")) }
        #expect(run.status == 0)
    }
}

/// Issue 5: raw Ethernet frames between the guest's drivers and a peer in
/// this process, through `-netdev dgram` (one UDP datagram per frame) on
/// 127.0.0.1. The guest answers ARP for its address and every size from 60
/// to 1514 bytes crosses intact both ways.
@Suite(.serialized) struct RawFrameTests {
    static let hostMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]  // rumprun-cli's first -I

    /// Byte `index` (from 16 on) of a test frame; the guest uses the same rule.
    static func pattern(_ index: Int, size: Int, direction: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: index &* 31 &+ size &* 7 &+ direction &* 101)
    }

    static func testFrame(size: Int, direction: Int, from source: [UInt8], to destination: [UInt8]) -> [UInt8] {
        var frame = destination + source + [0x88, direction == 0 ? 0xB5 : 0xB6, UInt8(size >> 8), UInt8(size & 0xFF)]
        for index in 16..<max(size, 16) { frame.append(pattern(index, size: size, direction: direction)) }
        return frame
    }

    @Test(arguments: ["virtio-net", "e1000"])
    func everyFrameSizeCrossesIntactBothWays(driver: String) throws {
        let image = try Integration.frames.get()
        let guestPort = Integration.port(2)
        let hostPort = Integration.port(3)
        let peer = try UDPPeer(port: hostPort, timeout: 0.5)
        let backend = "dgram,local.type=inet,local.host=127.0.0.1,local.port=\(guestPort),remote.type=inet,remote.host=127.0.0.1,remote.port=\(hostPort)"
        let guest = try Integration.start([
            "run", "qemu", "-i", "--timeout", "600", "--machine", "pc", "-I", "net0,\(driver),\(backend)", "-W", "net0,inet,static,10.0.5.2/24", image,
        ])

        // ARP: who has 10.0.5.2? tell 10.0.5.1 — repeated until the guest is up.
        var request = [UInt8](repeating: 0xFF, count: 6) + Self.hostMAC + [0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]
        request += Self.hostMAC + [10, 0, 5, 1] + [0, 0, 0, 0, 0, 0] + [10, 0, 5, 2]
        request += [UInt8](repeating: 0, count: 60 - request.count)
        var reply: [UInt8]? = nil
        let deadline = Date().addingTimeInterval(180)
        while reply == nil && Date() < deadline && guest.process.isRunning {
            peer.send(request, to: guestPort)
            if let frame = peer.receive(), frame.count >= 42, frame[12] == 0x08, frame[13] == 0x06 { reply = frame }
        }
        let arp = try #require(reply, "no ARP reply")
        #expect(arp.count == 60)
        #expect(Array(arp[0..<6]) == Self.hostMAC)
        #expect(Array(arp[6..<12]) == Self.guestMAC)
        #expect(Array(arp[14..<22]) == [0, 1, 8, 0, 6, 4, 0, 2])  // Ethernet/IPv4 reply
        #expect(Array(arp[22..<32]) == Self.guestMAC + [10, 0, 5, 2])
        #expect(Array(arp[32..<42]) == Self.hostMAC + [10, 0, 5, 1])

        // Every size, stop-and-wait; a frame is sent again only when its
        // answer does not come within the timeout.
        var intact = 0
        var damaged: [Int] = []
        for size in 60...1514 {
            let frame = Self.testFrame(size: size, direction: 0, from: Self.hostMAC, to: Self.guestMAC)
            let expected = Self.testFrame(size: size, direction: 1, from: Self.guestMAC, to: Self.hostMAC)
            var answer: [UInt8]? = nil
            var attempts = 0
            while answer == nil && attempts < 20 && guest.process.isRunning {
                peer.send(frame, to: guestPort)
                attempts += 1
                while answer == nil, let received = peer.receive() {
                    // Skip late answers to earlier frames and ARP replies.
                    guard received.count >= 16, received[12] == 0x88, received[13] == 0xB6 else { continue }
                    guard Int(received[14]) << 8 | Int(received[15]) == size else { continue }
                    answer = received
                }
            }
            if answer == expected { intact += 1 } else { damaged.append(size) }
        }
        #expect(intact == 1455, "sizes not received intact: \(damaged.prefix(20))")
        peer.send(Self.testFrame(size: 0, direction: 0, from: Self.hostMAC, to: Self.guestMAC) + [UInt8](repeating: 0, count: 44), to: guestPort)
        let run = guest.finish()
        #expect(run.console.contains("frames: \(driver) driver, address 10.0.5.2\n"))
        #expect(run.console.contains("frames: 1455 sizes intact, "), "console: \(run.console)")
        #expect(run.console.contains(" 0 bad, "))
        #expect(run.status == 0)
    }
}
