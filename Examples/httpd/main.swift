// httpd: an HTTP/1.1 server unikernel. A BareMetalKit NIC driver (virtio-net
// or e1000, whichever the launcher attached) feeds the NetStack TCP/IP stack
// in a single-threaded poll loop; the address comes from the launcher
// (-W net0,inet,dhcp or static). Serves a fixed page at /, the stack's
// counters at /stats, and ends the guest at /quit. Run it with:
//   rumprun-cli run qemu -i --machine pc \
//     -I net0,virtio-net,user,hostfwd=tcp:127.0.0.1:8080-:80 -W net0,inet,dhcp httpd.img
// (or -I net0,e1000,...). Bring-up is in GuestNetwork.swift; the NIC is Rumprun.NetworkDevice.
import BareMetalKit
import DeviceInterfaces
import NetStack
import Rumprun

guard let clock = GuestClock() else { fail("httpd", "the platform clock is not calibrated") }
func now() -> UInt64 { clock.now() }
let (stack, interface) = startNetwork("httpd", clock: clock)

let listener: SocketHandle
do { listener = try stack.listen(port: 80, backlog: 32) } catch { fail("httpd", "cannot listen on port 80") }
print("httpd: listening on port 80")

let page = "<!DOCTYPE html>\n<html><body><h1>Hello from a swift-rumprun unikernel</h1></body></html>\n"
var requestsServed = 0

func response(status: String, type: String, body: String, keepAlive: Bool) -> [UInt8] {
    let head = "HTTP/1.1 \(status)\r\nServer: swift-rumprun-httpd\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
    return Array(head.utf8) + Array(body.utf8)
}

func statsPage() -> String {
    let s = stack.statistics
    return "requests \(requestsServed)\nloop_iterations \(loopIterations)\nframes_received \(s.framesReceived)\nframes_sent \(s.framesSent)\n"
        + "tcp_segments_received \(s.tcpSegmentsReceived)\ntcp_segments_sent \(s.tcpSegmentsSent)\n"
        + "tcp_connections_opened \(s.tcpConnectionsOpened)\ntcp_retransmissions \(s.tcpRetransmissions)\n"
        + "transmit_deferred \(s.transmitDeferred)\ntransmit_errors \(s.transmitErrors)\nchecksum_errors \(s.checksumErrors)\n"
}

/// One client connection: bytes received so far and bytes still to send.
struct Client {
    var handle: SocketHandle
    var input: [UInt8] = []
    var output: [UInt8] = []
    var closeAfterWrite = false
    /// Body bytes of a /bytes/N response not yet queued in `output`.
    var bulkRemaining = 0
    /// Body bytes of the current /bytes/N response written so far.
    var bulkQueued = 0
}

/// N from a "/bytes/N" path (a bulk body for throughput measurements).
func bulkLength(_ path: ArraySlice<UInt8>) -> Int? {
    let prefix = Array("/bytes/".utf8)
    guard path.count > prefix.count, path.count <= prefix.count + 12, path.starts(with: prefix) else { return nil }
    var value = 0
    for digit in path.dropFirst(prefix.count) {
        guard digit >= 48 && digit <= 57 else { return nil }
        value = value * 10 + Int(digit - 48)
    }
    return value
}

/// The repeating body of /bytes/N: byte i is i mod 251 (written from offset
/// `written mod 251`, so a partial write continues the sequence).
let bulkPattern: [UInt8] = (0..<(251 * 64)).map { UInt8($0 % 251) }

/// The end of the first request header block in `bytes`, if complete.
func headerEnd(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= 4 else { return nil }
    for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
        return index + 4
    }
    return nil
}

func lowercased(_ bytes: [UInt8]) -> [UInt8] { bytes.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 } }

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where Array(haystack[start..<start + needle.count]) == needle {
        return true
    }
    return false
}

var clients: [Client] = []
var loopIterations = 0
var quitting = false
var quitDeadline: UInt64 = 0

while true {
    loopIterations += 1
    stack.poll(now: now())
    while let handle = try? stack.accept(listener) {
        // Responses are written whole: no reason to hold them for Nagle.
        try? stack.setNoDelay(handle, true)
        clients.append(Client(handle: handle))
    }

    var index = 0
    while index < clients.count {
        // Take the client out of the array (leaving a stub), so its buffers
        // are uniquely referenced and edits do not copy them.
        var client = Client(handle: clients[index].handle)
        swap(&client, &clients[index])
        var finished = false
        if let bytes = try? stack.read(client.handle, maximumCount: 4096) {
            if bytes.isEmpty { finished = client.output.isEmpty && client.bulkRemaining == 0 } else { client.input += bytes }
        }
        // Answer every complete request (keep-alive: several per connection),
        // in order: a pipelined request waits until a bulk body is queued.
        while client.bulkRemaining == 0, let end = headerEnd(client.input) {
            let request = Array(client.input[0..<end])
            client.input.removeFirst(end)
            let line = request.prefix { $0 != 13 }
            let words = line.split(separator: 32)
            let path = words.count > 1 ? String(decoding: words[1], as: UTF8.self) : ""
            let keepAlive = !contains(lowercased(request), Array("connection: close".utf8))
            requestsServed += 1
            if words.count > 1, let length = bulkLength(words[1]) {
                let head = "HTTP/1.1 200 OK\r\nServer: swift-rumprun-httpd\r\nContent-Type: application/octet-stream\r\nContent-Length: \(length)\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
                client.output += Array(head.utf8)
                client.bulkRemaining = length
                client.bulkQueued = 0
                if !keepAlive { client.closeAfterWrite = true }
                continue
            }
            switch path {
            case "/":
                client.output += response(status: "200 OK", type: "text/html", body: page, keepAlive: keepAlive)
            case "/stats":
                client.output += response(status: "200 OK", type: "text/plain", body: statsPage(), keepAlive: keepAlive)
            case "/quit":
                client.output += response(status: "200 OK", type: "text/plain", body: "bye\n", keepAlive: false)
                quitting = true
                quitDeadline = now() + 1_000_000_000
            default:
                client.output += response(status: "404 Not Found", type: "text/plain", body: "not found\n", keepAlive: keepAlive)
            }
            if !keepAlive || path == "/quit" { client.closeAfterWrite = true }
        }
        // Send what is queued, then a bulk body straight from the pattern
        // (no intermediate copy) until the socket's buffer is full.
        if !client.output.isEmpty, let written = try? stack.write(client.handle, client.output) {
            client.output.removeFirst(written)
        }
        while client.output.isEmpty && client.bulkRemaining > 0 {
            let start = client.bulkQueued % 251
            let count = min(client.bulkRemaining, bulkPattern.count - start)
            let written = bulkPattern.withUnsafeBytes { pattern in
                (try? stack.write(client.handle, UnsafeRawBufferPointer(rebasing: pattern[start..<(start + count)]))) ?? 0
            }
            if written == 0 { break }
            client.bulkRemaining -= written
            client.bulkQueued += written
        }
        if client.output.isEmpty && client.closeAfterWrite && client.bulkRemaining == 0 { finished = true }
        if stack.readiness(client.handle).contains(.error) { finished = true }
        if finished {
            if client.closeAfterWrite { try? stack.shutdown(client.handle) }
            stack.close(client.handle)
            clients.remove(at: index)
        } else {
            clients[index] = client
            index += 1
        }
    }
    if quitting && (clients.isEmpty || now() > quitDeadline) {
        // Let the last segments and the FIN go out before the machine stops.
        let drain = now() + 200_000_000
        while now() < drain { stack.poll(now: now()) }
        print("httpd: served \(requestsServed) requests, exiting")
        stack.device(interface).shutdown()
        Rumprun.exit(0)
    }
}
