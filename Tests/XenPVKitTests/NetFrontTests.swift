// netfront tests: Xen public/io/netif.h tx/rx rings against the netback
// model, the xenbus handshake, grant recycling and faults.
import CXen
import DeviceInterfaces
import Testing
@testable import XenPVKit

typealias SimNetFront = NetFront<SimulatedHypervisor, SimulatedPages>

struct NetRig {
    let hypervisor: SimulatedHypervisor
    let daemon: XenStoreDaemonModel
    let backend: NetworkBackendModel
    let grants: GrantTable
    var store: XenStore<SimulatedHypervisor>
    let memory: SimulatedMemory
    let nodePath = "/local/domain/5/device/vif/0"
    let baselinePages: Int
    let baselineGrants: Int

    init(rxCopy: Bool = true, mtu: Int? = nil) {
        memory = SimulatedMemory(pages: 1024)
        hypervisor = SimulatedHypervisor(memory: memory)
        daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        var hypercalls = hypervisor
        let table = memory.allocate()!
        try! hypercalls.addToPhysmap(space: UInt32(XENMAPSPACE_grant_table), index: 0, gpfn: UInt(memory.frame(of: table)))
        grants = GrantTable(base: table, frames: 1)
        backend = NetworkBackendModel(hypervisor: hypervisor, store: daemon, frontendPath: nodePath, rxCopy: rxCopy, mtu: mtu)
        store = daemon.client(maximumWaits: 200)
        baselinePages = memory.allocatedCount
        baselineGrants = grants.freeCount
    }

    mutating func connect(receiveBuffers: Int = 16, transmitSlots: Int = 8) throws -> SimNetFront {
        try SimNetFront.connect(
            nodePath: nodePath, store: &store, memory: SimulatedPages(memory: memory), grants: grants,
            receiveBuffers: receiveBuffers, transmitSlots: transmitSlots)
    }

    var leakedPages: Int { memory.allocatedCount - baselinePages }
}

func frame(_ seed: Int, length: Int = 60) -> [UInt8] {
    (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
}

func send(_ front: inout SimNetFront, _ bytes: [UInt8]) throws(NetworkInterfaceError) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    try front.send(frame: UnsafeRawBufferPointer(buffer))
}

func receiveAll(_ front: inout SimNetFront, limit: Int = 1000) throws -> [[UInt8]] {
    var frames: [[UInt8]] = []
    _ = try front.receive(limit: limit) { frames.append(Array($0)) }
    return frames
}

@Suite struct NetFrontTests {
    @Test func theHandshakePublishesRingsAndReadsTheMAC() throws {
        var rig = NetRig()
        let front = try rig.connect()
        #expect(front.isLinkUp)
        #expect(front.macAddress == MACAddress(0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C))
        #expect(front.mtu == 1500)
        #expect(rig.daemon.nodes[rig.nodePath + "/request-rx-copy"] == "1")
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "4")
        #expect(rig.backend.state == .connected)
        #expect(front.postedReceiveBufferCount == 16)
        #expect(rig.grants.freeCount == rig.baselineGrants - 18, "two rings and sixteen receive buffers")
    }

    @Test func aBackendWithoutRxCopyIsRefusedWithoutLeaks() throws {
        var rig = NetRig(rxCopy: false)
        #expect(throws: XenbusError.missingFeature("feature-rx-copy")) { _ = try rig.connect() }
        #expect(rig.leakedPages == 0)
    }

    @Test func framesGoOutIntact() throws {
        var rig = NetRig()
        var front = try rig.connect()
        for seed in 0..<20 {
            try send(&front, frame(seed, length: 60 + seed * 50))
            rig.hypervisor.runBackends()
        }
        _ = try receiveAll(&front)
        #expect(rig.backend.transmitted == (0..<20).map { frame($0, length: 60 + $0 * 50) })
        #expect(front.statistics.framesSent == 20)
        #expect(front.statistics.bytesSent == (0..<20).reduce(0) { $0 + 60 + $1 * 50 })
        #expect(front.outstandingTransmitCount == 0)
        #expect(rig.leakedPages == 2 + 16)
    }

    @Test func receivedFramesArriveAndBuffersAreRecycled() throws {
        var rig = NetRig()
        var front = try rig.connect(receiveBuffers: 8)
        let grantsInUse = rig.baselineGrants - rig.grants.freeCount
        var received: [[UInt8]] = []
        // Five times as many frames as buffers: each buffer is reused.
        for round in 0..<5 {
            rig.backend.incoming = (0..<8).map { frame(round * 8 + $0, length: 100 + $0) }
            rig.hypervisor.runBackends()
            received += try receiveAll(&front)
        }
        #expect(received == (0..<40).map { frame($0, length: 100 + $0 % 8) })
        #expect(front.statistics.framesReceived == 40)
        #expect(front.postedReceiveBufferCount == 8)
        #expect(rig.baselineGrants - rig.grants.freeCount == grantsInUse, "no grant per frame: buffers keep theirs")
    }

    @Test func receiveRespectsItsLimit() throws {
        var rig = NetRig()
        var front = try rig.connect()
        rig.backend.incoming = (0..<5).map { frame($0) }
        rig.hypervisor.runBackends()
        var count = 0
        #expect(try front.receive(limit: 2) { _ in count += 1 } == 2)
        #expect(try front.receive(limit: 10) { _ in count += 1 } == 3)
        #expect(count == 5)
    }

    @Test func aFrameSpanningSeveralBuffersIsReassembled() throws {
        var rig = NetRig(mtu: 9000)
        var front = try rig.connect()
        // Capped without feature-sg (PeerConformanceTests); a backend that
        // splits frames over several slots anyway is still understood.
        #expect(front.mtu == 1500)
        rig.backend.canScatterGather = true
        let jumbo = frame(7, length: 9014)
        rig.backend.incoming = [jumbo, frame(8)]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [jumbo, frame(8)])
    }

    @Test func receiveErrorsAreCountedAndTheBufferReposted() throws {
        var rig = NetRig()
        var front = try rig.connect()
        rig.backend.deliverError(NETIF_RSP_ERROR)
        rig.backend.deliverError(NETIF_RSP_DROPPED)
        #expect(try receiveAll(&front).isEmpty)
        #expect(front.statistics.receiveErrors == 1)
        #expect(front.statistics.receiveDropped == 1)
        #expect(front.postedReceiveBufferCount == 16)
        rig.backend.incoming = [frame(1)]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [frame(1)])
    }

    @Test func extraInfoSlotsAreSkippedAndTheirBuffersReposted() throws {
        var rig = NetRig()
        var front = try rig.connect(receiveBuffers: 8)
        rig.backend.deliverWithExtraInfo(frame(3), extras: 2)
        rig.backend.incoming = [frame(4)]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [frame(3), frame(4)])
        #expect(front.postedReceiveBufferCount == 8)
        #expect(front.protocolErrors.isEmpty)
        // All eight buffers still cycle: the slots of the extras came back.
        for round in 0..<3 {
            rig.backend.incoming = (0..<8).map { frame(round * 8 + $0) }
            rig.hypervisor.runBackends()
            #expect(try receiveAll(&front).count == 8)
        }
    }

    @Test func aReceiveResponseWithTheWrongIDIsDroppedAndReported() throws {
        var rig = NetRig()
        var front = try rig.connect(receiveBuffers: 8)
        rig.backend.deliverWithWrongID(frame(5))
        rig.backend.incoming = [frame(6)]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [frame(6)])
        #expect(front.protocolErrors == [.unknownReceiveID(100)])
        #expect(front.statistics.receiveErrors == 1)
        #expect(front.postedReceiveBufferCount == 8)
    }

    @Test func badFramesAreRefused() throws {
        var rig = NetRig()
        var front = try rig.connect()
        #expect(throws: NetworkInterfaceError.frameTooSmall(size: 10)) { try send(&front, frame(0, length: 10)) }
        #expect(throws: NetworkInterfaceError.frameTooLarge(size: 1600, limit: 1514)) { try send(&front, frame(0, length: 1600)) }
        #expect(front.outstandingTransmitCount == 0)
    }

    @Test func transmitErrorsFromTheBackendAreCounted() throws {
        var rig = NetRig()
        var front = try rig.connect()
        rig.backend.fault = .errorStatus
        try send(&front, frame(1))
        rig.hypervisor.runBackends()
        _ = try receiveAll(&front)
        #expect(front.statistics.transmitErrors == 1)
        #expect(front.statistics.framesSent == 0)
        #expect(rig.leakedPages == 18)
    }

    @Test func unknownTransmitIDsAreReportedAndNothingIsLost() throws {
        var rig = NetRig()
        var front = try rig.connect()
        rig.backend.fault = .unknownIDs
        try send(&front, frame(1))
        rig.hypervisor.runBackends()
        _ = try receiveAll(&front)
        #expect(front.protocolErrors == [.unknownTransmitID(500)])
        #expect(front.outstandingTransmitCount == 1)
        front.abandonOutstanding()
        #expect(front.statistics.transmitErrors == 1)
        #expect(!front.isLinkUp)
        rig.backend.close()
        #expect(throws: NetworkInterfaceError.linkDown) { try send(&front, frame(2)) }
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aSilentBackendFillsTheQueueThenIsAbandoned() throws {
        var rig = NetRig()
        var front = try rig.connect(transmitSlots: 4)
        rig.backend.fault = .silent
        for seed in 0..<4 {
            try send(&front, frame(seed))
            rig.hypervisor.runBackends()
        }
        #expect(throws: NetworkInterfaceError.transmitQueueFull) { try send(&front, frame(9)) }
        front.abandonOutstanding()
        #expect(front.statistics.transmitErrors == 4)
        #expect(front.quarantinedPageCount == 4 + 2, "mapped frames and both rings wait for the backend")
        rig.backend.close()
        #expect(throws: NetworkInterfaceError.linkDown) { _ = try front.receive(limit: 1) { _ in } }
        #expect(front.quarantinedPageCount == 0)
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aBackendClosingMidConnectionTakesTheLinkDown() throws {
        var rig = NetRig()
        var front = try rig.connect()
        try send(&front, frame(1))
        rig.backend.close()
        try front.backendChanged(store: &rig.store)
        #expect(!front.isLinkUp)
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "5")
        #expect(throws: NetworkInterfaceError.linkDown) { try send(&front, frame(2)) }
        #expect(front.statistics.transmitErrors == 1)
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func macAddressesParseStrictly() {
        #expect(SimNetFront.parseMAC(Array("00:16:3E:ff:01:02".utf8)) == MACAddress(0, 0x16, 0x3E, 0xFF, 1, 2))
        #expect(SimNetFront.parseMAC(Array("00:16:3e:ff:01".utf8)) == nil)
        #expect(SimNetFront.parseMAC(Array("00:16:3e:ff:01:0g".utf8)) == nil)
        #expect(SimNetFront.parseMAC(Array("000:16:3e:ff:01:02".utf8)) == nil)
    }
}
