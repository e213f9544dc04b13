// The stack sends in batches (beginTransmitBatch … endTransmitBatch) so a
// driver tells its device once per batch instead of once per frame; a
// device that only transmits what it was told about shows that no batch is
// left open and no frame is stranded.
import DeviceInterfaces
import Testing
@testable import NetStack

/// Two ports over a wire where a frame leaves only when its sender
/// "notifies" the device: at once outside a batch, at the batch's end
/// inside one.
final class NotifiedWire {
    var queued: [[[UInt8]]] = [[], []]
    var inboxes: [[[UInt8]]] = [[], []]
    var notifications = [0, 0]
    var framesSent = [0, 0]
    var framesSentInBatch = [0, 0]
    var batchesOpen = [0, 0]

    func notify(from side: Int) {
        notifications[side] += 1
        inboxes[1 - side] += queued[side]
        queued[side].removeAll()
    }
}

struct NotifiedPort: NetworkInterface {
    let wire: NotifiedWire
    let side: Int
    let macAddress: MACAddress
    var mtu: Int { 1500 }
    var isLinkUp: Bool { true }
    var statistics = NetworkInterfaceStatistics()
    var batching = false

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        wire.queued[side].append(Array(frame))
        wire.framesSent[side] += 1
        if batching { wire.framesSentInBatch[side] += 1 } else { wire.notify(from: side) }
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        let count = min(limit, wire.inboxes[side].count)
        for frame in wire.inboxes[side].prefix(count) { frame.withUnsafeBytes { body($0) } }
        wire.inboxes[side].removeFirst(count)
        return count
    }

    mutating func beginTransmitBatch() {
        #expect(!batching, "a batch began inside a batch")
        batching = true
        wire.batchesOpen[side] += 1
    }

    mutating func endTransmitBatch() {
        #expect(batching, "a batch ended that had not begun")
        batching = false
        wire.batchesOpen[side] -= 1
        if !wire.queued[side].isEmpty { wire.notify(from: side) }
    }
}

@Test func bulkTransfersNotifyTheDeviceOncePerBatchAndStrandNothing() throws {
    let wire = NotifiedWire()
    let a = NetworkStack<NotifiedPort>(configuration: NetworkStackConfiguration())
    let b = NetworkStack<NotifiedPort>(configuration: NetworkStackConfiguration())
    a.attach(NotifiedPort(wire: wire, side: 0, macAddress: TwoHosts.macA), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24))
    b.attach(NotifiedPort(wire: wire, side: 1, macAddress: TwoHosts.macB), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressB, prefixLength: 24))
    #expect(try transferOneMebibyte(from: a, to: b))
    #expect(wire.batchesOpen == [0, 0])
    #expect(wire.queued[0].isEmpty && wire.queued[1].isEmpty)
    #expect(a.statistics.tcpRetransmissions == 0)
    // Data segments leave in batches: far fewer notifications than frames.
    #expect(wire.framesSentInBatch[0] > wire.framesSent[0] * 9 / 10, "\(wire.framesSentInBatch[0]) of \(wire.framesSent[0]) in batches")
    #expect(wire.notifications[0] * 4 < wire.framesSent[0], "\(wire.notifications[0]) notifications for \(wire.framesSent[0]) frames")
}
