// httpd: an HTTP/1.1 server unikernel. The BareMetalKit virtio-net driver
// feeds the NetStack TCP/IP stack in a single-threaded poll loop; the
// address comes from the launcher (-W net0,inet,dhcp or static). Serves a
// fixed page at /, the stack's counters at /stats, and ends the guest at
// /quit. Run it with:
//   rumprun-cli run qemu -i --machine pc \
//     -I net0,virtio-net,user,hostfwd=tcp:127.0.0.1:8080-:80 -W net0,inet,dhcp httpd.img
import BareMetalKit
import DeviceInterfaces
import NetStack
import Rumprun

typealias NIC = VirtioNetwork<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>

func fail(_ message: String) -> Never {
    print("httpd: \(message)")
    Rumprun.exit(1)
}

// Clock: the TSC, calibrated against the PIT (present on the pc machine).
guard let scale = PlatformCore.calibrateTSCWithPIT(milliseconds: 50) else { fail("cannot calibrate the TSC (no PIT)") }
let bootTicks = PlatformCore.readTSC()
func now() -> UInt64 { scale.nanoseconds(ticks: PlatformCore.readTSC() &- bootTicks) }

// The first virtio-net device on the PCI bus.
let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
var device: NIC? = nil
for function in PCIEnumerator.enumerate(access) where VirtioPCI.deviceType(of: function) == VirtioPCI.networkType {
    guard let transport = try? VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO()) else { continue }
    device = try? NIC(transport: transport, dma: HeapDMAMemory())
    if device != nil { break }
}
guard let nic = device else { fail("no virtio-net device (run with --machine pc -I net0,virtio-net,...)") }

// Addressing from the launcher's configuration (-W), DHCP by default.
var specification = NetworkSpecification.dhcp
if let interface = Rumprun.networkInterfaces.first {
    switch interface.addressing {
    case .none, .dhcp:
        specification = .dhcp
    case let .staticAddress(address, prefixLength, gateway):
        let text = "inet,static,\(address)/\(prefixLength)" + (gateway.map { ",\($0)" } ?? "")
        do {
            specification = try NetworkSpecification(parsing: text)
        } catch {
            fail("bad address configuration \(text)")
        }
    }
}

var configuration = NetworkStackConfiguration()
configuration.seed = PlatformCore.readTSC()
let stack = NetworkStack<NIC>(configuration: configuration)
let interface: Int
switch specification {
case .static(let address):
    interface = stack.attach(nic, configuration: address)
case .dhcp:
    interface = stack.attach(nic)
    do { try stack.startDHCP(interface: interface, hostName: Rumprun.hostname) } catch { fail("DHCP did not start") }
    let deadline = now() + 30_000_000_000
    while stack.dhcpLease(interface: interface) == nil {
        stack.poll(now: now())
        if now() > deadline { fail("no DHCP lease within 30 s") }
    }
}
if let lease = stack.dhcpLease(interface: interface) {
    print("httpd: DHCP lease \(lease.configuration.address.description)/\(lease.configuration.prefixLength)")
}

let listener: SocketHandle
do { listener = try stack.listen(port: 80, backlog: 32) } catch { fail("cannot listen on port 80") }
print("httpd: listening on port 80")

let page = "<!DOCTYPE html>\n<html><body><h1>Hello from a swift-rumprun unikernel</h1></body></html>\n"
var requestsServed = 0

func response(status: String, type: String, body: String, keepAlive: Bool) -> [UInt8] {
    let head = "HTTP/1.1 \(status)\r\nServer: swift-rumprun-httpd\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
    return Array(head.utf8) + Array(body.utf8)
}

func statsPage() -> String {
    let s = stack.statistics
    return "requests \(requestsServed)\nframes_received \(s.framesReceived)\nframes_sent \(s.framesSent)\n"
        + "tcp_segments_received \(s.tcpSegmentsReceived)\ntcp_segments_sent \(s.tcpSegmentsSent)\n"
        + "tcp_connections_opened \(s.tcpConnectionsOpened)\nchecksum_errors \(s.checksumErrors)\n"
}

/// One client connection: bytes received so far and bytes still to send.
struct Client {
    var handle: SocketHandle
    var input: [UInt8] = []
    var output: [UInt8] = []
    var closeAfterWrite = false
}

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
var quitting = false
var quitDeadline: UInt64 = 0

while true {
    stack.poll(now: now())
    while let handle = try? stack.accept(listener) { clients.append(Client(handle: handle)) }

    var index = 0
    while index < clients.count {
        var client = clients[index]
        var finished = false
        if let bytes = try? stack.read(client.handle, maximumCount: 4096) {
            if bytes.isEmpty { finished = client.output.isEmpty } else { client.input += bytes }
        }
        // Answer every complete request (keep-alive: several per connection).
        while let end = headerEnd(client.input) {
            let request = Array(client.input[0..<end])
            client.input.removeFirst(end)
            let line = request.prefix { $0 != 13 }
            let words = line.split(separator: 32)
            let path = words.count > 1 ? String(decoding: words[1], as: UTF8.self) : ""
            let keepAlive = !contains(lowercased(request), Array("connection: close".utf8))
            requestsServed += 1
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
        if !client.output.isEmpty, let written = try? stack.write(client.handle, client.output) {
            client.output.removeFirst(written)
        }
        if client.output.isEmpty && client.closeAfterWrite { finished = true }
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
        Rumprun.exit(0)
    }
}
