// GuestProcessors: application-processor bring-up on the hw platform and the
// per-CPU block behind GS. The boot processor copies ap_trampoline.S's blob
// to a page below 1 MiB, prepares each AP's stack, GDT and TSS, and starts
// the APs one at a time with INIT-SIPI-SIPI (Intel SDM vol. 3A §8.4.4.1). An
// AP that does not report within ProcessorStartupTiming.reportTimeout is
// reported and skipped. Started APs wait in HLT for work posted to their
// mailbox (`Processors.run(on:_:argument:)`) and a wake-up IPI.
#if hasFeature(Embedded)
import CPUPrimitives
import Synchronization

/// The per-CPU block GS points at. Field offsets are ABI: `cpu_gs_load64`
/// reads them.
struct PerCPUBlock {
    var selfAddress: UInt64        // 0
    var index: UInt64              // 8
    var apicID: UInt64             // 16
    var stackTop: UInt64           // 24
    var mailboxWork: UInt64        // 32: a @convention(c) (UInt64) -> Void, 0 when empty
    var mailboxArgument: UInt64    // 40
    var completed: UInt64          // 48: work items finished
    var online: UInt64             // 56: 1 once the AP reported
    static var indexOffset: UInt32 { 8 }
}

public enum ProcessorStartupError: Error {
    case noTrampolinePage
    case noLocalAPIC
    case pageTablesAbove4GiB(root: UInt64)
    case memory(PlatformCoreError)
}

public enum Processors {
    /// Most CPUs the platform starts.
    public static let limit = 64

    nonisolated(unsafe) static var blocks: UnsafeMutablePointer<PerCPUBlock>? = nil
    nonisolated(unsafe) static var onlineCount = 1
    /// The boot CPU's local APIC (the interrupt layer's); the same
    /// registers address each CPU's own APIC.
    static var localAPIC: LocalAPIC? { Interrupts.localAPIC }
    nonisolated(unsafe) static var tscPerMicrosecond: UInt64 = 1000
    nonisolated(unsafe) static var preparedTables: [PreparedDescriptorTables] = []
    nonisolated(unsafe) static var slots: [ProcessorSlot] = []

    /// CPUs running (the boot processor and every AP that reported).
    public static var count: Int { onlineCount }

    /// The running CPU's dense index (0 = boot processor).
    public static var currentIndex: Int {
        blocks == nil ? 0 : Int(cpu_gs_load64(PerCPUBlock.indexOffset))
    }

    /// The APIC ID of CPU `index`, if it is online.
    public static func apicID(of index: Int) -> UInt32? {
        guard let blocks, index >= 0, index < onlineCount else { return nil }
        return UInt32(blocks[index].apicID)
    }

    /// Gives the boot processor its per-CPU block (GS base) so that
    /// `currentIndex` works before any AP starts.
    static func setUpBootProcessor(apicID: UInt32) {
        let size = MemoryLayout<PerCPUBlock>.stride * limit
        let raw = MemoryLock.withLock { Platform.heap!.allocate(size: size, alignment: 64)! }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let table = raw.bindMemory(to: PerCPUBlock.self, capacity: limit)
        blocks = table
        table[0].selfAddress = UInt64(UInt(bitPattern: table))
        table[0].apicID = UInt64(apicID)
        table[0].online = 1
        cpu_wrmsr(0xC000_0101, table[0].selfAddress)
        TLBShootdown.prepare()
    }

    /// Starts the application processors of `plan`; returns how many came
    /// up. Prints one line per CPU that did not answer.
    static func start(plan: ProcessorStartupPlan, tscPerMicrosecond: UInt64) throws(ProcessorStartupError) -> Int {
        Self.tscPerMicrosecond = max(tscPerMicrosecond, 1)
        setUpBootProcessor(apicID: plan.bootProcessor.apicID)
        if plan.applicationProcessors.isEmpty { return 1 }
        guard let localAPIC else { throw .noLocalAPIC }

        let trampoline = try installTrampoline()
        defer { removeTrampoline(trampoline) }
        var next = 1
        for slot in plan.applicationProcessors {
            // Dense indexes: an AP that does not answer leaves no hole.
            var prepared: PreparedDescriptorTables
            var stack: UInt64
            do throws(PlatformCoreError) {
                (stack, prepared) = try MemoryLock.withLock { () throws(PlatformCoreError) in
                    (try PlatformCore.allocateStack(pages: 8, mapper: &Platform.pageTables!, allocator: &Platform.heap!.pages.allocator),
                     try PlatformCore.prepareDescriptorTables(istPages: 4, mapper: &Platform.pageTables!, allocator: &Platform.heap!.pages.allocator))
                }
            } catch {
                throw .memory(error)
            }
            let block = blocks! + next
            block.pointee = PerCPUBlock(
                selfAddress: UInt64(UInt(bitPattern: block)), index: UInt64(next), apicID: UInt64(slot.apicID),
                stackTop: stack, mailboxWork: 0, mailboxArgument: 0, completed: 0, online: 0)
            preparedTables.append(prepared)
            bmk_ap_prepare(stack, UInt32(next))
            if startOne(apicID: slot.apicID, page: UInt8(trampoline >> 12), block: block, apic: localAPIC) {
                slots.append(ProcessorSlot(index: next, apicID: slot.apicID, processorUID: slot.processorUID))
                next += 1
                onlineCount = next
            } else {
                preparedTables.removeLast()
                Platform.write("rumprun: cpu with APIC id ")
                Platform.writeDecimal(UInt64(slot.apicID))
                Platform.write(" did not start; skipped\n")
            }
        }
        return onlineCount
    }

    /// INIT, wait, STARTUP, wait, STARTUP if the AP has not reported, then
    /// wait for its report.
    static func startOne(apicID: UInt32, page: UInt8, block: UnsafeMutablePointer<PerCPUBlock>, apic: LocalAPIC) -> Bool {
        apic.send(.initialize(apicID: apicID))
        delay(microseconds: ProcessorStartupTiming.afterINIT)
        apic.send(.startup(apicID: apicID, page: page))
        delay(microseconds: ProcessorStartupTiming.afterSTARTUP)
        if volatileLoad(&block.pointee.online) == 0 {
            apic.send(.startup(apicID: apicID, page: page))
        }
        let deadline = cpu_rdtsc() &+ ProcessorStartupTiming.reportTimeout &* tscPerMicrosecond
        while volatileLoad(&block.pointee.online) == 0 {
            if cpu_rdtsc() > deadline { return false }
            cpu_pause()
        }
        return true
    }

    static func delay(microseconds: UInt64) {
        let end = cpu_rdtsc() &+ microseconds &* tscPerMicrosecond
        while cpu_rdtsc() < end { cpu_pause() }
    }

    /// Copies the blob to the first free page in [0x1000, 0x9F000) that the
    /// memory map calls usable, fills its slots, and makes it read+execute.
    /// Returns the page's address.
    static func installTrampoline() throws(ProcessorStartupError) -> UInt64 {
        let root = Platform.pageTables!.root.rawValue
        guard root < 0x1_0000_0000 else { throw .pageTablesAbove4GiB(root: root) }
        guard let page = trampolinePage() else { throw .noTrampolinePage }
        let size = Int(bmk_ap_trampoline_size())
        let target = UnsafeMutableRawPointer(bitPattern: UInt(page))!
        target.copyMemory(from: UnsafeRawPointer(bitPattern: bmk_ap_trampoline_address())!, byteCount: size)
        target.storeBytes(of: root, toByteOffset: 0x08, as: UInt64.self)
        target.storeBytes(of: UInt64(bmk_ap_entry_address()), toByteOffset: 0x10, as: UInt64.self)
        target.storeBytes(of: cpu_rdmsr(0xC000_0080), toByteOffset: 0x18, as: UInt64.self)
        setPage(page, attributes: .text)
        return page
    }

    static func removeTrampoline(_ page: UInt64) {
        setPage(page, attributes: .data)
    }

    static func setPage(_ page: UInt64, attributes: MemoryAttributes) {
        do throws(PageTableError) {
            try MemoryLock.withLock { () throws(PageTableError) in
                try Platform.pageTables!.protect(
                    range: VirtualAddress(page), byteCount: PageSize.small, attributes: attributes,
                    allocator: &Platform.heap!.pages.allocator)
            }
        } catch {
            Platform.panic("changing the AP trampoline page's attributes failed")
        }
        // Running APs executed the page: their TLBs hold it too.
        TLBShootdown.invalidate(start: page, byteCount: PageSize.small)
    }

    /// A page below 640 KiB, inside a usable region of the boot memory map,
    /// that holds nothing the kernel still uses (boot info has been copied).
    static func trampolinePage() -> UInt64? {
        guard let regions = Platform.boot?.memoryRegions else { return nil }
        var page: UInt64 = 0x8000
        while page < 0x9F000 {
            for region in regions where region.kind == .usable && region.start <= page && page + PageSize.small <= region.end {
                return page
            }
            page += PageSize.small
        }
        return nil
    }

    /// Runs `work(argument)` on CPU `index` (an AP): waits until its mailbox
    /// is empty, posts, and sends the wake-up IPI. The AP runs it from its
    /// idle loop, between threads. A caller that is itself on CPU `index`
    /// (a thread the scheduler placed there) runs the work at once, since
    /// its CPU's idle loop cannot run while it waits. Returns false for an
    /// index that is not an online AP.
    @discardableResult
    public static func run(on index: Int, _ work: @convention(c) (UInt64) -> Void, argument: UInt64) -> Bool {
        guard let blocks, index > 0, index < onlineCount else { return false }
        let block = blocks + index
        if index == currentIndex {
            // Work another CPU posted here first keeps its place in line.
            let flags = cpu_save_and_disable_interrupts()
            _ = runPostedWork(on: index)
            cpu_restore_interrupts(flags)
            work(argument)
            volatileStore(&block.pointee.completed, volatileLoad(&block.pointee.completed) + 1)
            return true
        }
        while volatileLoad(&block.pointee.mailboxWork) != 0 {
            TLBShootdown.answerPending()
            cpu_pause()
        }
        volatileStore(&block.pointee.mailboxArgument, argument)
        volatileStore(&block.pointee.mailboxWork, UInt64(UInt(bitPattern: unsafeBitCast(work, to: UnsafeRawPointer.self))))
        cpu_memory_barrier()
        bmk_signal_processor(0, UInt32(block.pointee.apicID))  // wake-up IPI (PrivilegedOperations.h)
        return true
    }

    /// Stops every other CPU with an NMI: their NMI handler finds the stop
    /// already claimed and halts without a report.
    static func haltOthers() {
        guard onlineCount > 1 else { return }
        bmk_signal_processor(1, 0)  // NMI to all others (PrivilegedOperations.h)
    }

    /// Work items CPU `index` has finished.
    public static func completed(on index: Int) -> UInt64 {
        guard let blocks, index >= 0, index < onlineCount else { return 0 }
        return volatileLoad(&blocks[index].completed)
    }

    /// Waits until CPU `index` has finished `count` work items in all.
    public static func wait(for index: Int, completed count: UInt64) {
        while completed(on: index) < count {
            TLBShootdown.answerPending()
            cpu_pause()
        }
    }
}

@inline(__always) func volatileLoad(_ pointer: UnsafeMutablePointer<UInt64>) -> UInt64 {
    cpu_compiler_barrier()
    let value = cpu_load64(UInt(bitPattern: pointer))
    cpu_compiler_barrier()
    return value
}

@inline(__always) func volatileStore(_ pointer: UnsafeMutablePointer<UInt64>, _ value: UInt64) {
    cpu_compiler_barrier()
    pointer.pointee = value
    cpu_compiler_barrier()
}

/// The AP's first Swift code (from bmk_ap_entry64 on the prepared stack).
@_cdecl("bmk_ap_main")
public func applicationProcessorMain(_ index: UInt32) -> Never {
    let block = Processors.blocks! + Int(index)
    PlatformCore.loadDescriptorTables(Processors.preparedTables[Int(index) - 1])
    cpu_load_idt(UInt64(bmk_idt_address()), UInt16(256 * 16 - 1))
    cpu_wrmsr(0xC000_0101, block.pointee.selfAddress)
    // This CPU's own APIC, in the boot CPU's mode (xAPIC or x2APIC), and
    // its timer in the mode the boot CPU chose (for the idle loop's waits).
    let apic = LocalAPIC(x2APIC: Processors.localAPIC?.isX2APIC ?? false)
    apic.enable(spuriousVector: InterruptVectors.spurious, errorVector: InterruptVectors.apicError)
    LocalAPICTimer.startOnApplicationProcessor(apic: apic)
    volatileStore(&block.pointee.online, 1)
    cpu_memory_barrier()
    while true {
        cpu_disable_interrupts()
        // Once threads exist, the scheduler's idle loop takes over (it
        // also runs mailbox work); the wake-up IPI of the first thread
        // queued here ends the halt below.
        if ThreadRuntime.isRunning { ThreadRuntime.enterOnApplicationProcessor() }
        if !Processors.runPostedWork(on: Int(index)) {
            // STI's one-instruction shadow: the wake-up IPI cannot slip in
            // between the check and HLT.
            cpu_idle_enable_interrupts_and_halt()
        }
    }
}

extension Processors {
    /// Whether work waits in CPU `index`'s mailbox.
    static func hasPostedWork(on index: Int) -> Bool {
        guard let blocks, index > 0, index < onlineCount else { return false }
        return volatileLoad(&blocks[index].mailboxWork) != 0
    }

    /// Runs the work in this CPU's (`index`) mailbox, if any, with
    /// interrupts enabled, and counts it done. Called with interrupts
    /// masked; returns with them masked. False when the mailbox was empty.
    static func runPostedWork(on index: Int) -> Bool {
        let block = blocks! + index
        let work = volatileLoad(&block.pointee.mailboxWork)
        if work == 0 { return false }
        cpu_enable_interrupts()
        let function = unsafeBitCast(UnsafeRawPointer(bitPattern: UInt(work))!, to: (@convention(c) (UInt64) -> Void).self)
        function(volatileLoad(&block.pointee.mailboxArgument))
        volatileStore(&block.pointee.mailboxWork, 0)
        cpu_memory_barrier()
        volatileStore(&block.pointee.completed, volatileLoad(&block.pointee.completed) + 1)
        cpu_disable_interrupts()
        return true
    }
}
#endif

#if hasFeature(Embedded)
extension Processors {
    /// Boot step: finds the processors in the ACPI MADT and starts every
    /// AP. A machine without ACPI or without a MADT runs on the boot
    /// processor alone (said on the console).
    static func startAll() {
        // CPUs from the ACPI MADT, else from the MP table (firmware without
        // ACPI, such as qboot on microvm with acpi=off).
        let firmware = Platform.firmware
        let plan: ProcessorStartupPlan
        guard let apic = localAPIC else {
            setUpBootProcessor(apicID: 0)
            return
        }
        if let madt = firmware.madt {
            plan = ProcessorStartupPlan(processors: madt.processors, bootAPICID: apic.id, limit: limit, x2APIC: apic.isX2APIC)
        } else if let multiprocessor = firmware.multiprocessor {
            plan = ProcessorStartupPlan(multiprocessor: multiprocessor, bootAPICID: apic.id, limit: limit)
        } else {
            setUpBootProcessor(apicID: apic.id)
            return
        }
        // The start-up delays need the TSC rate (the clock calibrates once).
        SystemClock.start()
        do throws(ProcessorStartupError) {
            _ = try start(plan: plan, tscPerMicrosecond: SystemClock.tscFrequency / 1_000_000)
        } catch {
            Platform.write("rumprun: application processors not started: ")
            switch error {
            case .noTrampolinePage: Platform.write("no usable page below 640 KiB for the trampoline")
            case .noLocalAPIC: Platform.write("no local APIC")
            case .pageTablesAbove4GiB: Platform.write("the kernel page tables lie above 4 GiB")
            case .memory: Platform.write("out of memory for stacks and descriptor tables")
            }
            Platform.write("\n")
        }
    }
}
/// The hw side of PrivilegedOperations.h's bmk_signal_processor: an IPI.
@_cdecl("bmk_hw_signal_processor")
public func hwSignalProcessor(_ kind: UInt32, _ apicID: UInt32) {
    switch kind {
    case 0: Processors.localAPIC?.send(.wakeUp(apicID: apicID))
    case 1: Processors.localAPIC?.send(.nonMaskableToAllOthers)
    default: Processors.localAPIC?.send(.tlbShootdown(apicID: apicID))
    }
}
#endif
