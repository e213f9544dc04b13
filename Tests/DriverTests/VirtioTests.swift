// virtio: transports, negotiation, virtio-blk, virtio-net and virtio-rng
// against the device model, with the faults of issue 5 injected.
import DeviceInterfaces
import Testing

@testable import BareMetalKit

/// A machine with one virtio device on PCI slot 3.
final class VirtioRig {
    let arena = DMAArena()
    let bus = MMIOBus()
    let space = PCIConfigurationModel()
    let model: VirtioDeviceModel
    let function = PCIAddress(bus: 0, device: 3, function: 0)

    init(_ behavior: VirtioBehavior, legacy: Bool = false, queueSize: Int = 64) {
        model = VirtioDeviceModel(arena: arena, behavior: behavior, legacy: legacy, queueSize: queueSize)
        model.attach(to: space, bus: bus, slot: 3)
    }

    var dma: TestDMA { TestDMA(arena: arena) }

    func modern() throws -> VirtioPCIModernTransport<BusWindow> {
        try VirtioPCIModernTransport(function: function, access: space, mapper: BusMapper(bus: bus))
    }

    func legacy() throws -> VirtioPCILegacyTransport<BusWindow> {
        try VirtioPCILegacyTransport(function: function, access: space, ports: BusPorts(bus: bus))
    }
}

func pattern(count: Int, seed: UInt64) -> [UInt8] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

// MARK: transport and negotiation

@Test func modernTransportFindsItsStructuresAndNegotiates() throws {
    let rig = VirtioRig(BlockBehavior(sectors: 64))
    let transport = try rig.modern()
    #expect(transport.notifyOffsetMultiplier == 4 && transport.queueCount == 1)
    #expect(rig.space.read16(rig.function, offset: 0x04) & 0x6 == 0x6)  // memory + bus master
    let core = try VirtioDeviceCore(transport: transport, dma: rig.dma, required: 0, optional: VirtioFeature.eventIndex | 1 << 9)
    #expect(core.features == VirtioFeature.version1 | VirtioFeature.eventIndex | 1 << 9)
    #expect(rig.model.driverFeatures == core.features)
    #expect(rig.model.status == VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
    #expect(rig.model.resets == 1)
    #expect(rig.model.violations.isEmpty && rig.bus.unmappedAccesses.isEmpty)
}

@Test func rejectedFeaturesOKReportsOfferedAndAcceptedBits() throws {
    let behavior = BlockBehavior(sectors: 8)
    let rig = VirtioRig(behavior)
    rig.model.rejectFeaturesOK = true
    let offered = behavior.features | VirtioFeature.version1
    let accepted = VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors | 1 << 1 | 1 << 2 | 1 << 9
    #expect(throws: VirtioError.featureNegotiationFailed(offered: offered, accepted: accepted)) {
        _ = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    }
    #expect(rig.model.status & VirtioStatus.failed != 0)
    #expect(rig.model.status & VirtioStatus.driverOK == 0)
}

@Test func missingRequiredFeaturesAreReported() throws {
    let behavior = BlockBehavior(sectors: 8)
    let rig = VirtioRig(behavior)
    let offered = behavior.features | VirtioFeature.version1
    #expect(throws: VirtioError.requiredFeaturesMissing(offered: offered, required: VirtioFeature.version1 | 1 << 40)) {
        _ = try VirtioDeviceCore(transport: try rig.modern(), dma: rig.dma, required: 1 << 40, optional: 0)
    }
    #expect(rig.model.status & VirtioStatus.failed != 0)
}

@Test func capabilityOutsideItsBARIsRejected() throws {
    let rig = VirtioRig(BlockBehavior(sectors: 8))
    // Point the device-configuration capability past the 16 KiB BAR.
    let function = rig.space.functions[rig.function]!
    let deviceCap = try PCICapability.list(rig.function, access: rig.space)[3].offset
    function.set32(deviceCap + 8, 0x3F80)
    #expect(throws: VirtioError.pci(.regionOutsideBAR(function: rig.function, bar: 4, offset: 0x3F80, length: 0x100, barSize: 0x4000))) {
        _ = try rig.modern()
    }
}

// MARK: virtio-blk

@Test(arguments: [false, true])
func blockWritesAndReadsBackAPatternAcrossTheDisk(legacy: Bool) throws {
    let behavior = BlockBehavior(sectors: 256)
    let rig = VirtioRig(behavior, legacy: legacy)
    var disk: VirtioBlock<VirtioPCIModernTransport<BusWindow>, TestDMA>? = nil
    var legacyDisk: VirtioBlock<VirtioPCILegacyTransport<BusWindow>, TestDMA>? = nil
    if legacy { legacyDisk = try VirtioBlock(transport: try rig.legacy(), dma: rig.dma) } else { disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma) }
    func perform(_ request: BlockRequest) throws -> Int {
        if legacy { return try legacyDisk!.perform(request) }
        return try disk!.perform(request)
    }
    #expect((legacy ? legacyDisk!.sectorCount : disk!.sectorCount) == 256)
    let data = pattern(count: 256 * 512, seed: legacy ? 7 : 8)
    let buffer = rig.arena.buffer(count: 32 * 512)
    for chunk in 0..<8 {
        buffer.copyBytes(from: data[chunk * 16384..<(chunk + 1) * 16384])
        #expect(try perform(BlockRequest(operation: .write, sector: UInt64(chunk * 32), buffer: buffer, tag: UInt64(chunk))) == 16384)
    }
    #expect(behavior.disk == data)
    #expect(try perform(BlockRequest(operation: .flush, sector: 0, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: 99)) == 0)
    #expect(behavior.flushes == 1)
    for chunk in 0..<8 {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        _ = try perform(BlockRequest(operation: .read, sector: UInt64(chunk * 32), buffer: buffer, tag: 100))
        #expect(Array(buffer) == Array(data[chunk * 16384..<(chunk + 1) * 16384]))
    }
    let scratch = rig.arena.buffer(count: 20)
    let identifier = legacy ? try legacyDisk!.identifier(scratch: scratch) : try disk!.identifier(scratch: scratch)
    #expect(identifier == behavior.serial)
    #expect(rig.model.violations.isEmpty && behavior.violations.isEmpty)
    #expect(rig.model.status & VirtioStatus.driverOK != 0)
}

@Test func requestsLargerThanSegMaxAreSplit() throws {
    let behavior = BlockBehavior(sectors: 512, segMax: 2, sizeMax: 4096)
    let rig = VirtioRig(behavior)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    #expect(disk.maximumSegments == 2 && disk.maximumSegmentSize == 4096)
    let data = pattern(count: 65536 + 1024, seed: 3)
    let buffer = rig.arena.buffer(count: data.count)
    buffer.copyBytes(from: data)
    #expect(try disk.perform(BlockRequest(operation: .write, sector: 10, buffer: buffer, tag: 1)) == data.count)
    #expect(disk.virtioRequestsIssued == 9)
    #expect(behavior.largestRequestSegments == 2)
    #expect(Array(behavior.disk[5120..<5120 + data.count]) == data)
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    #expect(try disk.perform(BlockRequest(operation: .read, sector: 10, buffer: buffer, tag: 2)) == data.count)
    #expect(Array(buffer) == data)
    #expect(behavior.violations.isEmpty && rig.model.violations.isEmpty)
}

@Test func severalRequestsInFlightCompleteOutOfOrder() throws {
    let behavior = BlockBehavior(sectors: 64)
    behavior.holdCompletions = true
    let rig = VirtioRig(behavior)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    var buffers: [UnsafeMutableRawBufferPointer] = []
    for index in 0..<5 {
        let buffer = rig.arena.buffer(count: 1024, fill: UInt8(index + 1))
        buffers.append(buffer)
        try disk.submit(BlockRequest(operation: .write, sector: UInt64(index * 2), buffer: buffer, tag: UInt64(10 + index)))
    }
    #expect(disk.outstandingRequests == 5)
    #expect(disk.pollCompletions { _ in } == 0)
    behavior.releaseHeld(rig.model)
    var tags: [UInt64] = []
    var lengths: [Int?] = []
    let count = disk.pollCompletions { completion in
        tags.append(completion.tag)
        lengths.append(try? completion.result.get())
    }
    #expect(count == 5)
    #expect(tags == [14, 13, 12, 11, 10])
    #expect(lengths == [1024, 1024, 1024, 1024, 1024])
    for index in 0..<5 { #expect(behavior.disk[index * 1024] == UInt8(index + 1)) }
}

@Test func deviceStatusErrorsAndGeometryAreReported() throws {
    let behavior = BlockBehavior(sectors: 16)
    behavior.failSector = 3
    let rig = VirtioRig(behavior)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    let buffer = rig.arena.buffer(count: 512)
    #expect(throws: BlockDeviceError.deviceError(code: VirtioError.requestFailed(status: 1).code << 8 | 1)) {
        try disk.perform(BlockRequest(operation: .read, sector: 3, buffer: buffer, tag: 1))
    }
    #expect(throws: BlockDeviceError.outOfRange(sector: 16, count: 1, capacity: 16)) {
        try disk.submit(BlockRequest(operation: .read, sector: 16, buffer: buffer, tag: 2))
    }
    #expect(disk.fault == nil)  // a request error is not a device fault
    #expect(try disk.perform(BlockRequest(operation: .read, sector: 2, buffer: buffer, tag: 3)) == 512)

    let readOnly = BlockBehavior(sectors: 16)
    readOnly.readOnly = true
    let rig2 = VirtioRig(readOnly)
    var roDisk = try VirtioBlock(transport: try rig2.modern(), dma: rig2.dma)
    #expect(roDisk.isReadOnly)
    #expect(throws: BlockDeviceError.readOnly) { try roDisk.submit(BlockRequest(operation: .write, sector: 0, buffer: buffer, tag: 1)) }
}

@Test func aFullQueueRefusesWithoutLosingRequests() throws {
    let behavior = BlockBehavior(sectors: 64, segMax: 1, sizeMax: 512)
    behavior.holdCompletions = true
    let rig = VirtioRig(behavior, queueSize: 4)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    var accepted = 0
    var refused = false
    for index in 0..<8 {
        do {
            try disk.submit(BlockRequest(operation: .write, sector: UInt64(index), buffer: rig.arena.buffer(count: 512), tag: UInt64(index)))
            accepted += 1
        } catch BlockDeviceError.queueFull {
            refused = true
        }
    }
    #expect(refused && accepted == 4)
    behavior.releaseHeld(rig.model)
    #expect(disk.pollCompletions { _ in } == accepted)
}

enum InjectedFault: CaseIterable, Sendable {
    case usedIndexJump, usedLengthTooLarge, unknownID, needsReset
}

@Test(arguments: InjectedFault.allCases)
func blockFaultsFailEveryRequestInFlightWithATypedError(fault: InjectedFault) throws {
    let behavior = BlockBehavior(sectors: 64)
    behavior.holdCompletions = true
    let rig = VirtioRig(behavior)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    // Each read buffer sits between canaries that must survive.
    var buffers: [UnsafeMutableRawBufferPointer] = []
    for index in 0..<3 {
        let block = rig.arena.buffer(count: 512 + 64, fill: 0xCC)
        let buffer = UnsafeMutableRawBufferPointer(rebasing: block[32..<544])
        buffers.append(block)
        try disk.submit(BlockRequest(operation: .read, sector: UInt64(index), buffer: buffer, tag: UInt64(index)))
    }
    let expected: VirtioError
    switch fault {
    case .usedIndexJump:
        rig.model.usedIndexJump = 7
        expected = .usedIndexJumped(queue: 0, previous: 0, current: 3 + 7)
    case .usedLengthTooLarge:
        rig.model.usedLengthInflation = 4096
        expected = .usedLengthTooLarge(queue: 0, id: UInt32(behavior.held.last!.head), length: 513 + 4096, capacity: 513)
    case .unknownID:
        rig.model.forgedID = 50
        expected = .unknownDescriptorID(queue: 0, id: 50)
    case .needsReset:
        rig.model.requestReset()
        expected = .deviceNeedsReset(status: rig.model.status)
    }
    if fault != .needsReset { behavior.releaseHeld(rig.model) }
    var results: [UInt64: Result<Int, BlockDeviceError>] = [:]
    #expect(disk.pollCompletions { results[$0.tag] = $0.result } == 3)
    for tag: UInt64 in 0..<3 { #expect(results[tag] == .failure(.deviceError(code: expected.code))) }
    #expect(disk.fault == expected)
    #expect(rig.model.status & VirtioStatus.failed != 0)
    #expect(throws: BlockDeviceError.deviceError(code: expected.code)) {
        try disk.submit(BlockRequest(operation: .read, sector: 0, buffer: buffers[0], tag: 9))
    }
    for block in buffers {
        #expect(block[0..<32].allSatisfy { $0 == 0xCC } && block[544..<576].allSatisfy { $0 == 0xCC })
    }
}

// MARK: virtio-net

func frame(size: Int, seed: UInt64) -> [UInt8] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 1, 0x88, 0xB5] + pattern(count: size - 14, seed: seed)
}

@Test(arguments: [false, true])
func networkSendsAndReceivesFramesOfEverySize(mergeable: Bool) throws {
    let behavior = NetworkBehavior(mergeable: mergeable)
    let rig = VirtioRig(behavior, queueSize: 32)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 32, receiveBufferSize: mergeable ? 256 : 2048)
    #expect(nic.macAddress == MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56))
    #expect(nic.isLinkUp && nic.mtu == 1500 && nic.usesMergeableBuffers == mergeable)
    var sent: [[UInt8]] = []
    var received: [[UInt8]] = []
    for size in stride(from: 60, through: 1514, by: 23) + [1514] {
        let outgoing = frame(size: size, seed: UInt64(size))
        try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
        sent.append(outgoing)
        let incoming = frame(size: size, seed: UInt64(size) + 5000)
        #expect(behavior.inject(incoming, into: rig.model))
        _ = try nic.receive(limit: 16) { received.append(Array($0)) }
    }
    #expect(behavior.transmitted == sent)
    #expect(received.count == sent.count)
    #expect(received == sent.indices.map { frame(size: sent[$0].count, seed: UInt64(sent[$0].count) + 5000) })
    #expect(nic.statistics.framesSent == sent.count && nic.statistics.framesReceived == sent.count)
    #expect(nic.statistics.bytesSent == sent.reduce(0) { $0 + $1.count })
    #expect(nic.statistics.receiveErrors == 0 && behavior.dropped == 0)
    // EVENT_IDX: the device never caught up with the refills, so the
    // receive queue was notified once, at start.
    #expect(rig.model.queues[0].notifications == 1)
    #expect(rig.model.violations.isEmpty)
}

@Test func receiveBuffersAreKeptFilled() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 16)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 16)
    var count = 0
    for round in 0..<5 {
        for index in 0..<16 { #expect(behavior.inject(frame(size: 100, seed: UInt64(round * 16 + index)), into: rig.model)) }
        #expect(!behavior.inject(frame(size: 100, seed: 0), into: rig.model))  // ring exhausted
        count += try nic.receive(limit: 100) { _ in }
    }
    #expect(count == 80)
    #expect(behavior.dropped == 5)
}

@Test func transmitSlotsAreReclaimedOnCompletion() throws {
    let behavior = NetworkBehavior(mergeable: false)
    behavior.holdTransmitCompletions = true
    let rig = VirtioRig(behavior, queueSize: 8)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 8)
    let outgoing = frame(size: 64, seed: 1)
    for _ in 0..<8 { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(throws: NetworkInterfaceError.transmitQueueFull) { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    for head in behavior.heldTransmits { rig.model.pushUsed(1, head: head, length: 0) }
    behavior.heldTransmits.removeAll()
    for _ in 0..<8 { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(behavior.transmitted.count == 16)
    #expect(throws: NetworkInterfaceError.frameTooSmall(size: 10)) { try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(throws: NetworkInterfaceError.frameTooLarge(size: 1515, limit: 1514)) {
        try [UInt8](repeating: 0, count: 1515).withUnsafeBytes { try nic.send(frame: $0) }
    }
}

@Test func linkStatusFollowsTheDevice() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, legacy: true)
    var nic = try VirtioNetwork(transport: try rig.legacy(), dma: rig.dma)
    behavior.linkUp = false
    rig.model.configurationChanged()
    #expect(!nic.isLinkUp)
    #expect(throws: NetworkInterfaceError.linkDown) { try frame(size: 60, seed: 0).withUnsafeBytes { try nic.send(frame: $0) } }
    behavior.linkUp = true
    #expect(nic.isLinkUp)
    #expect(nic.headerLength == 10)  // legacy without mergeable buffers
}

/// `send` does not read the link status from the device for every frame:
/// only when the ISR is read (first poll, then every
/// `statusCheckInterval`-th), yet a link that goes down is still noticed
/// within that many sends.
@Test func sendReadsTheLinkStatusOnlyWithTheISR() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 16)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 16)
    let interval = VirtioDeviceCore<VirtioPCIModernTransport<BusWindow>, TestDMA>.statusCheckInterval
    let outgoing = frame(size: 64, seed: 2)
    let readsBefore = rig.model.configurationReads
    for _ in 0..<(10 * interval) { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(rig.model.configurationReads - readsBefore <= 10)
    #expect(behavior.transmitted.count == 10 * interval)
    behavior.linkUp = false
    rig.model.configurationChanged()
    var sentWhileDown = 0
    while sentWhileDown <= interval {
        do {
            try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
            sentWhileDown += 1
        } catch NetworkInterfaceError.linkDown {
            break
        }
    }
    #expect(sentWhileDown < interval, "the link going down was not noticed within \(interval) sends")
    #expect(nic.fault == nil)
}

@Test(arguments: InjectedFault.allCases)
func networkFaultsStopTheDriverWithATypedError(fault: InjectedFault) throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 16)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 16)
    let expected: VirtioError
    switch fault {
    case .usedIndexJump:
        rig.model.usedIndexJump = 40
        expected = .usedIndexJumped(queue: 0, previous: 0, current: 41)
    case .usedLengthTooLarge:
        rig.model.usedLengthInflation = 2048
        expected = .usedLengthTooLarge(queue: 0, id: 0, length: 2048 + 12 + 100, capacity: 2048)
    case .unknownID:
        rig.model.forgedID = 4000
        expected = .unknownDescriptorID(queue: 0, id: 4000)
    case .needsReset:
        rig.model.requestReset()
        expected = .deviceNeedsReset(status: rig.model.status)
    }
    if fault != .needsReset { behavior.inject(frame(size: 100, seed: 1), into: rig.model) }
    var delivered = 0
    #expect(throws: NetworkInterfaceError.deviceError(code: expected.code)) { _ = try nic.receive(limit: 8) { _ in delivered += 1 } }
    #expect(delivered == 0)
    #expect(nic.fault == expected && !nic.isLinkUp)
    #expect(rig.model.status & VirtioStatus.failed != 0)
    #expect(throws: NetworkInterfaceError.deviceError(code: expected.code)) { try frame(size: 60, seed: 0).withUnsafeBytes { try nic.send(frame: $0) } }
}

/// A device that asks for a reset while the driver is already polling is
/// noticed within the status-check interval, and nothing is delivered once
/// it is.
@Test func needsResetDuringPollingIsNoticedWithinTheCheckInterval() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 16)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 16)
    for _ in 0..<10 { _ = try nic.receive(limit: 8) { _ in } }
    rig.model.requestReset()
    var calls = 0
    var failed = false
    while calls < 1000 && !failed {
        calls += 1
        do throws(NetworkInterfaceError) {
            _ = try nic.receive(limit: 8) { _ in }
        } catch {
            #expect(error == .deviceError(code: VirtioError.deviceNeedsReset(status: rig.model.status).code))
            failed = true
        }
    }
    #expect(failed && calls <= 64, "noticed after \(calls) polls")
    #expect(rig.model.status & VirtioStatus.failed != 0)
}

// MARK: virtio-rng

@Test func entropyFillsTheCallersBuffer() throws {
    let behavior = EntropyBehavior()
    behavior.answerLength = 37  // short answers: the driver asks again
    let rig = VirtioRig(behavior)
    var rng = try VirtioEntropy(transport: try rig.modern(), dma: rig.dma)
    var bytes = [UInt8](repeating: 0, count: 1000)
    try bytes.withUnsafeMutableBytes { try rng.fill($0) }
    #expect(bytes == behavior.produced)
    #expect(rig.model.violations.isEmpty)
}

@Test func aSilentEntropyDeviceIsReportedNotWaitedForForever() throws {
    let behavior = EntropyBehavior()
    behavior.silent = true
    let rig = VirtioRig(behavior)
    var rng = try VirtioEntropy(transport: try rig.modern(), dma: rig.dma)
    var bytes = [UInt8](repeating: 0, count: 16)
    #expect(throws: VirtioError.deviceBroken) { try bytes.withUnsafeMutableBytes { try rng.fill($0, spinLimit: 100) } }
    #expect(rig.model.status & VirtioStatus.failed != 0)
}

@Test func directDescriptorChainsWorkWithoutIndirectDescriptors() throws {
    let behavior = BlockBehavior(sectors: 128, segMax: 4, sizeMax: 1024)
    behavior.offersIndirect = false
    let rig = VirtioRig(behavior, queueSize: 16)
    var disk = try VirtioBlock(transport: try rig.modern(), dma: rig.dma)
    #expect(!disk.core.has(VirtioFeature.indirectDescriptors))
    let data = pattern(count: 20 * 512, seed: 11)
    let buffer = rig.arena.buffer(count: data.count)
    buffer.copyBytes(from: data)
    // 10 KiB in 1 KiB segments, 4 per request: 3 requests of 6, 6 and 4
    // descriptors fit the 16-entry ring together.
    #expect(try disk.perform(BlockRequest(operation: .write, sector: 0, buffer: buffer, tag: 1)) == data.count)
    #expect(disk.virtioRequestsIssued == 3 && behavior.largestRequestSegments == 4)
    #expect(Array(behavior.disk[0..<data.count]) == data)
    #expect(rig.model.violations.isEmpty && behavior.violations.isEmpty)
}

@Test func withoutEventIndexEveryRefillIsNotified() throws {
    let behavior = NetworkBehavior(mergeable: false)
    behavior.offersEventIndex = false
    let rig = VirtioRig(behavior, queueSize: 16)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 16)
    for seed in 0..<5 {
        #expect(behavior.inject(frame(size: 80, seed: UInt64(seed)), into: rig.model))
        #expect(try nic.receive(limit: 4) { _ in } == 1)
    }
    #expect(rig.model.queues[0].notifications == 6)
    #expect(nic.statistics.framesReceived == 5)
}

@Test func interruptRoutingPolledModeAndTheInterruptHandler() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 16)
    let transport = try rig.modern()
    // MSI-X routing: the device echoes vectors it can serve, 0xFFFF otherwise.
    #expect(transport.setMSIXVectors(configuration: 0) == 0)
    #expect(transport.setMSIXVector(queue: 1, vector: 2) == 2)
    #expect(transport.setMSIXVector(queue: 0, vector: 9) == 0xFFFF)
    #expect(rig.model.configurationVector == 0 && rig.model.queueVectors[1] == 2)

    var nic = try VirtioNetwork(transport: transport, dma: rig.dma, queueSize: 16)
    let area = rig.arena.pointer(physical: rig.model.queues[0].driverArea, length: 6 + 32)!
    nic.setPolled(true)
    // used_event is parked half a ring behind the driver: never reached.
    #expect(area.load(fromByteOffset: 4 + 2 * 16, as: UInt16.self) == UInt16(0) &- 16)
    nic.setPolled(false)
    #expect(area.load(fromByteOffset: 4 + 2 * 16, as: UInt16.self) == 0)
    #expect(try !nic.handleInterrupt())
    behavior.inject(frame(size: 70, seed: 4), into: rig.model)
    #expect(rig.model.isr & VirtioISR.queue != 0)
    #expect(try nic.handleInterrupt())
    #expect(rig.model.isr == 0)  // reading the ISR cleared it
    #expect(try nic.receive(limit: 8) { _ in } == 1)
}

/// In a transmit batch virtio-net queues frames without notifying; the
/// batch's end notifies once. When the ring fills inside a batch the
/// driver notifies before reporting it full, so the device can drain it.
@Test func transmitBatchesNotifyOnceAndAFullRingStillReachesTheDevice() throws {
    let behavior = NetworkBehavior(mergeable: false)
    let rig = VirtioRig(behavior, queueSize: 8)
    var nic = try VirtioNetwork(transport: try rig.modern(), dma: rig.dma, queueSize: 8)
    let outgoing = frame(size: 64, seed: 4)
    let before = rig.model.queues[1].notifications
    nic.beginTransmitBatch()
    for _ in 0..<5 { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(rig.model.queues[1].notifications == before && behavior.transmitted.isEmpty)
    nic.endTransmitBatch()
    #expect(rig.model.queues[1].notifications == before + 1)
    #expect(behavior.transmitted.count == 5)

    try nic.reclaimTransmitted()
    behavior.holdTransmitCompletions = true
    nic.beginTransmitBatch()
    for _ in 0..<8 { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(behavior.heldTransmits.isEmpty)
    #expect(throws: NetworkInterfaceError.transmitQueueFull) { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(behavior.heldTransmits.count == 8, "the device was not told about the frames of a full batch")
    nic.endTransmitBatch()
    #expect(behavior.heldTransmits.count == 8)
}
