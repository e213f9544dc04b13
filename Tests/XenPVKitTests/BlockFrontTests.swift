// blkfront tests: Xen public/io/blkif.h over the ring against the blkback
// model, the xenbus handshake through the xenstore model, and faults.
import CXen
import DeviceInterfaces
import Testing
@testable import XenPVKit

typealias SimBlockFront = BlockFront<SimulatedHypervisor, SimulatedPages>

/// A guest with a grant table, a xenstore and one vbd with its backend.
struct BlockRig {
    let hypervisor: SimulatedHypervisor
    let daemon: XenStoreDaemonModel
    let backend: BlockBackendModel
    let grants: GrantTable
    var store: XenStore<SimulatedHypervisor>
    let memory: SimulatedMemory
    let nodePath = "/local/domain/5/device/vbd/768"
    /// Pages and free grants before the frontend existed.
    let baselinePages: Int
    let baselineGrants: Int

    init(sectors: Int = 256, sectorSize: Int = 512, features: [String: String] = ["feature-flush-cache": "1"], info: Int = 0) {
        memory = SimulatedMemory()
        hypervisor = SimulatedHypervisor(memory: memory)
        daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        var hypercalls = hypervisor
        let table = memory.allocate()!
        try! hypercalls.addToPhysmap(space: UInt32(XENMAPSPACE_grant_table), index: 0, gpfn: UInt(memory.frame(of: table)))
        grants = GrantTable(base: table, frames: 1)
        backend = BlockBackendModel(
            hypervisor: hypervisor, store: daemon, frontendPath: nodePath, sectors: sectors, sectorSize: sectorSize,
            features: features, info: info)
        store = daemon.client(maximumWaits: 200)
        baselinePages = memory.allocatedCount
        baselineGrants = grants.freeCount
    }

    mutating func connect() throws -> SimBlockFront {
        try SimBlockFront.connect(nodePath: nodePath, store: &store, memory: SimulatedPages(memory: memory), grants: grants)
    }

    /// Polls (letting the backend run in between) until nothing changes.
    func drain(_ front: inout SimBlockFront, rounds: Int = 8) -> [BlockCompletion] {
        var all: [BlockCompletion] = []
        for _ in 0..<rounds {
            hypervisor.runBackends()
            _ = front.pollCompletions { all.append($0) }
        }
        return all
    }

    var leakedPages: Int { memory.allocatedCount - baselinePages }
}

final class Buffer {
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int, fill: (Int) -> UInt8 = { _ in 0 }) {
        // Deliberately not page-aligned.
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: count + 3, alignment: 16)
        bytes = UnsafeMutableRawBufferPointer(rebasing: raw[3...])
        for index in 0..<count { bytes[index] = fill(index) }
    }
    deinit { UnsafeMutableRawBufferPointer(start: bytes.baseAddress! - 3, count: bytes.count + 3).deallocate() }
}

@Suite struct BlockFrontTests {
    @Test func theHandshakeConnectsAndReadsTheGeometry() throws {
        var rig = BlockRig(sectors: 1000, sectorSize: 512, features: ["feature-flush-cache": "1", "feature-max-indirect-segments": "64"], info: 0)
        let front = try rig.connect()
        #expect(front.isConnected)
        #expect(front.sectorCount == 1000 && front.sectorSize == 512 && !front.isReadOnly)
        #expect(front.supportsFlush && !front.supportsBarrier)
        #expect(front.maximumIndirectSegments == 64)
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "4")
        #expect(rig.daemon.nodes[rig.nodePath + "/protocol"] == "x86_64-abi")
        #expect(rig.daemon.nodes[rig.nodePath + "/event-channel"] == String(front.port))
        #expect(rig.backend.state == .connected)
        #expect(front.device.backendStates == [.initWait, .connected])
        #expect(front.device.backendDomain == 0)
    }

    @Test func writesAndReadsRoundTripThroughBouncePages() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        let pattern = Buffer(count: 3 * 4096 + 1024) { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
        try front.submit(BlockRequest(operation: .write, sector: 10, buffer: pattern.bytes, tag: 1))
        var done = rig.drain(&front)
        #expect(done.count == 1)
        #expect(try done.first?.result.get() == pattern.bytes.count)
        #expect(Array(rig.backend.disk[5120..<5120 + pattern.bytes.count]) == Array(pattern.bytes))

        let back = Buffer(count: pattern.bytes.count)
        try front.submit(BlockRequest(operation: .read, sector: 10, buffer: back.bytes, tag: 2))
        done = rig.drain(&front)
        #expect(done.map(\.tag) == [2])
        #expect(Array(back.bytes) == Array(pattern.bytes))
        #expect(rig.backend.segmentCounts == [4, 4])
        #expect(rig.leakedPages == 1, "only the ring page stays allocated")
        #expect(rig.grants.freeCount == rig.baselineGrants - 1, "only the ring grant stays")
    }

    @Test func largeRequestsAreSplitWithoutIndirectDescriptors() throws {
        var rig = BlockRig(features: [:])
        var front = try rig.connect()
        let data = Buffer(count: 30 * 4096) { UInt8(truncatingIfNeeded: $0 >> 3) }
        try front.submit(BlockRequest(operation: .write, sector: 0, buffer: data.bytes, tag: 9))
        let done = rig.drain(&front)
        #expect(done.count == 1, "one completion for all parts")
        #expect(try done.first?.result.get() == 30 * 4096)
        #expect(rig.backend.segmentCounts == [11, 11, 8])
        #expect(rig.backend.operations == [BLKIF_OP_WRITE, BLKIF_OP_WRITE, BLKIF_OP_WRITE])
        #expect(Array(rig.backend.disk[0..<data.bytes.count]) == Array(data.bytes))
    }

    @Test func indirectDescriptorsCarryLargeRequestsWhenOffered() throws {
        var rig = BlockRig(features: ["feature-max-indirect-segments": "32"])
        var front = try rig.connect()
        let data = Buffer(count: 30 * 4096) { UInt8(truncatingIfNeeded: $0 * 5) }
        try front.submit(BlockRequest(operation: .write, sector: 4, buffer: data.bytes, tag: 3))
        _ = rig.drain(&front)
        #expect(rig.backend.operations == [BLKIF_OP_INDIRECT])
        #expect(rig.backend.segmentCounts == [30])
        let back = Buffer(count: data.bytes.count)
        try front.submit(BlockRequest(operation: .read, sector: 4, buffer: back.bytes, tag: 4))
        let done = rig.drain(&front)
        #expect(try done.first?.result.get() == data.bytes.count)
        #expect(Array(back.bytes) == Array(data.bytes))
        #expect(rig.leakedPages == 1)
    }

    @Test func flushUsesWhatTheBackendOffers() throws {
        let empty = Buffer(count: 0)
        var rig = BlockRig(features: ["feature-flush-cache": "1"])
        var front = try rig.connect()
        try front.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 1))
        _ = rig.drain(&front)
        #expect(rig.backend.operations == [BLKIF_OP_FLUSH_DISKCACHE])

        var barrierRig = BlockRig(features: ["feature-barrier": "1"])
        var barrierFront = try barrierRig.connect()
        try barrierFront.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 1))
        let done = barrierRig.drain(&barrierFront)
        #expect(barrierRig.backend.operations == [BLKIF_OP_WRITE_BARRIER])
        #expect(try done.first?.result.get() == 0)

        var plainRig = BlockRig(features: [:])
        var plainFront = try plainRig.connect()
        #expect(throws: BlockDeviceError.unsupported) {
            try plainFront.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 1))
        }
    }

    @Test func requestsOutsideTheDiskOrToAReadOnlyDiskAreRefused() throws {
        var rig = BlockRig(sectors: 16, info: Int(VDISK_READONLY))
        var front = try rig.connect()
        #expect(front.isReadOnly)
        let data = Buffer(count: 1024)
        #expect(throws: BlockDeviceError.readOnly) { try front.submit(BlockRequest(operation: .write, sector: 0, buffer: data.bytes, tag: 1)) }
        #expect(throws: BlockDeviceError.outOfRange(sector: 15, count: 2, capacity: 16)) {
            try front.submit(BlockRequest(operation: .read, sector: 15, buffer: data.bytes, tag: 1))
        }
        let odd = Buffer(count: 100)
        #expect(throws: BlockDeviceError.misaligned(length: 100, sectorSize: 512)) {
            try front.submit(BlockRequest(operation: .read, sector: 0, buffer: odd.bytes, tag: 1))
        }
        #expect(front.outstandingRequestCount == 0)
        let empty = Buffer(count: 0)
        try front.submit(BlockRequest(operation: .read, sector: 3, buffer: empty.bytes, tag: 8))
        let done = rig.drain(&front)
        #expect(done.map(\.tag) == [8])
        #expect(try done.first?.result.get() == 0)
        #expect(rig.backend.operations.isEmpty, "an empty transfer never reaches the ring")
    }

    @Test func aFullRingRefusesWithoutLeaking() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .silent
        let data = Buffer(count: 512)
        var accepted = 0
        while (try? front.submit(BlockRequest(operation: .read, sector: 0, buffer: data.bytes, tag: UInt64(accepted)))) != nil {
            accepted += 1
        }
        #expect(accepted == 32)
        #expect(throws: BlockDeviceError.queueFull) { try front.submit(BlockRequest(operation: .read, sector: 0, buffer: data.bytes, tag: 99)) }
        #expect(front.outstandingRequestCount == 32)
        #expect(rig.leakedPages == 33)
    }

    @Test func aBackendErrorFailsTheRequestAndFreesItsGrants() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .errorStatus
        let data = Buffer(count: 8192)
        try front.submit(BlockRequest(operation: .read, sector: 0, buffer: data.bytes, tag: 77))
        let done = rig.drain(&front)
        #expect(done.map(\.tag) == [77])
        #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.backendErrorCode)) { _ = try done[0].result.get() }
        #expect(rig.leakedPages == 1)
        #expect(rig.grants.freeCount == rig.baselineGrants - 1)
        #expect(front.isConnected, "one failed request does not end the device")
    }

    @Test func anUnknownResponseIDIsReportedAndLosesNoRequest() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .unknownIDs
        let data = Buffer(count: 512)
        try front.submit(BlockRequest(operation: .read, sector: 0, buffer: data.bytes, tag: 5))
        #expect(rig.drain(&front).isEmpty)
        #expect(front.protocolErrors == [.unknownResponseID(1000)])
        #expect(front.outstandingRequestCount == 1)
        front.abandonOutstanding()
        var done: [BlockCompletion] = []
        _ = front.pollCompletions { done.append($0) }
        #expect(done.map(\.tag) == [5])
        #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.abandonedCode)) { _ = try done[0].result.get() }
        // The backend unmapped the data page but still maps the ring.
        #expect(rig.leakedPages == 1)
        rig.backend.close()
        _ = front.pollCompletions { _ in }
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aSilentBackendIsAbandonedAndItsGrantsFreedOnceUnmapped() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .silent
        let buffers = (0..<3).map { _ in Buffer(count: 4096 + 512) }
        for (index, buffer) in buffers.enumerated() {
            try front.submit(BlockRequest(operation: .write, sector: UInt64(index * 16), buffer: buffer.bytes, tag: UInt64(index)))
        }
        #expect(rig.drain(&front).isEmpty)
        #expect(rig.hypervisor.mappedGrantCount == 7, "six data pages and the ring")

        front.abandonOutstanding()
        var done: [BlockCompletion] = []
        _ = front.pollCompletions { done.append($0) }
        #expect(done.map(\.tag).sorted() == [0, 1, 2], "every request completes exactly once")
        for completion in done {
            #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.abandonedCode)) { _ = try completion.result.get() }
        }
        #expect(front.quarantinedPageCount == 7)
        #expect(rig.grants.awaitingReleaseCount == 7)
        #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.disconnectedCode)) {
            try front.submit(BlockRequest(operation: .read, sector: 0, buffer: buffers[0].bytes, tag: 9))
        }

        rig.backend.close()
        #expect(front.pollCompletions { _ in } == 0, "no second completion")
        #expect(front.quarantinedPageCount == 0)
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aBackendClosingMidConnectionFailsTheRest() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .closeAfter(1)
        let buffers = (0..<3).map { _ in Buffer(count: 512) }
        for (index, buffer) in buffers.enumerated() {
            try front.submit(BlockRequest(operation: .read, sector: 0, buffer: buffer.bytes, tag: UInt64(index)))
        }
        var done = rig.drain(&front)
        #expect(done.map(\.tag) == [0])
        #expect(rig.daemon.nodes[rig.backend.backendPath + "/state"] == "5")
        try front.backendChanged(store: &rig.store)
        _ = front.pollCompletions { done.append($0) }
        #expect(done.map(\.tag) == [0, 1, 2])
        for completion in done.dropFirst() {
            #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.disconnectedCode)) { _ = try completion.result.get() }
        }
        #expect(!front.isConnected)
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "5")
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func anImpossibleResponseProducerEndsTheDevice() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        rig.backend.fault = .silent
        let data = Buffer(count: 512)
        try front.submit(BlockRequest(operation: .read, sector: 0, buffer: data.bytes, tag: 1))
        rig.hypervisor.runBackends()
        rig.backend.ring!.shared.responseProducer = 500
        var done: [BlockCompletion] = []
        _ = front.pollCompletions { done.append($0) }
        #expect(front.protocolErrors == [.ring(.responseProducerOverflow(producer: 500, consumer: 0, size: 32))])
        #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.protocolErrorCode)) { _ = try done.first?.result.get() }
    }

    @Test func anOrderlyDisconnectClosesBothEnds() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        try front.disconnect(store: &rig.store)
        #expect(front.device.state == .closed)
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "6")
        #expect(rig.backend.state == .closing)
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aBackendClosingDuringTheHandshakeIsReported() throws {
        var rig = BlockRig()
        rig.backend.refusesConnection = true
        #expect(throws: XenbusError.backendGone(state: .closing, expected: .connected)) { _ = try rig.connect() }
        #expect(rig.leakedPages == 0)
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }

    @Test func aBackendThatNeverConnectsIsReported() throws {
        var rig = BlockRig()
        rig.store.maximumWaits = 20
        rig.backend.state = .closed  // the model stops driving the handshake
        #expect(throws: XenbusError.store(.noResponse(request: UInt32(XS_WATCH_EVENT.rawValue), waits: 20))) { _ = try rig.connect() }
        #expect(rig.leakedPages == 0, "the ring page and its grant are given back")
        #expect(rig.grants.freeCount == rig.baselineGrants)
    }
}

@Suite struct XenbusStateTests {
    @Test func theFrontendStateMachineAllowsOnlyForwardSteps() {
        #expect(XenbusDeviceState.initialising.allowsFrontend(to: .initWait))
        #expect(XenbusDeviceState.initWait.allowsFrontend(to: .initialised))
        #expect(XenbusDeviceState.initialised.allowsFrontend(to: .connected))
        #expect(XenbusDeviceState.connected.allowsFrontend(to: .closing))
        #expect(XenbusDeviceState.closing.allowsFrontend(to: .closed))
        #expect(XenbusDeviceState.closed.allowsFrontend(to: .initialising))
        #expect(!XenbusDeviceState.connected.allowsFrontend(to: .initialised))
        #expect(!XenbusDeviceState.closed.allowsFrontend(to: .connected))
        #expect(!XenbusDeviceState.closing.allowsFrontend(to: .connected))
        #expect(XenbusDeviceState(wire: Array("4".utf8)) == .connected)
        #expect(XenbusDeviceState(wire: Array("9".utf8)) == nil)
        #expect(XenbusDeviceState(rawValue: UInt32(XenbusStateClosing.rawValue)) == .closing)
    }

    @Test func anInvalidTransitionIsRefused() throws {
        var rig = BlockRig()
        var device = try XenbusDevice(nodePath: rig.nodePath, store: &rig.store)
        #expect(throws: XenbusError.invalidTransition(from: .initialising, to: .initialising)) {
            try device.switchState(to: .initialising, store: &rig.store)
        }
        try device.switchState(to: .closing, store: &rig.store)
        #expect(rig.daemon.nodes[rig.nodePath + "/state"] == "5")
        #expect(throws: XenbusError.invalidTransition(from: .closing, to: .connected)) {
            try device.switchState(to: .connected, store: &rig.store)
        }
    }
}
