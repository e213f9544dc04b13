// Interoperability with the Linux TCP/IP stack over a tap device in a private network namespace (host only, root only; opt-in with NETSTACK_INTEROP=1).
#if canImport(Glibc)
import Glibc
import Testing
@testable import NetStack

/// A Linux tap device as a `NetworkInterface`.
struct TapInterface: NetworkInterface {
    let descriptor: Int32
    let macAddress: MACAddress
    var mtu = 1500
    var isLinkUp = true
    var statistics = NetworkInterfaceStatistics()

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        let written = write(descriptor, frame.baseAddress, frame.count)
        guard written == frame.count else { throw .deviceError(code: Int(errno)) }
        statistics.framesSent += 1
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        var buffer = [UInt8](repeating: 0, count: 2048)
        var count = 0
        while count < limit {
            let n = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            buffer.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            statistics.framesReceived += 1
            count += 1
        }
        return count
    }
}

enum Interop {
    /// MiB sent each way in the bulk transfers (NETSTACK_INTEROP_MIB, default 100).
    static var transferMiB: Int { getenv("NETSTACK_INTEROP_MIB").flatMap { Int(String(cString: $0)) } ?? 100 }

    static var enabled: Bool {
        getuid() == 0 && getenv("NETSTACK_INTEROP").map { String(cString: $0) == "1" } == true && access("/dev/net/tun", R_OK | W_OK) == 0
    }

    /// Moves the calling thread into a fresh network namespace. `unshare` is a
    /// GNU extension Swift does not import, so it is looked up at run time.
    static func enterNewNetworkNamespace() -> Bool {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "unshare") else { return false }
        let unshareFunction = unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Int32).self)
        return unshareFunction(0x4000_0000) == 0  // CLONE_NEWNET
    }

    /// Opens tap device `name` (TUNSETIFF with IFF_TAP | IFF_NO_PI), non-blocking.
    static func openTap(_ name: String) -> Int32? {
        let descriptor = open("/dev/net/tun", O_RDWR | O_NONBLOCK)
        guard descriptor >= 0 else { return nil }
        var request = [UInt8](repeating: 0, count: 40)  // struct ifreq
        for (index, byte) in name.utf8.prefix(15).enumerated() { request[index] = byte }
        let flags: UInt16 = 0x0002 | 0x1000
        request[16] = UInt8(flags & 0xFF)
        request[17] = UInt8(flags >> 8)
        let result = request.withUnsafeMutableBytes { ioctl(descriptor, 0x4004_54CA, $0.baseAddress!) }
        guard result == 0 else {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    /// Starts a child process with stdout to a pipe; returns its pid and the pipe's read end.
    static func spawn(_ arguments: [String]) -> (pid: pid_t, output: Int32)? {
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { return nil }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
        defer { posix_spawn_file_actions_destroy(&actions) }
        var cStrings = arguments.map { strdup($0) }
        cStrings.append(nil)
        defer { for pointer in cStrings { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, arguments[0], &actions, nil, cStrings, environ)
        close(pipeEnds[1])
        guard status == 0 else {
            close(pipeEnds[0])
            return nil
        }
        _ = fcntl(pipeEnds[0], F_SETFL, O_NONBLOCK)
        return (pid, pipeEnds[0])
    }

    static func runToCompletion(_ arguments: [String]) -> Int32 {
        guard let child = spawn(arguments) else { return -1 }
        var status: Int32 = 0
        waitpid(child.pid, &status, 0)
        close(child.output)
        return status
    }

    static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Runs `body` on a new thread and waits for it, so namespace changes stay off the test runner's threads.
    static func onNewThread(_ body: @escaping () -> Void) {
        final class Box {
            let body: () -> Void
            init(_ body: @escaping () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        pthread_create(&thread, nil, { context in
            let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        pthread_join(thread, nil)
    }
}

/// A small HTTP/1.1 server on the stack: `/` gives a page, `/bytes/N` gives N pattern bytes,
/// POST bodies are counted and summed.
final class InteropHTTPServer {
    let stack: NetworkStack<TapInterface>
    let listener: SocketHandle
    var pending: [SocketHandle: [UInt8]] = [:]
    var outgoing: [SocketHandle: (bytes: [UInt8], offset: Int)] = [:]
    var uploadedBytes = 0
    var uploadedSum: UInt64 = 0
    /// FNV-1a (64-bit) over every uploaded body byte, in order.
    var uploadedHash: UInt64 = InteropHTTPServer.fnvOffset

    static let fnvOffset: UInt64 = 0xcbf2_9ce4_8422_2325
    static func fnv(_ hash: UInt64, _ byte: UInt8) -> UInt64 { (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }

    init(stack: NetworkStack<TapInterface>) throws {
        self.stack = stack
        listener = try stack.listen(port: 8080, backlog: 16)
    }

    static func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 7 &+ index >> 9) }

    func service() {
        while let connection = try? stack.accept(listener) { pending[connection] = [] }
        for connection in Array(pending.keys) {
            while let bytes = try? stack.read(connection, maximumCount: 65536) {
                if bytes.isEmpty {
                    stack.close(connection)
                    pending.removeValue(forKey: connection)
                    outgoing.removeValue(forKey: connection)
                    break
                }
                pending[connection]! += bytes
            }
            guard var request = pending[connection], outgoing[connection] == nil else { continue }
            guard let end = headerEnd(request) else { continue }
            let head = String(decoding: request[0..<end], as: UTF8.self)
            let lines = head.split(separator: "\r\n")
            let requestLine = lines.first.map(String.init) ?? ""
            var contentLength = 0
            for line in lines.dropFirst() where line.lowercased().hasPrefix("content-length:") {
                contentLength = Int(line.dropFirst(15).trimmingPrefix(" ")) ?? 0
            }
            guard request.count >= end + 4 + contentLength else { continue }
            for byte in request[(end + 4)..<(end + 4 + contentLength)] {
                uploadedSum &+= UInt64(byte)
                uploadedHash = Self.fnv(uploadedHash, byte)
            }
            uploadedBytes += contentLength
            request.removeFirst(end + 4 + contentLength)
            pending[connection] = request
            var body: [UInt8]
            let path = requestLine.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
            if path.hasPrefix("/bytes/"), let count = Int(path.dropFirst(7)) {
                body = (0..<count).map(Self.pattern)
            } else {
                body = Array("hello from swift-rumprun NetStack\n".utf8)
            }
            let header = "HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nContent-Type: application/octet-stream\r\n\r\n"
            body.insert(contentsOf: Array(header.utf8), at: 0)
            outgoing[connection] = (body, 0)
        }
        for (connection, state) in outgoing {
            var offset = state.offset
            while offset < state.bytes.count, let n = try? state.bytes.withUnsafeBytes({ try stack.write(connection, UnsafeRawBufferPointer(rebasing: $0[offset..<min(state.bytes.count, offset + 262_144)])) }) {
                offset += n
            }
            outgoing[connection] = offset == state.bytes.count ? nil : (state.bytes, offset)
        }
    }

    func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }
}

@Test(.enabled(if: Interop.enabled, "needs root, /dev/net/tun and NETSTACK_INTEROP=1"))
func linuxCurlTalksToTheStackOverATap() throws {
    var failures: [String] = []
    var transcript: [String] = []
    Interop.onNewThread {
        guard Interop.enterNewNetworkNamespace() else { failures.append("unshare(CLONE_NEWNET) failed"); return }
        guard let tap = Interop.openTap("nstap0") else { failures.append("cannot open tap"); return }
        defer { close(tap) }
        for command in [["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "nstap0", "up"], ["ip", "addr", "add", "10.9.0.1/24", "dev", "nstap0"]] {
            if Interop.runToCompletion(command) != 0 { failures.append("\(command) failed") }
        }
        var configuration = NetworkStackConfiguration()
        configuration.tcp.minimumRetransmissionTimeout = 200_000_000
        let stack = NetworkStack<TapInterface>(configuration: configuration)
        stack.attach(TapInterface(descriptor: tap, macAddress: MACAddress(2, 0, 0, 0, 0, 2)), configuration: IPv4InterfaceConfiguration(address: IPv4Address(10, 9, 0, 2), prefixLength: 24, gateway: IPv4Address(10, 9, 0, 1)))
        guard let server = try? InteropHTTPServer(stack: stack) else { failures.append("listen failed"); return }

        /// Runs a command while serving, returns its exit status and output.
        func serve(while arguments: [String], limit: UInt64 = 120_000_000_000, step: ([UInt8]) -> Void = { _ in }) -> (Int32, [UInt8]) {
            guard let child = Interop.spawn(arguments) else { return (-1, []) }
            var output: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            let start = Interop.monotonicNanoseconds()
            var status: Int32 = 0
            while true {
                stack.poll(now: Interop.monotonicNanoseconds())
                server.service()
                while true {
                    let n = buffer.withUnsafeMutableBytes { read(child.output, $0.baseAddress, $0.count) }
                    guard n > 0 else { break }
                    output += buffer[0..<n]
                }
                step(output)
                if waitpid(child.pid, &status, WNOHANG) == child.pid {
                    // Let the last segments (FIN, final ACKs) go out.
                    for _ in 0..<20 {
                        stack.poll(now: Interop.monotonicNanoseconds())
                        step(output)
                        var descriptor = pollfd(fd: tap, events: Int16(POLLIN), revents: 0)
                        _ = poll(&descriptor, 1, 1)
                    }
                    break
                }
                if Interop.monotonicNanoseconds() - start > limit {
                    kill(child.pid, SIGKILL)
                    waitpid(child.pid, &status, 0)
                    break
                }
                // Wait for a frame or the next timer, at most 1 ms.
                var descriptor = pollfd(fd: tap, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 1)
            }
            close(child.output)
            return (status, output)
        }

        let (status, page) = serve(while: ["curl", "-s", "--max-time", "30", "http://10.9.0.2:8080/"])
        transcript.append("page: status \(status), \(page.count) bytes")
        if status != 0 || page != Array("hello from swift-rumprun NetStack\n".utf8) { failures.append("GET / gave status \(status): \(String(decoding: page, as: UTF8.self))") }

        // Keep-alive: two requests on one connection.
        let (statusTwo, twice) = serve(while: ["curl", "-s", "--max-time", "30", "http://10.9.0.2:8080/", "http://10.9.0.2:8080/"])
        if statusTwo != 0 || twice.count != 2 * 34 { failures.append("two GETs gave status \(statusTwo), \(twice.count) bytes") }

        // Download 100 MiB (NETSTACK_INTEROP_MIB to change) and compare with the pattern.
        let size = Interop.transferMiB << 20
        let (statusDown, downloaded) = serve(while: ["curl", "-s", "--max-time", "900", "http://10.9.0.2:8080/bytes/\(size)"], limit: 1_000_000_000_000)
        transcript.append("download: status \(statusDown), \(downloaded.count) bytes")
        if statusDown != 0 || downloaded.count != size {
            failures.append("download gave status \(statusDown), \(downloaded.count) bytes")
        } else {
            var mismatch = false
            for index in 0..<size where downloaded[index] != InteropHTTPServer.pattern(index) {
                mismatch = true
                break
            }
            if mismatch { failures.append("downloaded bytes differ from the pattern") }
        }

        // Upload the same amount of pattern bytes from Linux (Python writes
        // them into curl); the server's FNV-1a hash of the body must match.
        let uploadSize = Interop.transferMiB << 20
        // pattern(i) = 7i + i >> 9 (mod 256) repeats every 128 KiB.
        let generator = "import sys\nn=\(uploadSize)\nb=bytes(((i*7)+(i>>9))&255 for i in range(131072))\nq,r=divmod(n,131072)\nfor _ in range(q): sys.stdout.buffer.write(b)\nsys.stdout.buffer.write(b[:r])\n"
        let (statusUp, _) = serve(while: ["sh", "-c", "python3 -c \"$0\" | curl -s --max-time 900 -H 'Content-Type: application/octet-stream' --data-binary @- http://10.9.0.2:8080/upload -o /dev/null", generator], limit: 1_000_000_000_000)
        var expectedHash = InteropHTTPServer.fnvOffset
        for index in 0..<uploadSize { expectedHash = InteropHTTPServer.fnv(expectedHash, InteropHTTPServer.pattern(index)) }
        transcript.append("upload: status \(statusUp), \(server.uploadedBytes) bytes")
        if statusUp != 0 || server.uploadedBytes != uploadSize || server.uploadedHash != expectedHash {
            failures.append("upload gave status \(statusUp), \(server.uploadedBytes) bytes, hash \(server.uploadedHash) (expected \(expectedHash))")
        }

        // Linux pings the stack (a raw-socket ping in Python that checks the reply's checksum).
        let ping = "import socket,struct\n" +
            "def cs(b):\n b+=b'\\0'*(len(b)%2); s=sum(struct.unpack('!%dH'%(len(b)//2),b)); s=(s&0xffff)+(s>>16); s=(s&0xffff)+(s>>16); return ~s&0xffff\n" +
            "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP); s.settimeout(5)\n" +
            "h=struct.pack('!BBHHH',8,0,0,0x1234,1)+b'swift'; h=h[:2]+struct.pack('!H',cs(h))+h[4:]\n" +
            "s.sendto(h,('10.9.0.2',0)); d=s.recv(1024); i=d[20:]\n" +
            "print('ok' if i[0]==0 and cs(i)==0 and i[8:]==b'swift' and struct.unpack('!H',i[4:6])[0]==0x1234 else 'bad')\n"
        let (statusPing, pingOutput) = serve(while: ["python3", "-c", ping])
        transcript.append("ping: \(String(decoding: pingOutput, as: UTF8.self))")
        if statusPing != 0 || pingOutput != Array("ok\n".utf8) { failures.append("ping gave status \(statusPing): \(String(decoding: pingOutput, as: UTF8.self))") }

        // The stack as a client: a Linux echo server gets 8 MiB and sends it back.
        let echo = "import socket,sys\n" +
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('10.9.0.1',9000)); s.listen(1)\n" +
            "print('ready',flush=True); c,_=s.accept()\n" +
            "while True:\n d=c.recv(65536)\n if not d: break\n c.sendall(d)\n" +
            "c.close()\n"
        let echoSize = 8 << 20
        var client: SocketHandle?
        var echoSent = 0
        var echoed: [UInt8] = []
        let pattern = (0..<echoSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 11) }
        let (statusEcho, _) = serve(while: ["python3", "-c", echo]) { output in
            if client == nil && output.count >= 6 { client = try? stack.connect(to: IPv4Endpoint(address: IPv4Address(10, 9, 0, 1), port: 9000)) }
            guard let client else { return }
            while echoSent < echoSize, let n = try? pattern.withUnsafeBytes({ try stack.write(client, UnsafeRawBufferPointer(rebasing: $0[echoSent..<min(echoSize, echoSent + 65536)])) }) {
                echoSent += n
                if echoSent == echoSize { try? stack.shutdown(client) }
            }
            while let bytes = try? stack.read(client, maximumCount: 65536), !bytes.isEmpty { echoed += bytes }
        }
        transcript.append("echo: status \(statusEcho), sent \(echoSent), back \(echoed.count)")
        if statusEcho != 0 || echoed != pattern { failures.append("echo gave status \(statusEcho), sent \(echoSent), back \(echoed.count)") }
        transcript.append("retransmissions \(stack.statistics.tcpRetransmissions), checksum errors \(stack.statistics.checksumErrors)")
    }
    #expect(failures.isEmpty, "\(failures) \(transcript)")
    print(transcript)
}
#endif
