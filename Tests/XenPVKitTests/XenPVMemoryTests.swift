// PV memory tests: a model of a 64-bit PV domain's memory as Xen keeps it
// (machine frames behind a P2M list, 4-level page tables Xen validates on
// every mmu_update/update_va_mapping: a page may become a page table only
// while no writable mapping of it exists, and a page table may never be
// mapped writable), started with the bootstrap layout of xen.h; the
// builder maps the rest of nr_pages through it.
import CXen
import Testing
@testable import XenPVKit

/// A PV domain's machine: P2M list, sparse machine memory, Xen's rules.
final class PVMachine: XenPVHypercalls, XenPVPageAccess {
    let pageCount: UInt64
    var p2m: [UInt64]
    let ownedFrames: Set<UInt64>
    var memory: [UInt64: UnsafeMutableRawPointer] = [:]
    /// Level of each machine frame in use as a page table.
    var tableLevel: [UInt64: Int] = [:]
    /// Writable leaf mappings of each machine frame.
    var writableMappings: [UInt64: Int] = [:]
    /// Leaf mappings of each machine frame (any rights).
    var mappings: [UInt64: Int] = [:]
    let root: UInt64
    var log: [String] = []
    var mmuRequests: [mmu_update] = []
    var mmuCalls = 0
    /// Fail the mmu_update request with this index (counted over all calls).
    var refuseRequest: Int?
    var refuseUpdateVA = false
    // Event, timer and registration state for the runtime tests.
    var xenVersionCalls = 0
    var blocks = 0
    var vcpuInfo: UnsafeMutableRawPointer?
    var singleshot: [UInt64] = []
    var legacyTimer: [UInt64] = []
    var singleshotStatus = 0
    var legacyStatus = 0
    var trapTable: [trap_info] = []
    var trapStatus = 0
    var callbacks: (event: UInt64, failsafe: UInt64, syscall: UInt64)?
    var callbackStatus = 0
    var segmentBases: [(UInt32, UInt64)] = []
    var segmentStatus = 0
    var boundVIRQs: [UInt32] = []

    static func machineFrame(_ pfn: UInt64) -> UInt64 { 0x10_0000 + ((pfn &* 40503) & 0xF_FFFF) }

    /// A domain of `pageCount` pages whose bootstrap page tables (L4, L3,
    /// L2 and the L1s of [0, mappedEnd)) sit at `pageTableBase`.
    init(pageCount: UInt64, pageTableBase: UInt64) {
        self.pageCount = pageCount
        p2m = (0..<pageCount).map(Self.machineFrame)
        ownedFrames = Set(p2m)
        let layout = XenPVMemoryLayout(pageCount: pageCount, pageTableBase: pageTableBase, pageTableFrames: 0)
        let level1Count = (layout.mappedEnd + 511) / 512
        let frames = 3 + level1Count
        root = p2m[Int(pageTableBase)]
        let mappedEnd = XenPVMemoryLayout(pageCount: pageCount, pageTableBase: pageTableBase, pageTableFrames: frames).mappedEnd
        precondition((mappedEnd + 511) / 512 == level1Count, "bootstrap L1 count")
        let l4 = p2m[Int(pageTableBase)], l3 = p2m[Int(pageTableBase + 1)], l2 = p2m[Int(pageTableBase + 2)]
        tableLevel[l4] = 4
        tableLevel[l3] = 3
        tableLevel[l2] = 2
        store(l4, 0, XenPVEntry.table(machineFrame: l3))
        store(l3, 0, XenPVEntry.table(machineFrame: l2))
        for index in 0..<level1Count {
            let l1 = p2m[Int(pageTableBase + 3 + index)]
            tableLevel[l1] = 1
            store(l2, Int(index), XenPVEntry.table(machineFrame: l1))
        }
        let tables = Set((pageTableBase..<pageTableBase + frames).map { p2m[Int($0)] })
        for pfn in 0..<mappedEnd {
            let mfn = p2m[Int(pfn)]
            let l1 = p2m[Int(pageTableBase + 3 + pfn / 512)]
            let entry = tables.contains(mfn) ? XenPVEntry.readOnly(machineFrame: mfn) : PVPageTableEntry.data(frame: mfn)
            store(l1, Int(pfn % 512), entry)
            account(entry, by: 1)
        }
        bootstrapFrames = frames
    }
    private(set) var bootstrapFrames: UInt64 = 0

    deinit { for page in memory.values { page.deallocate() } }

    func frameMemory(_ mfn: UInt64) -> UnsafeMutableRawPointer {
        if let page = memory[mfn] { return page }
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        memory[mfn] = page
        return page
    }
    func load(_ mfn: UInt64, _ index: Int) -> UInt64 { frameMemory(mfn).load(fromByteOffset: index * 8, as: UInt64.self) }
    func store(_ mfn: UInt64, _ index: Int, _ value: UInt64) { frameMemory(mfn).storeBytes(of: value, toByteOffset: index * 8, as: UInt64.self) }

    func account(_ entry: UInt64, by delta: Int) {
        guard entry & PVPageTableEntry.present != 0 else { return }
        let mfn = XenPVEntry.frame(entry)
        mappings[mfn, default: 0] += delta
        if entry & PVPageTableEntry.writable != 0 { writableMappings[mfn, default: 0] += delta }
    }

    // MARK: XenPVPageAccess (what the guest sees at virtual pfn << 12)

    func page(pfn: UInt64) -> UnsafeMutableRawPointer { frameMemory(p2m[Int(pfn)]) }

    /// The leaf entry mapping virtual address `address`, walking from the root.
    func translate(_ address: UInt64) -> UInt64? {
        var table = root
        for level in stride(from: 4, through: 1, by: -1) {
            let index = Int((address >> (12 + 9 * UInt64(level - 1))) & 511)
            let entry = load(table, index)
            guard entry & PVPageTableEntry.present != 0 else { return nil }
            if level == 1 { return entry }
            table = XenPVEntry.frame(entry)
        }
        return nil
    }

    /// Xen's check of one entry write into table `mfn` at level `level`.
    func validate(_ value: UInt64, level: Int) -> Bool {
        guard value & PVPageTableEntry.present != 0 else { return true }
        let target = XenPVEntry.frame(value)
        guard ownedFrames.contains(target) else { return false }
        if level == 1 {
            // No writable mapping of a page table.
            return !(value & PVPageTableEntry.writable != 0 && tableLevel[target] != nil)
        }
        if let existing = tableLevel[target] { return existing == level - 1 }
        // A page becomes a table only without writable mappings.
        return writableMappings[target, default: 0] == 0
    }

    func write(table mfn: UInt64, index: Int, value: UInt64) -> Bool {
        guard let level = tableLevel[mfn], validate(value, level: level) else { return false }
        let old = load(mfn, index)
        if level == 1 {
            account(old, by: -1)
            account(value, by: 1)
        } else if value & PVPageTableEntry.present != 0 {
            tableLevel[XenPVEntry.frame(value)] = level - 1
        }
        store(mfn, index, value)
        return true
    }

    // MARK: Hypercalls

    func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32, successCount: UnsafeMutablePointer<UInt32>?,
        domain: domid_t
    ) -> Int {
        mmuCalls += 1
        var done: UInt32 = 0
        defer { successCount?.pointee = done }
        guard domain == cxen_domid_self else { return -Int(XEN_ESRCH.rawValue) }
        for index in 0..<Int(count) {
            let request = requests[index]
            if let refuse = refuseRequest, refuse == mmuRequests.count { return -Int(XEN_EPERM.rawValue) }
            mmuRequests.append(request)
            guard request.ptr & 7 == UInt64(MMU_NORMAL_PT_UPDATE),
                write(table: request.ptr >> 12, index: Int((request.ptr & 0xFFF) >> 3), value: request.val)
            else { return -Int(XEN_EINVAL.rawValue) }
            done += 1
        }
        return 0
    }

    func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int {
        log.append("update_va_mapping \(hex(virtualAddress)) \(hex(entry)) \(flags)")
        if refuseUpdateVA { return -Int(XEN_EPERM.rawValue) }
        var table = root
        for level in stride(from: 4, to: 1, by: -1) {
            let next = load(table, Int((virtualAddress >> (12 + 9 * UInt64(level - 1))) & 511))
            guard next & PVPageTableEntry.present != 0 else { return -Int(XEN_EINVAL.rawValue) }
            table = XenPVEntry.frame(next)
        }
        return write(table: table, index: Int((virtualAddress >> 12) & 511), value: entry) ? 0 : -Int(XEN_EINVAL.rawValue)
    }

    func setTrapTable(_ traps: UnsafePointer<trap_info>) -> Int {
        trapTable = []
        var index = 0
        while true {
            trapTable.append(traps[index])
            if traps[index].address == 0 { break }
            index += 1
        }
        return trapStatus
    }
    func setCallbacks(event: UInt64, failsafe: UInt64, syscall: UInt64) -> Int {
        if callbackStatus == 0 { callbacks = (event, failsafe, syscall) }
        return callbackStatus
    }
    func setSegmentBase(_ which: UInt32, _ base: UInt64) -> Int {
        if segmentStatus == 0 { segmentBases.append((which, base)) }
        return segmentStatus
    }
    func xenVersion() -> Int {
        xenVersionCalls += 1
        // Xen delivers the pending upcall on the way back: the callback
        // clears the pending byte.
        if let vcpuInfo { vcpuInfo.storeBytes(of: 0, toByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending, as: UInt8.self) }
        return 0x0004_0011
    }
    func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int {
        guard command == SCHEDOP_block else { return -Int(XEN_ENOSYS.rawValue) }
        blocks += 1
        // sched.h: blocking with events masked unmasks them atomically.
        if let vcpuInfo {
            vcpuInfo.storeBytes(of: 0, toByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask, as: UInt8.self)
            vcpuInfo.storeBytes(of: 0, toByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending, as: UInt8.self)
        }
        return 0
    }
    func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        guard command == EVTCHNOP_bind_virq else { return -Int(XEN_ENOSYS.rawValue) }
        let request = argument.assumingMemoryBound(to: evtchn_bind_virq.self)
        guard request.pointee.virq == UInt32(VIRQ_TIMER), request.pointee.vcpu == 0 else { return -Int(XEN_EINVAL.rawValue) }
        boundVIRQs.append(request.pointee.virq)
        request.pointee.port = 7
        return 0
    }
    func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int { -Int(XEN_ENOSYS.rawValue) }
    func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int { -Int(XEN_ENOSYS.rawValue) }
    func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int { -Int(XEN_ENOSYS.rawValue) }
    func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int { -Int(XEN_ENOSYS.rawValue) }
    func setTimerOp(_ timeout: UInt64) -> Int {
        if legacyStatus == 0 { legacyTimer.append(timeout) }
        return legacyStatus
    }
    func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int {
        guard command == VCPUOP_set_singleshot_timer, vcpu == 0, let argument else { return -Int(XEN_EINVAL.rawValue) }
        if singleshotStatus == 0 { singleshot.append(argument.load(as: vcpu_set_singleshot_timer.self).timeout_abs_ns) }
        return singleshotStatus
    }

    func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}

/// The builder against the machine model: the PV machine, its P2M list
/// and a batch buffer.
struct PVMemoryFixture {
    let machine: PVMachine
    let layout: XenPVMemoryLayout
    var batch: [mmu_update]

    init(pageCount: UInt64, pageTableBase: UInt64 = 20, batchSize: Int = 64) {
        machine = PVMachine(pageCount: pageCount, pageTableBase: pageTableBase)
        layout = XenPVMemoryLayout(pageCount: pageCount, pageTableBase: pageTableBase, pageTableFrames: machine.bootstrapFrames)
        batch = Array(repeating: mmu_update(ptr: 0, val: 0), count: batchSize)
    }

    mutating func build() throws(XenPVError) -> XenPVMemoryMap {
        let machine = self.machine
        let layout = self.layout
        return try machine.p2m.withUnsafeBufferPointer { frames throws(XenPVError) in
            try batch.withUnsafeMutableBufferPointer { batch throws(XenPVError) in
                var builder = XenPVPageTableBuilder<PVMachine, PVMachine>(
                    layout: layout, frames: frames.baseAddress!, access: machine, batch: batch)
                var hypervisor = machine
                return try builder.mapRemainingPages(hypervisor: &hypervisor)
            }
        }
    }

    /// Every frame of the domain is mapped exactly once at pfn << 12, with
    /// its machine frame, page tables read-only and everything else writable.
    func checkEveryFrameMappedOnce() {
        var wrong: [UInt64] = []
        for pfn in 0..<machine.pageCount {
            let mfn = machine.p2m[Int(pfn)]
            guard let entry = machine.translate(pfn << 12), XenPVEntry.frame(entry) == mfn,
                machine.mappings[mfn] == 1,
                (entry & PVPageTableEntry.writable != 0) == (machine.tableLevel[mfn] == nil)
            else {
                wrong.append(pfn)
                continue
            }
        }
        #expect(wrong.isEmpty, "frames mapped wrongly: \(wrong.prefix(8))")
        #expect(machine.mappings.values.allSatisfy { $0 == 1 }, "a frame is mapped twice")
    }
}

@Suite struct XenPVMemoryTests {
    @Test func theLayoutIsTheGuaranteedPartOfXensBootstrapRegion() {
        // Tables end at 25: a stack page and 512 KiB later is 154, rounded up to 4 MiB.
        let layout = XenPVMemoryLayout(pageCount: 100_000, pageTableBase: 20, pageTableFrames: 5)
        #expect(layout.firstFree == 25)
        #expect(layout.mappedEnd == 1024)
        // Tables ending 129 pages before a 4 MiB boundary: the region ends there.
        #expect(XenPVMemoryLayout(pageCount: 100_000, pageTableBase: 890, pageTableFrames: 5).mappedEnd == 1024)
        #expect(XenPVMemoryLayout(pageCount: 100_000, pageTableBase: 891, pageTableFrames: 5).mappedEnd == 2048)
        // A small domain is mapped whole.
        #expect(XenPVMemoryLayout(pageCount: 600, pageTableBase: 20, pageTableFrames: 5).mappedEnd == 600)
    }

    @Test func theLayoutComesFromStartInfo() throws {
        var info = start_info()
        withUnsafeMutableBytes(of: &info.magic) { bytes in
            for (index, byte) in "xen-3.0-x86_64".utf8.enumerated() { bytes[index] = byte }
        }
        info.nr_pages = 4096
        info.shared_info = 0x7000_0000
        info.store_mfn = 0x1234
        info.console.domU.mfn = 0x1235
        info.pt_base = 40 << 12
        info.nr_pt_frames = 6
        info.mfn_list = 0x20_0000
        let parsed = try withUnsafePointer(to: &info) { pointer throws(StartInfoError) in try XenStartInfo(pointer) }
        let layout = XenPVMemoryLayout(parsed)
        #expect(layout == XenPVMemoryLayout(pageCount: 4096, pageTableBase: 40, pageTableFrames: 6))
        #expect(layout.firstFree == 46 && layout.mappedEnd == 1024)
    }

    @Test func theRestOfTheDomainIsMappedWithExactRequests() throws {
        // 2348 pages: [0, 1024) mapped by Xen; 1024–2347 need three L1 tables.
        var fixture = PVMemoryFixture(pageCount: 2348)
        let machine = fixture.machine
        #expect(machine.bootstrapFrames == 5)
        let map = try fixture.build()
        #expect(map == XenPVMemoryMap(firstFree: 28, pageCount: 2348, newTables: 3, newlyMapped: 1324))
        // Each new table is made read-only before it is linked.
        let tables: [UInt64] = [25, 26, 27]
        #expect(machine.log == tables.map {
            "update_va_mapping \(machine.hex($0 << 12)) \(machine.hex(XenPVEntry.readOnly(machineFrame: machine.p2m[Int($0)]))) \(cxen_uvmf_invlpg)"
        })
        // The requests, in order: link, then its 512 (or fewer) entries.
        let l2 = machine.p2m[22]
        var expected: [(UInt64, UInt64)] = []
        for (chunk, table) in tables.enumerated() {
            let mfn = machine.p2m[Int(table)]
            expected.append(((l2 << 12) + UInt64(2 + chunk) * 8, XenPVEntry.table(machineFrame: mfn)))
            let first = 1024 + UInt64(chunk) * 512
            for pfn in first..<min(first + 512, 2348) {
                expected.append(((mfn << 12) + (pfn % 512) * 8, PVPageTableEntry.data(frame: machine.p2m[Int(pfn)])))
            }
        }
        #expect(machine.mmuRequests.count == expected.count)
        #expect(zip(machine.mmuRequests, expected).allSatisfy { $0.ptr == $1.0 && $0.val == $1.1 })
        // Batches of 64: no call carries more.
        #expect(machine.mmuCalls >= (expected.count + 63) / 64)
        fixture.checkEveryFrameMappedOnce()
    }

    @Test func aDomainAboveOneGiBGetsANewLevel2Table() throws {
        // 600 pages past 1 GiB: 510 L1s below it, an L2 and two L1s above.
        var fixture = PVMemoryFixture(pageCount: 262_144 + 600, batchSize: 256)
        let map = try fixture.build()
        #expect(map.newTables == 510 + 1 + 2)
        #expect(map.firstFree == 25 + 513)
        let l3 = fixture.machine.p2m[21]
        let newLevel2 = XenPVEntry.frame(fixture.machine.load(l3, 1))
        #expect(fixture.machine.tableLevel[newLevel2] == 2)
        fixture.checkEveryFrameMappedOnce()
    }

    @Test func aDomainXenMappedWholeNeedsNothing() throws {
        var fixture = PVMemoryFixture(pageCount: 900)
        let map = try fixture.build()
        #expect(map == XenPVMemoryMap(firstFree: 25, pageCount: 900, newTables: 0, newlyMapped: 0))
        #expect(fixture.machine.mmuCalls == 0 && fixture.machine.log.isEmpty)
        fixture.checkEveryFrameMappedOnce()
    }

    @Test func runningOutOfPagesForTablesIsReported() {
        // Bootstrap tables end at 895 and the region at 1024: 129 free pages,
        // one too few for 130 new L1 tables.
        var fixture = PVMemoryFixture(pageCount: 1024 + 130 * 512, pageTableBase: 890)
        #expect(fixture.layout.firstFree == 895 && fixture.layout.mappedEnd == 1024)
        #expect(throws: XenPVError.noPageForPageTable(virtualAddress: (1024 + 129 * 512) << 12)) { try fixture.build() }
    }

    @Test func aRefusedUpdateIsATypedError() {
        var fixture = PVMemoryFixture(pageCount: 2348)
        fixture.machine.refuseRequest = 100
        #expect(throws: XenPVError.hypercall(.failed(.mmuUpdate, command: 0, status: -Int(XEN_EPERM.rawValue)))) {
            try fixture.build()
        }
        var second = PVMemoryFixture(pageCount: 2348)
        second.machine.refuseUpdateVA = true
        #expect(throws: XenPVError.hypercall(.failed(.updateVAMapping, command: 0, status: -Int(XEN_EPERM.rawValue)))) {
            try second.build()
        }
    }

    @Test func xensRulesRejectWritablePageTables() {
        // The model is strict where Xen is: a table mapped writable, or a
        // writably mapped page linked as a table, is refused.
        let machine = PVMachine(pageCount: 2348, pageTableBase: 20)
        let table = machine.p2m[22]
        #expect(machine.updateVAMapping(22 << 12, PVPageTableEntry.data(frame: table), flags: cxen_uvmf_invlpg) < 0)
        var link = mmu_update(ptr: (table << 12) + 2 * 8, val: XenPVEntry.table(machineFrame: machine.p2m[30]))
        var done: UInt32 = 0
        #expect(machine.mmuUpdate(&link, count: 1, successCount: &done, domain: cxen_domid_self) < 0 && done == 0)
    }

    @Test func aTableEntryNamingAnUnknownFrameIsReported() {
        var fixture = PVMemoryFixture(pageCount: 2348)
        // L4 slot 0 pointing at a data frame instead of the bootstrap L3.
        fixture.machine.store(fixture.machine.root, 0, XenPVEntry.table(machineFrame: fixture.machine.p2m[500]))
        #expect(throws: XenPVError.unknownPageTable(machineFrame: fixture.machine.p2m[500], level: 3)) { try fixture.build() }
    }

    @Test func anEmptyP2MEntryIsReported() {
        var fixture = PVMemoryFixture(pageCount: 2348)
        fixture.machine.p2m[1500] = 0
        #expect(throws: XenPVError.invalidFrame(pfn: 1500, machineFrame: 0)) { try fixture.build() }
    }

    @Test func grantFramesAreMachineFrames() {
        struct Pages: XenPVPageSource {
            let base: UnsafeMutableRawPointer
            var next = 0
            mutating func allocatePage() -> UnsafeMutableRawPointer? {
                defer { next += 1 }
                return next < 4 ? base + next * 4096 : nil
            }
            mutating func freePage(_ page: UnsafeMutableRawPointer) {}
            // The pages stand for pseudo-physical frames 1000–1003.
            func pseudoPhysicalFrame(of page: UnsafeMutableRawPointer) -> UInt64 { 1000 + UInt64((page - base) / 4096) }
        }
        let base = UnsafeMutableRawPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { base.deallocate() }
        let p2m = (0..<1003 as Range<UInt64>).map(PVMachine.machineFrame)
        p2m.withUnsafeBufferPointer { frames in
            var memory = XenPVFrames(pages: Pages(base: base), frames: frames.baseAddress!, pageCount: 1003)
            let first = memory.allocatePage()!
            let second = memory.allocatePage()!
            #expect(memory.frameNumber(of: first) == PVMachine.machineFrame(1000))
            #expect(memory.frameNumber(of: second) == PVMachine.machineFrame(1001))
            // Frame 1003 is outside the 1003-page domain.
            _ = memory.allocatePage()
            #expect(memory.frameNumber(of: memory.allocatePage()!) == 0)
        }
    }
}
