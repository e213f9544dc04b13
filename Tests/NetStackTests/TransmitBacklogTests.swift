// A driver whose transmit ring is full must not cost the stack its frames:
// they wait in the bounded transmit backlog and leave in order (found with the
// httpd unikernel, whose bulk sends overran virtio-net's 128-slot ring and
// then waited for retransmission timeouts).
import DeviceInterfaces
import Testing
@testable import NetStack

/// Two ports whose transmit rings hold `capacity` frames; the "device"
/// completes a ring only when its owner polls (receive), like the drivers,
/// which reclaim transmit slots in `receive`.
final class RingWire {
    var rings: [[[UInt8]]] = [[], []]
    var inboxes: [[[UInt8]]] = [[], []]
    let capacity: Int
    init(capacity: Int) { self.capacity = capacity }
}

struct RingPort: NetworkInterface {
    let wire: RingWire
    let side: Int
    let macAddress: MACAddress
    var mtu: Int { 1500 }
    var isLinkUp: Bool { true }
    var statistics = NetworkInterfaceStatistics()

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        guard wire.rings[side].count < wire.capacity else { throw .transmitQueueFull }
        wire.rings[side].append(Array(frame))
        statistics.framesSent += 1
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        // The device finishes what is in the ring: it arrives at the other side.
        wire.inboxes[1 - side] += wire.rings[side]
        wire.rings[side].removeAll()
        let count = min(limit, wire.inboxes[side].count)
        for frame in wire.inboxes[side].prefix(count) { frame.withUnsafeBytes { body($0) } }
        wire.inboxes[side].removeFirst(count)
        return count
    }
}

/// Connects `a` (TwoHosts.addressA) to a listener on `b` (addressB) and
/// sends 1 MiB through it in 1 ms steps (far below the 1 s minimum RTO, so
/// any loss would show as a retransmission); returns whether every byte
/// arrived in order.
func transferOneMebibyte<Interface: NetworkInterface>(from a: NetworkStack<Interface>, to b: NetworkStack<Interface>) throws -> Bool {
    let listener = try b.listen(port: 80)
    let client = try a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    let size = 1 << 20
    let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ $0 >> 10) }
    var sent = 0
    var received: [UInt8] = []
    var server: SocketHandle?
    var now: UInt64 = 0
    for _ in 0..<20_000 where received.count < size {
        now += 1_000_000
        a.poll(now: now)
        b.poll(now: now)
        if server == nil { server = try? b.accept(listener) }
        while sent < size, let n = try? a.write(client, Array(data[sent..<min(size, sent + 65536)])), n > 0 { sent += n }
        if let server { while let bytes = try? b.read(server, maximumCount: 1 << 20), !bytes.isEmpty { received += bytes } }
    }
    return received == data
}

@Test func aFullTransmitRingDelaysFramesInsteadOfLosingThem() throws {
    let wire = RingWire(capacity: 8)
    let a = NetworkStack<RingPort>(configuration: NetworkStackConfiguration())
    let b = NetworkStack<RingPort>(configuration: NetworkStackConfiguration())
    a.attach(RingPort(wire: wire, side: 0, macAddress: TwoHosts.macA), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24))
    b.attach(RingPort(wire: wire, side: 1, macAddress: TwoHosts.macB), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressB, prefixLength: 24))
    #expect(try transferOneMebibyte(from: a, to: b))
    #expect(a.statistics.transmitDeferred > 0)
    #expect(a.statistics.transmitErrors == 0)
    #expect(a.statistics.tcpRetransmissions == 0)
    #expect(a.transmitBacklogCount(interface: 0) == 0)
}
