// Run-time device tests: xenbus discovery of device/vif and device/vbd,
// the handshakes, the data path through the Rumprun-facing interfaces
// (DeviceInterfaces' PlatformNetworkInterface / PlatformBlockDevice), the
// event upcall waking handlers, watch routing and request timeouts, all
// against the simulated hypervisor, the xenstore daemon model and the
// netback/blkback models.
import CXen
import DeviceInterfaces
import Testing
@testable import XenPVKit

/// Single-threaded tests: the lock only checks it is balanced.
final class CountingLock: XenLock {
    var depth = 0
    var acquisitions = 0
    func lock() {
        depth += 1
        acquisitions += 1
    }
    func unlock() {
        precondition(depth > 0, "unlock without lock")
        depth -= 1
    }
}

final class ManualClock {
    var now: UInt64 = 1_000_000
}

typealias SimDevices = XenDevices<SimulatedHypervisor, SimulatedPages>

/// A domain (id 5) with its xenstore, grant table and event channels.
struct DomainRig {
    let memory: SimulatedMemory
    let hypervisor: SimulatedHypervisor
    let daemon: XenStoreDaemonModel
    let grants: GrantTable
    let events: XenEvents<SimulatedHypervisor>
    let clock = ManualClock()
    let home = "/local/domain/5"
    let vifPath = "/local/domain/5/device/vif/0"
    /// xvda: major 202, minor 0.
    let vbdPath = "/local/domain/5/device/vbd/51712"

    init() {
        memory = SimulatedMemory(pages: 2048)
        hypervisor = SimulatedHypervisor(memory: memory)
        daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.home = home
        var hypercalls = hypervisor
        let table = memory.allocate()!
        try! hypercalls.addToPhysmap(space: UInt32(XENMAPSPACE_grant_table), index: 0, gpfn: UInt(memory.frame(of: table)))
        grants = GrantTable(base: table, frames: 1)
        events = XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: CountingLock())
    }

    func network(hangs: Bool = false, writesBackendKey: Bool = true) -> NetworkBackendModel {
        let backend = NetworkBackendModel(hypervisor: hypervisor, store: daemon, frontendPath: vifPath, writesBackendKey: writesBackendKey)
        backend.hangs = hangs
        return backend
    }

    func block(hangs: Bool = false) -> BlockBackendModel {
        let backend = BlockBackendModel(hypervisor: hypervisor, store: daemon, frontendPath: vbdPath, sectors: 512, virtualDevice: 51712)
        backend.hangs = hangs
        return backend
    }

    func devices(handshakeWaits: Int = 40, requestTimeout: UInt64 = 5_000_000_000) -> SimDevices {
        let clock = self.clock
        return SimDevices(
            home: home, store: daemon.client(maximumWaits: 200), storeLock: CountingLock(), grants: grants,
            memory: SimulatedPages(memory: memory), events: events,
            limits: XenDeviceLimits(handshakeWaits: handshakeWaits, requestTimeout: requestTimeout, receiveBuffers: 16, transmitSlots: 8),
            makeLock: { CountingLock() }, clock: { clock.now })
    }

    /// Lets the backends and the store run, as the guest's waits do.
    func settle(_ rounds: Int = 4) {
        for _ in 0..<rounds { hypervisor.runBackends() }
    }
}

final class WakeCounter {
    var count = 0
}

func bytes(_ seed: Int, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ seed &+ $0 >> 8) }
}

/// Submits one request through the platform interface and lets the
/// backend run until it completes.
func perform(
    _ disk: any PlatformBlockDevice, _ rig: DomainRig, _ operation: BlockRequest.Operation, sector: UInt64,
    _ buffer: UnsafeMutableRawBufferPointer, tag: UInt64
) throws -> Result<Int, BlockDeviceError> {
    try disk.submit(BlockRequest(operation: operation, sector: sector, buffer: buffer, tag: tag))
    for _ in 0..<50 {
        rig.hypervisor.runBackends()
        var outcome: Result<Int, BlockDeviceError>? = nil
        _ = disk.pollCompletions { if $0.tag == tag { outcome = $0.result } }
        if let outcome { return outcome }
    }
    Issue.record("request \(tag) never completed")
    return .failure(.queueFull)
}

@Suite(.serialized) struct XenDeviceTests {
    // MARK: Discovery

    @Test func aDomainWithOneVifAndOneVbdComesUpAndIsRegistered() throws {
        let rig = DomainRig()
        let netback = rig.network()
        let blkback = rig.block()
        let devices = rig.devices()
        #expect(devices.discover() == 2)
        #expect(devices.failures.isEmpty)
        #expect(netback.state == .connected && blkback.state == .connected)
        let nic = try #require(devices.networkInterfaces.first)
        let disk = try #require(devices.blockDevices.first)
        #expect(nic.unit == 0 && nic.name == "vif/0")
        #expect(disk.unit == 0 && disk.name == "vbd/51712")
        #expect(nic.macAddress == MACAddress(0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C))
        #expect(disk.sectorCount == 512 && disk.sectorSize == 512)
        #expect(rig.daemon.nodes[rig.vifPath + "/state"] == "4" && rig.daemon.nodes[rig.vbdPath + "/state"] == "4")
        // One watch per backend state node, with our tokens.
        #expect(rig.daemon.watches.contains { $0.path == netback.backendPath + "/state" && $0.token == "rumprun-backend:" + rig.vifPath })
        #expect(rig.daemon.watches.contains { $0.path == blkback.backendPath + "/state" && $0.token == "rumprun-backend:" + rig.vbdPath })
        // Nothing is unmasked before a handler is bound.
        #expect(rig.events.isMasked(nic.port) && rig.events.isMasked(disk.port))

        PlatformDevices.removeAll()
        defer { PlatformDevices.removeAll() }
        devices.registerWithPlatform()
        #expect(PlatformDevices.hasNetworkDriver("xen-netfront") && PlatformDevices.hasBlockDriver("xen-blkfront"))
        #expect(!PlatformDevices.hasNetworkDriver("virtio-net"))
        #expect(PlatformDevices.networkInterface(driver: "xen-netfront", unit: 0) === nic)
        #expect(PlatformDevices.blockDevice(driver: "xen-blkfront", unit: 0) === disk)
        #expect(PlatformDevices.networkInterface(driver: "xen-netfront", unit: 1) == nil)
        #expect(PlatformDevices.blockDevice(driver: "virtio-blk", unit: 0) == nil)
        #expect(PlatformDevices.problems.isEmpty)
    }

    @Test func aDomainWithoutDevicesDiscoversNothing() {
        let rig = DomainRig()
        let devices = rig.devices()
        #expect(devices.discover() == 0)
        #expect(devices.failures.isEmpty)
    }

    @Test func diskUnitsFollowTheVirtualDeviceNumbering() {
        #expect(SimDevices.diskUnit(virtualDevice: 51712) == 0)  // xvda
        #expect(SimDevices.diskUnit(virtualDevice: 51728) == 1)  // xvdb
        #expect(SimDevices.diskUnit(virtualDevice: 51712 + 16 * 15) == 15)  // xvdp, the last of major 202
        #expect(SimDevices.diskUnit(virtualDevice: (1 << 28) | (26 << 8)) == 26)  // xvdaa, extended form
        #expect(SimDevices.diskUnit(virtualDevice: 768) == nil)  // hda
    }

    // MARK: Data path through the Rumprun-facing interfaces

    @Test func framesTravelBothWaysAndTheUpcallWakesTheNetworkThread() throws {
        let rig = DomainRig()
        let netback = rig.network()
        let devices = rig.devices()
        devices.discover()
        let nic: any PlatformNetworkInterface = try #require(devices.networkInterfaces.first)
        let wakes = WakeCounter()
        #expect(nic.connectWakeup { wakes.count += 1 }.map { "\($0)" } == "event channel")
        let port = devices.networkInterfaces[0].port
        #expect(!rig.events.isMasked(port) && rig.events.hasHandler(port))
        #expect(nic.isLinkUp && nic.mtu == 1500 && "\(nic.driverName)" == "xen-netfront")

        let outgoing = bytes(1, 98)
        try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
        rig.settle()
        #expect(netback.transmitted == [outgoing])

        let incoming = bytes(7, 1514)
        netback.incoming.append(incoming)
        rig.settle()
        #expect(rig.hypervisor.upcallPending)
        #expect(rig.events.dispatch() >= 1)
        #expect(wakes.count >= 1)
        var received: [[UInt8]] = []
        #expect(try nic.receive(limit: 8) { received.append(Array($0)) } == 1)
        #expect(received == [incoming])
        #expect(nic.statistics.framesSent == 1 && nic.statistics.framesReceived == 1)

        nic.disconnectWakeup()
        #expect(rig.events.isMasked(port) && !rig.events.hasHandler(port))
    }

    @Test func blocksWrittenAreReadBackThroughThePlatformInterface() throws {
        let rig = DomainRig()
        let blkback = rig.block()
        let devices = rig.devices()
        devices.discover()
        let disk: any PlatformBlockDevice = try #require(devices.blockDevices.first)
        let wakes = WakeCounter()
        #expect(disk.connectWakeup { wakes.count += 1 }.map { "\($0)" } == "event channel")
        #expect("\(disk.driverName)" == "xen-blkfront" && !disk.isReadOnly)

        let pattern = bytes(3, 3 * 4096 + 1024)
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: pattern.count, alignment: 1)
        defer { source.deallocate() }
        source.copyBytes(from: pattern)
        #expect(try perform(disk, rig, .write, sector: 9, source, tag: 1) == .success(pattern.count))
        #expect(Array(blkback.disk[9 * 512..<9 * 512 + pattern.count]) == pattern)
        _ = rig.events.dispatch()
        #expect(wakes.count >= 1)

        let target = UnsafeMutableRawBufferPointer.allocate(byteCount: pattern.count, alignment: 1)
        defer { target.deallocate() }
        target.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(try perform(disk, rig, .read, sector: 9, target, tag: 2) == .success(pattern.count))
        #expect(Array(target) == pattern)
        #expect(try perform(disk, rig, .flush, sector: 0, UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: 3) == .success(0))
        #expect(blkback.operations.last == BLKIF_OP_FLUSH_DISKCACHE)
    }

    // MARK: Faults

    @Test func aVifWhoseBackendNeverConnectsFailsTypedAndTheDiskStillAttaches() throws {
        let rig = DomainRig()
        let netback = rig.network(hangs: true)
        let blkback = rig.block()
        let pages = rig.memory.allocatedCount
        let freeGrants = rig.grants.freeCount
        let devices = rig.devices(handshakeWaits: 10)
        #expect(devices.discover() == 1)
        #expect(devices.failures == [.backendNotConnected(device: "vif/0", state: .initWait)])
        #expect(devices.failures[0].description == "vif/0: the backend never reached Connected (its state: InitWait)")
        #expect(devices.networkInterfaces.isEmpty)
        #expect(devices.blockDevices.count == 1 && blkback.state == .connected)
        #expect(netback.state == .initWait)
        // The failed netfront gave back its rings, buffers and grants; only
        // the disk's ring page and grant remain.
        #expect(rig.memory.allocatedCount == pages + 1)
        #expect(rig.grants.freeCount == freeGrants - 1)
        #expect(rig.daemon.nodes[rig.vifPath + "/state"] == "6", "the frontend says it gave up")

        PlatformDevices.removeAll()
        defer { PlatformDevices.removeAll() }
        devices.registerWithPlatform()
        #expect(PlatformDevices.problems == ["vif/0: the backend never reached Connected (its state: InitWait)"])
        #expect(PlatformDevices.blockDevice(driver: "xen-blkfront", unit: 0) != nil)
    }

    @Test func aVbdWhoseBackendNeverConnectsFailsTypedAndTheVifStillAttaches() throws {
        let rig = DomainRig()
        _ = rig.network()
        _ = rig.block(hangs: true)
        let devices = rig.devices(handshakeWaits: 10)
        #expect(devices.discover() == 1)
        #expect(devices.failures == [.backendNotConnected(device: "vbd/51712", state: .initWait)])
        #expect(devices.networkInterfaces.count == 1 && devices.networkInterfaces[0].isLinkUp)
        #expect(devices.blockDevices.isEmpty)
    }

    @Test func aBackendThatClosesDuringTheHandshakeIsReported() throws {
        let rig = DomainRig()
        let blkback = rig.block()
        blkback.refusesConnection = true
        let devices = rig.devices()
        #expect(devices.discover() == 0)
        #expect(devices.failures == [.backendClosed(device: "vbd/51712", state: .closing)])
    }

    @Test func aVifWithoutABackendKeyIsReportedAndTheDiskStillAttaches() throws {
        let rig = DomainRig()
        _ = rig.network(writesBackendKey: false)
        _ = rig.block()
        let pages = rig.memory.allocatedCount
        let devices = rig.devices()
        #expect(devices.discover() == 1)
        #expect(devices.failures == [.missingNode(device: "vif/0", key: "backend")])
        #expect(devices.blockDevices.count == 1)
        #expect(rig.memory.allocatedCount == pages + 1, "nothing allocated for the vif")
    }

    @Test func aDiskBackendClosingMidConnectionFailsOutstandingRequestsAndFreesGrants() throws {
        let rig = DomainRig()
        let blkback = rig.block()
        let pages = rig.memory.allocatedCount
        let freeGrants = rig.grants.freeCount
        let devices = rig.devices()
        devices.discover()
        let handle = try #require(devices.blockDevices.first)
        let disk: any PlatformBlockDevice = handle
        let wakes = WakeCounter()
        _ = disk.connectWakeup { wakes.count += 1 }
        blkback.fault = .closeAfter(1)

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { buffer.deallocate() }
        #expect(try perform(disk, rig, .read, sector: 0, buffer, tag: 1) == .success(4096))
        try disk.submit(BlockRequest(operation: .write, sector: 8, buffer: buffer, tag: 2))
        rig.settle()
        #expect(blkback.state == .closing)
        #expect(handle.outstandingRequestCount == 1)
        let wakesBefore = wakes.count

        // The backend's state change reaches the frontend through its watch.
        #expect(devices.routeWatchEvents() >= 1)
        #expect(!handle.isConnected)
        #expect(wakes.count == wakesBefore + 1, "the waiting thread is woken")
        var results: [UInt64: Result<Int, BlockDeviceError>] = [:]
        #expect(disk.pollCompletions { results[$0.tag] = $0.result } == 1)
        #expect(results[2] == .failure(.deviceError(code: SimBlockFront.disconnectedCode)))
        #expect(rig.events.isMasked(handle.port) && !rig.events.hasHandler(handle.port))
        #expect(rig.daemon.nodes[rig.vbdPath + "/state"] == "5")
        #expect(rig.grants.freeCount == freeGrants, "every grant ended")
        #expect(rig.memory.allocatedCount == pages, "ring and bounce pages freed")
        #expect(throws: BlockDeviceError.deviceError(code: SimBlockFront.disconnectedCode)) {
            try disk.submit(BlockRequest(operation: .read, sector: 0, buffer: buffer, tag: 3))
        }
    }

    @Test func aNetworkBackendClosingTakesTheLinkDownAndFreesGrants() throws {
        let rig = DomainRig()
        let netback = rig.network()
        let pages = rig.memory.allocatedCount
        let freeGrants = rig.grants.freeCount
        let devices = rig.devices()
        devices.discover()
        let nic = try #require(devices.networkInterfaces.first)
        let wakes = WakeCounter()
        _ = nic.connectWakeup { wakes.count += 1 }
        netback.close()
        rig.settle()
        #expect(devices.routeWatchEvents() >= 1)
        #expect(!nic.isLinkUp && wakes.count == 1)
        #expect(throws: NetworkInterfaceError.linkDown) { try bytes(0, 60).withUnsafeBytes { try nic.send(frame: $0) } }
        #expect(rig.grants.freeCount == freeGrants)
        #expect(rig.memory.allocatedCount == pages)
    }

    @Test func watchEventsOfOtherTokensAreNotRouted() throws {
        let rig = DomainRig()
        _ = rig.block()
        let devices = rig.devices()
        devices.discover()
        rig.settle()
        _ = devices.routeWatchEvents()
        rig.daemon.set("/local/domain/5/unrelated", "1")
        rig.settle()
        #expect(devices.routeWatchEvents() == 0)
        #expect(devices.blockDevices[0].isConnected)
    }

    @Test func requestsToASilentBackendTimeOutAndTheirPagesWaitForRelease() throws {
        let rig = DomainRig()
        let blkback = rig.block()
        let pages = rig.memory.allocatedCount
        let freeGrants = rig.grants.freeCount
        let devices = rig.devices(requestTimeout: 1_000_000_000)
        devices.discover()
        let handle = try #require(devices.blockDevices.first)
        let disk: any PlatformBlockDevice = handle
        blkback.fault = .silent

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 1)
        defer { buffer.deallocate() }
        try disk.submit(BlockRequest(operation: .read, sector: 4, buffer: buffer, tag: 7))
        rig.settle()
        #expect(disk.pollCompletions { _ in } == 0)
        rig.clock.now += 500_000_000
        #expect(devices.checkTimeouts(now: rig.clock.now) == 0, "not yet")
        rig.clock.now += 600_000_000
        #expect(devices.checkTimeouts(now: rig.clock.now) == 1)
        #expect(devices.abandonments == 1)
        var result: Result<Int, BlockDeviceError>? = nil
        #expect(disk.pollCompletions { result = $0.result } == 1)
        #expect(result == .failure(.deviceError(code: SimBlockFront.abandonedCode)))
        // The backend still maps the two data pages and the ring.
        #expect(handle.quarantinedPageCount == 3)
        #expect(rig.memory.allocatedCount > pages)
        blkback.close()
        _ = disk.pollCompletions { _ in }
        #expect(handle.quarantinedPageCount == 0)
        #expect(rig.memory.allocatedCount == pages)
        #expect(rig.grants.freeCount == freeGrants)
        #expect(devices.checkTimeouts(now: rig.clock.now + 10_000_000_000) == 0, "nothing left to abandon")
    }

    @Test func framesToASilentNetworkBackendTimeOut() throws {
        let rig = DomainRig()
        let netback = rig.network()
        let devices = rig.devices(requestTimeout: 1_000_000_000)
        devices.discover()
        let nic = try #require(devices.networkInterfaces.first)
        netback.fault = .silent
        try bytes(2, 60).withUnsafeBytes { try nic.send(frame: $0) }
        rig.settle()
        #expect(nic.outstandingTransmitCount == 1)
        rig.clock.now += 2_000_000_000
        #expect(devices.checkTimeouts(now: rig.clock.now) == 1)
        #expect(!nic.isLinkUp)
        #expect(nic.statistics.transmitErrors == 1)
    }
}

@Suite struct XenEventUpcallTests {
    func rig() -> (SimulatedHypervisor, XenEvents<SimulatedHypervisor>) {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        return (hypervisor, XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: CountingLock()))
    }

    @Test func theUpcallRunsTheHandlerOfARaisedPort() throws {
        var (hypervisor, events) = rig()
        let port = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        let wakes = WakeCounter()
        try events.bind(port) { _ in wakes.count += 1 }
        hypervisor.raise(port)
        #expect(hypervisor.upcallPending)
        #expect(events.dispatch() == 1)
        #expect(wakes.count == 1 && events.upcalls == 1)
        #expect(!hypervisor.upcallPending && !events.isPending(port))
    }

    @Test func aPortRaisedBeforeItsHandlerIsDeliveredWhenBound() throws {
        var (hypervisor, events) = rig()
        let port = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        hypervisor.raise(port)
        #expect(events.isMasked(port) && !hypervisor.upcallPending, "masked: no upcall")
        #expect(events.dispatch() == 0)
        let wakes = WakeCounter()
        try events.bind(port) { _ in wakes.count += 1 }
        #expect(hypervisor.upcallPending, "EVTCHNOP_unmask redelivers")
        #expect(events.dispatch() == 1 && wakes.count == 1)
    }

    @Test func aPortRaisedWhileUnboundIsRedeliveredOnRebind() throws {
        var (hypervisor, events) = rig()
        let port = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        let wakes = WakeCounter()
        try events.bind(port) { _ in wakes.count += 1 }
        events.unbind(port)
        #expect(events.isMasked(port))
        hypervisor.raise(port)
        #expect(!hypervisor.upcallPending && events.dispatch() == 0 && wakes.count == 0)
        try events.bind(port) { _ in wakes.count += 10 }
        #expect(events.dispatch() == 1 && wakes.count == 10)
    }

    @Test func aPortWithoutHandlerIsMaskedAgainAndCounted() throws {
        var (hypervisor, events) = rig()
        let port = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        // A stray unmask that bypasses `bind` (the hub offers none).
        try events.channels.unmask(port)
        hypervisor.raise(port)
        #expect(events.dispatch() == 1)
        #expect(events.unhandledEvents == 1)
        #expect(events.isMasked(port), "masked again")
        hypervisor.raise(port)
        #expect(!hypervisor.upcallPending, "no further upcalls")
        #expect(events.dispatch() == 0 && events.unhandledEvents == 1)
        #expect(events.isPending(port), "the event waits for a handler")
        let wakes = WakeCounter()
        try events.bind(port) { _ in wakes.count += 1 }
        #expect(events.dispatch() == 1 && wakes.count == 1)
    }

    @Test func theUpcallTakesTheLock() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let lock = CountingLock()
        let events = XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: lock)
        _ = events.dispatch()
        #expect(lock.acquisitions == 1 && lock.depth == 0)
    }
}

/// Counts waits and lets the simulated backends run in each.
final class SteppingWait: XenEventWait {
    let hypervisor: SimulatedHypervisor
    var waits = 0
    init(_ hypervisor: SimulatedHypervisor) { self.hypervisor = hypervisor }
    func waitForEvent() {
        waits += 1
        hypervisor.runBackends()
    }
}

@Suite struct WaitingHypercallsTests {
    @Test func blockingWaitsThroughTheWaiterAndEverythingElseGoesThrough() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.set("/vm/name", "guest")
        let waiter = SteppingWait(hypervisor)
        var store = XenStore(
            interface: daemon.page, port: daemon.port, hypervisor: WaitingHypercalls(hypervisor, waiter: waiter), maximumWaits: 20)
        #expect(try store.readString("/vm/name") == "guest")
        #expect(waiter.waits >= 1)
        #expect(hypervisor.blockCount == 0, "SCHEDOP_block never reached the hypervisor")
        #expect(hypervisor.trace.contains { $0.call == .eventChannelOp && $0.command == EVTCHNOP_send })
    }
}

extension XenDeviceTests {
    @Test func ofTwoVifsTheOneWhoseBackendHangsFailsAndTheOtherIsUnitZero() throws {
        let rig = DomainRig()
        _ = rig.network()
        let second = NetworkBackendModel(
            hypervisor: rig.hypervisor, store: rig.daemon, frontendPath: rig.home + "/device/vif/1", handle: 1, mac: "00:16:3e:00:00:01")
        second.hangs = true
        let devices = rig.devices(handshakeWaits: 10)
        #expect(devices.discover() == 1)
        #expect(devices.failures == [.backendNotConnected(device: "vif/1", state: .initWait)])
        #expect(devices.networkInterfaces.map(\.unit) == [0])
        #expect(devices.networkInterfaces[0].macAddress == MACAddress(0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C))
    }
}

/// Consecutive pages from the simulated memory (fresh allocations are).
func consecutivePages(_ memory: SimulatedMemory, _ count: Int) -> UnsafeMutableRawPointer? {
    guard let first = memory.allocate() else { return nil }
    for index in 1..<max(count, 1) {
        guard let page = memory.allocate(), page == first + index * 4096 else { return nil }
    }
    return first
}

@Suite struct XenRuntimeSetupTests {
    @Test func theRunTimeMapsGrantFramesFindsItsHomeAndStartsTheDevices() throws {
        let memory = SimulatedMemory(pages: 2048)
        var hypervisor = SimulatedHypervisor(memory: memory)
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        let home = "/local/domain/5"
        daemon.home = home
        daemon.set(home + "/domid", "5")
        _ = NetworkBackendModel(hypervisor: hypervisor, store: daemon, frontendPath: home + "/device/vif/0")
        let blkback = BlockBackendModel(
            hypervisor: hypervisor, store: daemon, frontendPath: home + "/device/vbd/51728", virtualDevice: 51728)

        let grants = try XenRuntimeSetup.mapGrantTable(
            hypervisor: &hypervisor, frames: 8, allocate: { consecutivePages(memory, $0) }, frameNumber: { memory.frame(of: $0) })
        #expect(grants.capacity == 4 * 512, "Xen's maximum of 4 frames")
        #expect(hypervisor.grantFrames.count == 4)
        #expect(hypervisor.log.filter { $0.hasPrefix("memory_op add_to_physmap") && $0.contains("space=\(XENMAPSPACE_grant_table)") }.count == 4)
        #expect(hypervisor.trace.contains { $0.call == .grantTableOp && $0.command == GNTTABOP_query_size })

        let events = XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: CountingLock())
        let storeEvents = WakeCounter()
        try events.bind(daemon.port) { _ in storeEvents.count += 1 }
        let devices = try XenRuntimeSetup.startDevices(
            store: daemon.client(maximumWaits: 200), events: events, grants: grants, memory: SimulatedPages(memory: memory),
            storeLock: CountingLock(), limits: XenDeviceLimits(handshakeWaits: 40, receiveBuffers: 8, transmitSlots: 4),
            makeLock: { CountingLock() }, clock: { 0 })
        #expect(devices.home == home)
        #expect(devices.networkInterfaces.count == 1 && devices.blockDevices.count == 1 && devices.failures.isEmpty)
        #expect(devices.blockDevices[0].unit == 1, "xvdb")
        // The store's replies raised its port: the upcall ran the handler.
        _ = events.dispatch()
        #expect(storeEvents.count >= 1)

        // The frontends' grants live in the mapped frames: blkback reads them.
        let disk: any PlatformBlockDevice = devices.blockDevices[0]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes(9, 1024))
        try disk.submit(BlockRequest(operation: .write, sector: 2, buffer: buffer, tag: 1))
        var result: Result<Int, BlockDeviceError>? = nil
        for _ in 0..<20 where result == nil {
            hypervisor.runBackends()
            _ = disk.pollCompletions { result = $0.result }
        }
        #expect(result == .success(1024))
        #expect(Array(blkback.disk[1024..<2048]) == bytes(9, 1024))
    }

    @Test func aMissingOrMalformedDomIDIsTyped() throws {
        let memory = SimulatedMemory()
        let hypervisor = SimulatedHypervisor(memory: memory)
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.home = "/local/domain/5"
        var store = daemon.client()
        #expect(throws: XenRuntimeError.domainID(.store(.noEntry, request: UInt32(XS_READ.rawValue)))) {
            _ = try XenRuntimeSetup.home(store: &store)
        }
        daemon.set("/local/domain/5/domid", "five")
        #expect(throws: XenRuntimeError.malformedDomainID) { _ = try XenRuntimeSetup.home(store: &store) }
        daemon.set("/local/domain/5/domid", "5")
        #expect(try XenRuntimeSetup.home(store: &store) == "/local/domain/5")
    }

    @Test func grantTableMappingFailuresAreTyped() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        #expect(throws: XenRuntimeError.noGrantTableMemory(frames: 2)) {
            _ = try XenRuntimeSetup.mapGrantTable(hypervisor: &hypervisor, frames: 2, allocate: { _ in nil }, frameNumber: { _ in 0 })
        }
        // A frame Xen cannot place (outside the domain's memory).
        let page = memory.allocate()!
        #expect(throws: XenRuntimeError.grantTable(.hypercall(.failed(.memoryOp, command: XENMEM_add_to_physmap, status: -Int(XEN_EINVAL.rawValue))))) {
            _ = try XenRuntimeSetup.mapGrantTable(hypervisor: &hypervisor, frames: 1, allocate: { _ in page }, frameNumber: { _ in 1 })
        }
    }
}

extension XenDeviceTests {
    /// netback closes while blkfront's handshake waits for blkback: the
    /// handshake takes only its own watch's events, so the vif's change is
    /// still queued for the router afterwards.
    @Test func aBackendChangeDuringAnotherHandshakeIsStillRouted() throws {
        let rig = DomainRig()
        let netback = rig.network()
        let blkback = rig.block()
        blkback.onFrontendInitialised = { netback.close() }
        blkback.connectDelay = 10
        let devices = rig.devices()
        #expect(devices.discover() == 2)
        #expect(netback.state == .closing)
        #expect(!devices.networkInterfaces[0].isLinkUp)
        #expect(devices.blockDevices[0].isConnected)
        devices.routeWatchEvents()
        // Its registration event and the change to Closing, neither taken
        // by the vbd's handshake.
        #expect(devices.networkInterfaces[0].watchEvents == 2)
    }
}

@Suite struct WatchEventTokenTests {
    @Test func waitingForOneTokenLeavesOtherEventsQueuedInOrder() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        var store = daemon.client(maximumWaits: 20)
        try store.watch("/a", token: "A")
        try store.watch("/b", token: "B")
        daemon.set("/a/x", "1")
        daemon.set("/b/y", "2")
        daemon.set("/a/z", "3")
        // B's registration event, then (after a wait, which lets the store
        // push everything) B's change; A's three events go by meanwhile.
        #expect(try store.waitForWatchEvent(token: "B").path == "/b")
        #expect(try store.waitForWatchEvent(token: "B").path == "/b/y")
        #expect(store.queuedWatchEventCount == 3)
        var rest: [XenStoreWatchEvent] = []
        while let next = try store.nextWatchEvent() { rest.append(next) }
        #expect(rest.map(\.token) == ["A", "A", "A"])
        #expect(rest.map(\.path) == ["/a", "/a/x", "/a/z"], "A's events, in order")
        #expect(throws: XenStoreError.noResponse(request: UInt32(XS_WATCH_EVENT.rawValue), waits: 20)) {
            _ = try store.waitForWatchEvent(token: "C")
        }
    }
}
