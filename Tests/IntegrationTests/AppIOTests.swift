// Integration: the Rumprun application I/O API (Network, StorageDevice)
// under QEMU (TCG, pc): the kvstore example with curl as the client and a
// host file as its disk, booted twice on the same file (persistence, a
// record damaged between boots), its errors without a disk or a NIC, and
// the appio guest against a TCP echo server and a UDP peer written here.
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

extension Integration {
    static let kvstore: Result<String, Error> = Result { try bake("Examples/kvstore").path }
    static let appio: Result<String, Error> = Result { try bake("Tests/Guests/appio").path }

    /// A zeroed disk file of `megabytes` MiB in the image directory.
    static func blankDisk(megabytes: Int) throws -> String {
        let path = imageDirectory + "/disk-\(UUID().uuidString).img"
        try Data(count: megabytes << 20).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// One curl request: the HTTP status (0 when none arrived) and the body.
    static func request(_ method: String, _ url: String, body: Data? = nil) -> (status: Int, body: Data) {
        let output = imageDirectory + "/curl-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: output) }
        var arguments = ["-s", "-m", "120", "-X", method, "-o", output, "-w", "%{http_code}"]
        if let body {
            let input = output + ".in"
            try? body.write(to: URL(fileURLWithPath: input))
            arguments += ["--data-binary", "@" + input, "-H", "Content-Type: application/octet-stream"]
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = arguments + [url]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return (0, Data()) }
        let code = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: output + ".in")
        let status = Int(String(decoding: code, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        return (status, (try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data())
    }

    /// Waits until `url` answers (the guest is up) or the guest ends.
    static func waitForServer(_ url: String, guest: BackgroundGuest, seconds: Double = 180) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline && guest.process.isRunning {
            if request("GET", url).status == 200 { return true }
            usleep(300_000)
        }
        return false
    }
}

/// Deterministic bytes for a value.
func valueBytes(_ count: Int, seed: UInt8) -> Data { Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }) }

@Suite(.serialized) struct KVStoreServerTests {
    @Test func valuesPersistAcrossBootsAndADamagedRecordIsSkipped() throws {
        let image = try Integration.kvstore.get()
        let disk = try Integration.blankDisk(megabytes: 4)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let port = Integration.port(4)
        let base = "http://127.0.0.1:\(port)"
        let big = valueBytes(3000, seed: 1)  // six sectors
        let victimValue = Data("victim-value-0123456789".utf8)

        // First boot (virtio-net, static address): a blank disk.
        let first = try Integration.start([
            "run", "qemu", "-i", "--timeout", "600", "--machine", "pc", "-b", disk,
            "-I", "net0,virtio-net,user,hostfwd=tcp:127.0.0.1:\(port)-:80", "-W", "net0,inet,static,10.0.2.15/24,10.0.2.2", image,
        ])
        #expect(Integration.waitForServer(base + "/stats", guest: first))
        #expect(Integration.request("PUT", base + "/k/alpha", body: Data("first".utf8)).status == 201)
        #expect(Integration.request("PUT", base + "/k/alpha", body: Data("second".utf8)).status == 200)
        #expect(Integration.request("PUT", base + "/k/big", body: big).status == 201)
        #expect(Integration.request("PUT", base + "/k/beta", body: Data("to be deleted".utf8)).status == 201)
        #expect(Integration.request("PUT", base + "/k/victim", body: victimValue).status == 201)
        #expect(Integration.request("PUT", base + "/k/empty", body: Data()).status == 201)
        // Eight clients at once, each its own key.
        let statuses = ConcurrentResults(count: 8)
        DispatchQueue.concurrentPerform(iterations: 8) { index in
            statuses.set(index, Integration.request("PUT", base + "/k/client\(index)", body: valueBytes(200 + index * 150, seed: UInt8(index))).status)
        }
        #expect(statuses.values == [Int](repeating: 201, count: 8))
        #expect(Integration.request("DELETE", base + "/k/beta").status == 200)
        #expect(Integration.request("DELETE", base + "/k/beta").status == 404)
        #expect(Integration.request("GET", base + "/k/beta").status == 404)
        #expect(Integration.request("GET", base + "/k/bad$key").status == 400)
        let alpha = Integration.request("GET", base + "/k/alpha")
        #expect(alpha.status == 200 && alpha.body == Data("second".utf8))
        #expect(Integration.request("GET", base + "/k/big").body == big)
        for index in 0..<8 {
            #expect(Integration.request("GET", base + "/k/client\(index)").body == valueBytes(200 + index * 150, seed: UInt8(index)))
        }
        #expect(Integration.request("GET", base + "/quit").status == 200)
        let firstRun = first.finish()
        #expect(firstRun.status == 0, "console: \(firstRun.console)")
        #expect(firstRun.console.contains("kvstore: blank disk, formatted\n"))
        #expect(firstRun.console.contains("kvstore: net0 virtio-net 10.0.2.15/24"))
        #expect(firstRun.console.contains("keys stored, exiting\n"))

        // Damage the victim's value in the disk file (its header stays intact).
        var bytes = try Data(contentsOf: URL(fileURLWithPath: disk))
        let location = try #require(bytes.range(of: Data("victim".utf8) + victimValue))
        bytes[location.lowerBound + 6 + 3] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: disk))
        let damagedSector = location.lowerBound / 512

        // Second boot on the same file (e1000, DHCP): the values are back,
        // the damaged record is reported and not served.
        let second = try Integration.start([
            "run", "qemu", "-i", "--timeout", "600", "--machine", "pc", "-b", disk,
            "-I", "net0,e1000,user,hostfwd=tcp:127.0.0.1:\(port)-:80", "-W", "net0,inet,dhcp", image,
        ])
        #expect(Integration.waitForServer(base + "/stats", guest: second))
        let alphaAgain = Integration.request("GET", base + "/k/alpha")
        #expect(alphaAgain.status == 200 && alphaAgain.body == Data("second".utf8))
        #expect(Integration.request("GET", base + "/k/big").body == big)
        let empty = Integration.request("GET", base + "/k/empty")
        #expect(empty.status == 200 && empty.body.isEmpty)
        for index in 0..<8 {
            #expect(Integration.request("GET", base + "/k/client\(index)").body == valueBytes(200 + index * 150, seed: UInt8(index)))
        }
        #expect(Integration.request("GET", base + "/k/beta").status == 404)
        #expect(Integration.request("GET", base + "/k/victim").status == 404)
        // New writes land after the damaged record and survive.
        #expect(Integration.request("PUT", base + "/k/victim", body: Data("rewritten".utf8)).status == 201)
        #expect(Integration.request("GET", base + "/k/victim").body == Data("rewritten".utf8))
        #expect(Integration.request("GET", base + "/quit").status == 200)
        let secondRun = second.finish()
        #expect(secondRun.status == 0, "console: \(secondRun.console)")
        #expect(secondRun.console.contains("kvstore: damaged record at sector \(damagedSector) (1 sectors, key 'victim'): checksum mismatch, skipped\n"))
        #expect(secondRun.console.contains(", 1 damaged, log ends at sector"))
        #expect(secondRun.console.contains("(DHCP)"))
    }

    /// Writes fail in QEMU's blkdebug layer (EIO on every write, reads
    /// work): a PUT is answered with the device error, nothing it could not
    /// store is served, and the exit status reports the failed final flush;
    /// on a blank disk the superblock write fails and
    /// the server refuses to start.
    @Test func aFailingDiskGivesErrorsNotSilentLoss() throws {
        let image = try Integration.kvstore.get()
        let disk = try Integration.blankDisk(megabytes: 1)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let rules = Integration.imageDirectory + "/blkdebug-\(UUID().uuidString).conf"
        try "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\n".write(toFile: rules, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: rules) }
        let failingWrites = "-set drive.blk0.file=blkdebug:\(rules):\(disk) -set drive.blk0.werror=report"

        let blank = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-b", disk, "-g", failingWrites, image])
        #expect(blank.status == 2, "console: \(blank.stdout)")
        #expect(blank.stdout.contains("kvstore: disk: device error (code "), "console: \(blank.stdout)")

        // A formatted disk (the superblock's magic is all recovery checks).
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: disk))
        try handle.write(contentsOf: Data("KVSTORE1".utf8))
        try handle.close()
        let port = Integration.port(4)
        let base = "http://127.0.0.1:\(port)"
        let guest = try Integration.start([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-b", disk, "-g", failingWrites,
            "-I", "net0,virtio-net,user,hostfwd=tcp:127.0.0.1:\(port)-:80", "-W", "net0,inet,static,10.0.2.15/24,10.0.2.2", image,
        ])
        #expect(Integration.waitForServer(base + "/stats", guest: guest))
        let put = Integration.request("PUT", base + "/k/lost", body: Data("never stored".utf8))
        #expect(put.status == 500)
        #expect(String(decoding: put.body, as: UTF8.self).hasPrefix("disk: device error (code "))
        #expect(Integration.request("GET", base + "/k/lost").status == 404)
        #expect(Integration.request("GET", base + "/quit").status == 200)
        // QEMU fails the final flush as well: the exit status says so.
        let run = guest.finish()
        #expect(run.status == 1, "console: \(run.console)")
        #expect(run.console.contains("kvstore: PUT lost: disk: device error (code "))
        #expect(run.console.contains("kvstore: closing the disk: device error (code "))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: disk))
        #expect(bytes.range(of: Data("never stored".utf8)) == nil)
    }

    @Test func aMissingDiskOrNICIsAClearErrorAndANonZeroExit() throws {
        let image = try Integration.kvstore.get()
        let noDisk = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-I", "net0,virtio-net,user", image])
        #expect(noDisk.status == 2)
        #expect(noDisk.stdout.contains("kvstore: no block device 'blk0' (the launcher attached none; run with -b FILE)\n"), "console: \(noDisk.stdout)")

        let disk = try Integration.blankDisk(megabytes: 1)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let noNIC = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-b", disk, image])
        #expect(noNIC.status == 3)
        #expect(noNIC.stdout.contains("kvstore: no network interface: run with -I net0,virtio-net,user (or e1000) on --machine pc\n"), "console: \(noNIC.stdout)")

        // microvm's PCIe host has no port-based configuration access.
        let microvm = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "-b", disk, "-I", "net0,virtio-net,user", image])
        #expect(microvm.status == 2)
        #expect(microvm.stdout.contains("kvstore: blk0: no virtio-blk device on the PCI bus (ports 0xCF8/0xCFC; use --machine pc)\n"), "console: \(microvm.stdout)")
    }
}

/// Results written by concurrent workers.
final class ConcurrentResults: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [Int]
    init(count: Int) { storage = [Int](repeating: 0, count: count) }
    func set(_ index: Int, _ value: Int) { lock.withLock { storage[index] = value } }
    var values: [Int] { lock.withLock { storage } }
}

/// A TCP server on 127.0.0.1 that answers each connection with "echo: "
/// and everything it read, then closes.
final class TCPEchoServer: @unchecked Sendable {
    let descriptor: Int32
    let port: Int
    private(set) var connections = 0

    init(port: Int) throws {
        self.port = port
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(descriptor >= 0)
        var reuse: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = UDPPeer.loopback(port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0, "bind 127.0.0.1:\(port): errno \(errno)")
        try #require(listen(descriptor, 16) == 0)
        let thread = Foundation.Thread { [self] in serve() }
        thread.start()
    }

    func serve() {
        while true {
            let client = accept(descriptor, nil, nil)
            if client < 0 { return }
            connections += 1
            Foundation.Thread {
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                    if count <= 0 { break }
                    received += buffer[0..<count]
                }
                let reply = Array("echo: ".utf8) + received
                _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(client)
            }.start()
        }
    }

    func stop() {
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
    }
}

@Suite(.serialized) struct ApplicationIOTests {
    /// The appio guest's checks against peers written here, with the
    /// devices' interrupts and polled, and on two CPUs (application threads,
    /// the network thread and device completions then run on either CPU);
    /// then the bytes its big transfer wrote are in the host file.
    @Test(arguments: [(false, 1), (true, 1), (false, 2)])
    func socketsAndStorageWorkFromApplicationThreads(polled: Bool, processors: Int) throws {
        let image = try Integration.appio.get()
        let disk = try Integration.blankDisk(megabytes: 2)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let tcpPort = Integration.port(5)
        let udpPort = Integration.port(6)
        let closedPort = Integration.port(7)
        let server = try TCPEchoServer(port: tcpPort)
        defer { server.stop() }
        let answering = try UDPAnswerer(port: udpPort)
        defer { answering.stop() }

        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "600", "--machine", "pc", "--smp", String(processors), "-b", disk,
            "-I", "net0,virtio-net,user", "-W", "net0,inet,dhcp",
            "-e", "APPIO_TCP_PORT=\(tcpPort)", "-e", "APPIO_UDP_PORT=\(udpPort)", "-e", "APPIO_CLOSED_PORT=\(closedPort)", "-e", "APPIO_POLLED=\(polled ? 1 : 0)", image,
        ])
        #expect(run.status == 0, "console: \(run.stdout)\nstderr: \(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        let checks = lines.filter { $0.hasSuffix(": ok") || $0.hasSuffix(": FAILED") }
        #expect(checks.count == 13, "console: \(run.stdout)")
        #expect(checks.allSatisfy { $0.hasSuffix(": ok") }, "console: \(run.stdout)")
        let interrupts = polled ? "none" : "counted"
        #expect(lines.contains { $0.hasPrefix("appio: disk requests") && $0.hasSuffix(", interrupts \(interrupts)") }, "console: \(run.stdout)")
        #expect(lines.contains(polled ? "appio: network polled, interrupts none" : "appio: network MSI-X, interrupts counted"), "console: \(run.stdout)")
        #expect(lines.contains("appio: 0 failures"))
        #expect(server.connections == 4)

        // The guest's 160 KiB write at sector 1024 reached the file.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: disk))
        let expected = Data((0..<(160 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) })
        #expect(bytes.subdata(in: (1024 * 512)..<(1024 * 512 + 160 * 1024)) == expected)
    }
}

/// Answers "ping" datagrams on 127.0.0.1:`port` with "pong" to their
/// sender, until `stop` (the socket closes when the thread ends).
final class UDPAnswerer: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private let finished = DispatchSemaphore(value: 0)

    init(port: Int) throws {
        let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(descriptor >= 0)
        var address = UDPPeer.loopback(port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            close(descriptor)
            throw POSIXError(.EADDRINUSE)
        }
        var interval = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        Foundation.Thread { [self] in
            while lock.withLock({ running }) {
                var buffer = [UInt8](repeating: 0, count: 1500)
                var from = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let count = buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(descriptor, raw.baseAddress, raw.count, 0, $0, &length) }
                    }
                }
                guard count == 4, Array(buffer[0..<4]) == Array("ping".utf8) else { continue }
                let reply = Array("pong".utf8)
                _ = reply.withUnsafeBytes { raw in
                    withUnsafePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            sendto(descriptor, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                        }
                    }
                }
            }
            close(descriptor)
            finished.signal()
        }.start()
    }

    /// Ends the thread and closes the socket.
    func stop() {
        lock.withLock { running = false }
        finished.wait()
    }
}
