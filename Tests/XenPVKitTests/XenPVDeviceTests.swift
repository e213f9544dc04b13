// PV devices: the grant table from GNTTABOP_setup_table (machine frames
// mapped with update_va_mapping), frontend pages named by machine frame
// (XenPVFrames over a P2M list) with the vif and vbd brought up against
// the netback and blkback models, and the PV event callback dispatching
// through the run time's XenEvents table, all against the simulated
// hypervisor.
import CXen
import DeviceInterfaces
import Testing
@testable import XenPVKit

/// Host pages standing in for the guest's reserved virtual pages.
final class ReservedPages {
    let base: UnsafeMutableRawPointer
    let count: Int
    init(_ count: Int) {
        self.count = count
        base = UnsafeMutableRawPointer.allocate(byteCount: count * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0xA5, count: count * 4096)
    }
    deinit { base.deallocate() }
    func reserve(_ pages: Int) -> UnsafeMutableRawPointer? { pages <= count ? base : nil }
}

/// Pages of `SimulatedMemory` under a pseudo-physical numbering that is
/// not the machine one: page i is pfn `firstPFN + (pageCount - 1 - i)`,
/// and the P2M list maps it back to the machine frame the backends
/// resolve. A frontend that named a page by its pfn would hand backends
/// frames they cannot find (all below `SimulatedMemory.firstFrame`).
struct ShuffledPseudoPhysicalPages: XenPVPageSource {
    static let firstPFN: UInt64 = 0x100
    let memory: SimulatedMemory

    func allocatePage() -> UnsafeMutableRawPointer? { memory.allocate() }
    func freePage(_ page: UnsafeMutableRawPointer) { memory.free(page) }
    func pseudoPhysicalFrame(of page: UnsafeMutableRawPointer) -> UInt64 {
        let index = UInt64((page - memory.base) / 4096)
        return Self.firstPFN + UInt64(memory.pageCount) - 1 - index
    }

    /// The P2M list (`mfn_list`) of this numbering.
    static func p2m(for memory: SimulatedMemory) -> [UInt64] {
        var list = [UInt64](repeating: 0, count: Int(firstPFN) + memory.pageCount)
        for index in 0..<memory.pageCount {
            list[Int(firstPFN) + memory.pageCount - 1 - index] = SimulatedMemory.firstFrame + UInt64(index)
        }
        return list
    }
}

@Suite struct XenPVGrantTableSetupTests {
    @Test func setupTableFramesAreMappedOverTheReservedPages() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        let reserved = ReservedPages(4)
        let grants = try XenRuntimeSetup.setUpGrantTable(hypervisor: &hypervisor, frames: 8, reserve: reserved.reserve)
        #expect(grants.capacity == 4 * 512, "Xen's maximum of 4 frames")
        #expect(hypervisor.log.contains("grant_table_op setup_table dom=0x7ff0 nr_frames=4"))
        #expect(hypervisor.grantFrames == hypervisor.setupTableFrames)
        // Each machine frame Xen named is mapped, writable, at its page.
        for index in 0..<4 {
            let address = UInt64(UInt(bitPattern: reserved.base + index * 4096))
            #expect(hypervisor.mappings[address] == PVPageTableEntry.data(frame: hypervisor.setupTableFrames[index]))
        }
        #expect(!hypervisor.trace.contains { $0.call == .memoryOp }, "no add_to_physmap in a PV domain")

        // A grant written through the table is what Xen sees in the frame.
        let page = memory.allocate()!
        let reference = try grants.grantAccess(to: 0, frame: memory.frame(of: page), readOnly: false)
        #expect(hypervisor.grantEntry(reference) == reserved.base + Int(reference) * MemoryLayout<grant_entry_v1>.stride)
        // The reserved pages' old bytes are gone: Xen's frames start empty.
        #expect(reserved.base.load(fromByteOffset: 4096 * 3, as: UInt64.self) == 0)
        let mapped = try hypervisor.mapGrant(reference, by: 0, writable: true)
        #expect(mapped == page)
        #expect(grants.isMappedByPeer(reference))
    }

    @Test func aRefusedSetupTableIsATypedError() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        let reserved = ReservedPages(4)
        hypervisor.setupTableStatus = Int16(GNTST_general_error)
        #expect(
            throws: XenRuntimeError.grantTable(
                .hypercall(.grantStatus(command: UInt32(GNTTABOP_setup_table), status: Int16(GNTST_general_error))))
        ) {
            _ = try XenRuntimeSetup.setUpGrantTable(hypervisor: &hypervisor, frames: 2, reserve: reserved.reserve)
        }
        #expect(hypervisor.mappings.isEmpty, "nothing mapped after a refusal")
        #expect(throws: XenRuntimeError.noGrantTableMemory(frames: 4)) {
            _ = try XenRuntimeSetup.setUpGrantTable(hypervisor: &hypervisor, frames: 4, reserve: { _ in nil })
        }
    }

    @Test func aRefusedMappingNamesTheFrame() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        // Reserved pages that are not page-aligned: Xen refuses the mapping.
        let reserved = ReservedPages(3)
        #expect(
            throws: XenRuntimeError.grantFrameMapping(
                index: 0, machineFrame: hypervisor.setupTableFrames[0],
                .failed(.updateVAMapping, command: 0, status: -Int(XEN_EINVAL.rawValue)))
        ) {
            _ = try XenRuntimeSetup.setUpGrantTable(hypervisor: &hypervisor, frames: 2, reserve: { _ in reserved.base + 8 })
        }
    }
}

@Suite(.serialized) struct XenPVDeviceTests {
    @Test func aVifAndAVbdComeUpWithMachineFramesInTheirGrants() throws {
        let memory = SimulatedMemory(pages: 2048)
        var hypervisor = SimulatedHypervisor(memory: memory)
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        let home = "/local/domain/5"
        daemon.home = home
        daemon.set(home + "/domid", "5")
        let netback = NetworkBackendModel(hypervisor: hypervisor, store: daemon, frontendPath: home + "/device/vif/0")
        let blkback = BlockBackendModel(
            hypervisor: hypervisor, store: daemon, frontendPath: home + "/device/vbd/51712", virtualDevice: 51712)

        let reserved = ReservedPages(4)
        let grants = try XenRuntimeSetup.setUpGrantTable(hypervisor: &hypervisor, frames: 4, reserve: reserved.reserve)
        let p2m = ShuffledPseudoPhysicalPages.p2m(for: memory)
        try p2m.withUnsafeBufferPointer { list in
            let pages = XenPVFrames(
                pages: ShuffledPseudoPhysicalPages(memory: memory), frames: list.baseAddress!, pageCount: UInt64(list.count))
            let events = XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: CountingLock())
            let devices = try XenRuntimeSetup.startDevices(
                store: daemon.client(maximumWaits: 200), events: events, grants: grants, memory: pages,
                storeLock: CountingLock(), limits: XenDeviceLimits(handshakeWaits: 40, receiveBuffers: 8, transmitSlots: 4),
                makeLock: { CountingLock() }, clock: { 0 })
            #expect(devices.failures.isEmpty)
            #expect(devices.networkInterfaces.count == 1 && devices.blockDevices.count == 1)
            #expect(netback.state == .connected && blkback.state == .connected)

            // Every frame granted (rings and buffers) is a machine frame of
            // guest memory, none a pseudo-physical one.
            var granted: [UInt64] = []
            for reference in Int(GNTTAB_NR_RESERVED_ENTRIES)..<grants.capacity {
                let entry = grants.entry(GrantReference(reference)).load(as: grant_entry_v1.self)
                if entry.flags & UInt16(GTF_type_mask) == UInt16(GTF_permit_access) { granted.append(UInt64(entry.frame)) }
            }
            #expect(granted.count >= 2 + 8, "two rings and the receive buffers")
            #expect(granted.allSatisfy { memory.page(frame: $0) != nil })
            #expect(!granted.contains { $0 < SimulatedMemory.firstFrame })

            // Data goes both ways through machine-frame grants.
            let disk: any PlatformBlockDevice = devices.blockDevices[0]
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 1)
            defer { buffer.deallocate() }
            buffer.copyBytes(from: bytes(3, 1024))
            try disk.submit(BlockRequest(operation: .write, sector: 4, buffer: buffer, tag: 1))
            var result: Result<Int, BlockDeviceError>? = nil
            for _ in 0..<20 where result == nil {
                hypervisor.runBackends()
                _ = disk.pollCompletions { result = $0.result }
            }
            #expect(result == .success(1024))
            #expect(Array(blkback.disk[2048..<3072]) == bytes(3, 1024))

            let nic: any PlatformNetworkInterface = devices.networkInterfaces[0]
            let outgoing = bytes(1, 98)
            try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
            for _ in 0..<4 { hypervisor.runBackends() }
            #expect(netback.transmitted == [outgoing])
            netback.incoming.append(bytes(7, 200))
            for _ in 0..<4 { hypervisor.runBackends() }
            var received: [[UInt8]] = []
            #expect(try nic.receive(limit: 8) { received.append(Array($0)) } == 1)
            #expect(received == [bytes(7, 200)])
        }
    }
}

@Suite struct XenPVEventCallbackTests {
    @Test func theCallbackDispatchesThroughTheEventTableAndKeepsTheTimer() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        let timer = try XenPVTimer.start(hypervisor: &hypervisor)
        let storePort = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        let strayPort = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        let events = XenEvents(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor, lock: CountingLock())
        try XenPVEventCallback.keepTimer(timer, in: events)
        let woken = WakeCounter()
        try events.bind(storePort) { _ in woken.count += 1 }
        #expect(!events.isMasked(timer.port) && !events.isMasked(storePort))

        hypervisor.raise(timer.port)
        hypervisor.raise(storePort)
        #expect(hypervisor.upcallPending)
        #expect(XenPVEventCallback.handle(sharedInfo: hypervisor.sharedInfo, events: events) == 2)
        #expect(woken.count == 1)
        #expect(!hypervisor.upcallPending)
        #expect(!events.isPending(timer.port) && !events.isPending(storePort))
        // The timer's port stays unmasked for the next expiry.
        #expect(!events.isMasked(timer.port) && events.unhandledEvents == 0)
        hypervisor.raise(timer.port)
        #expect(hypervisor.upcallPending)
        #expect(XenPVEventCallback.handle(sharedInfo: hypervisor.sharedInfo, events: events) == 1)
        #expect(woken.count == 1)
        // A port nobody bound stays masked (it was masked by the table).
        hypervisor.raise(strayPort)
        #expect(!hypervisor.upcallPending)
        #expect(events.isMasked(strayPort))
    }

    @Test func withoutTheTableTheCallbackOnlyAcknowledges() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        let timer = try XenPVTimer.start(hypervisor: &hypervisor)
        try hypervisor.unmaskPort(timer.port)
        hypervisor.raise(timer.port)
        let none: XenEvents<SimulatedHypervisor>? = nil
        #expect(XenPVEventCallback.handle(sharedInfo: hypervisor.sharedInfo, events: none) == 1)
        #expect(!hypervisor.upcallPending)
    }
}
