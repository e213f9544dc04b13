// Interrupts: the guest's interrupt layer: legacy 8259s remapped and masked,
// the local APIC enabled, the I/O APICs from the MADT (or MP table) masked
// and programmed per line, IDT gates 32–255 on their own IST stack, the
// dispatch of every vector with the right EOI, and the driver API for
// ISA/GSI lines and MSI/MSI-X vectors (Intel SDM vol. 3A ch. 6 and 11;
// 82093AA I/O APIC datasheet; 8259A datasheet for the ICW sequence).
#if hasFeature(Embedded)
import CPUPrimitives

/// A device interrupt handler. It runs on the interrupt stack with
/// interrupts disabled, before the EOI; it must quiet its device (read the
/// cause register) and return whether the device had a reason to
/// interrupt. A vector whose handler claims nothing 1000 times in a row is
/// treated as a storm: its line is masked (or the handler disabled) and the
/// console says so. Handlers must not allocate or free memory: the heap's
/// paths need more stack than the 16 KiB interrupt stack has.
public typealias InterruptHandler = (_ vector: UInt8) -> Bool

/// What `register` handed out: the vector, and the I/O APIC line behind
/// it (nil for MSI/MSI-X and IPIs).
public struct InterruptRegistration: Equatable, Sendable {
    public var vector: UInt8
    public var line: InterruptLine?
    /// Which of the vector's handlers (several on a shared level line).
    public var slot: Int = 0
}

/// Counters of the interrupt layer.
public struct InterruptStatistics: Sendable {
    /// Every interrupt taken (vectors 32–255).
    public var total: UInt64 = 0
    public var timer: UInt64 = 0
    /// SVR spurious vector and the masked 8259s' spurious IRQ 7/15.
    public var spurious: UInt64 = 0
    /// Vectors with no handler (reported once each on the console).
    public var unhandled: UInt64 = 0
    public var lastUnhandledVector: UInt8 = 0
    /// Handler calls that claimed nothing.
    public var unclaimed: UInt64 = 0
    /// Storms stopped (line masked or handler removed).
    public var storms: UInt64 = 0
    public var lastStormVector: UInt8 = 0
    public var apicErrors: UInt64 = 0
    /// HLTs executed by `ProcessorIdle.wait`.
    public var halts: UInt64 = 0
}

public enum Interrupts {
    /// IST slot of the external-interrupt gates (exceptions use IST 1, so a
    /// fault inside a handler does not overwrite the interrupted frame).
    public static var interruptStack: UInt8 { 2 }
    /// Handlers one vector can carry (a shared, level-triggered line).
    public static var handlersPerVector: Int { 4 }
    /// Consecutive unclaimed interrupts on one vector that make a storm.
    public static var stormThreshold: UInt32 { 1000 }

    nonisolated(unsafe) public internal(set) static var isRunning = false
    nonisolated(unsafe) public internal(set) static var localAPIC: LocalAPIC? = nil
    /// The boot CPU's APIC ID, where device lines and MSIs are sent. Read
    /// once in `start`: `localAPIC.id` reads the ID of whichever CPU runs
    /// the code, and drivers may be set up by a thread on an AP.
    nonisolated(unsafe) public internal(set) static var bootProcessorAPICID: UInt32 = 0
    /// Over the I/O APICs' index/data register pairs: a thread on an AP
    /// (rump's interrupt thread) unmasks a line while the boot CPU's
    /// handler masks another.
    static let ioAPICLock = TicketLock()
    nonisolated(unsafe) public internal(set) static var routing: InterruptRouting? = nil
    nonisolated(unsafe) static var ioAPICs: [IOAPIC<MMIORegisters>] = []
    nonisolated(unsafe) static var allocator = InterruptVectorAllocator()
    nonisolated(unsafe) static var handlers: [InterruptHandler?] = []
    nonisolated(unsafe) static var lineOfVector: [InterruptLine?] = []
    // Per-vector state touched by the dispatch: fixed buffers allocated
    // once, so an interrupt never allocates, frees or copies an array (the
    // heap needs more stack than the interrupt stack offers).
    nonisolated(unsafe) static var unclaimedRun = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
    nonisolated(unsafe) static var perVector = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
    /// A storm turned the vector's handler off (MSI/IPI vectors, whose
    /// source cannot be masked here).
    nonisolated(unsafe) static var silenced = UnsafeMutablePointer<Bool>.allocate(capacity: 256)
    nonisolated(unsafe) static var reported: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    nonisolated(unsafe) public internal(set) static var statistics = InterruptStatistics()
    /// TSC ticks `start()` took (firmware tables, APICs); boot pays this.
    nonisolated(unsafe) public internal(set) static var startTicks: UInt64 = 0

    /// Per CPU: set by a device interrupt or a wake-up IPI (not the
    /// timer) on that CPU; `ProcessorIdle.wait` returns when it finds its
    /// CPU's flag set, and clears it.
    nonisolated(unsafe) static var wakePending = UnsafeMutablePointer<Bool>.allocate(capacity: Processors.limit)
    /// Interrupts taken by each AP (index 0 unused). The counters above
    /// (`statistics`, `count(vector:)`) are the boot CPU's alone: only it
    /// takes device interrupts, and no two CPUs write one counter.
    nonisolated(unsafe) static var applicationProcessorCounts = UnsafeMutablePointer<UInt64>.allocate(capacity: Processors.limit)

    /// Interrupts (IPIs, timer) taken by CPU `index` > 0.
    public static func interruptsTaken(on index: Int) -> UInt64 {
        guard isRunning, index > 0, index < Processors.limit else { return 0 }
        return applicationProcessorCounts[index]
    }

    /// The scheduler's hook: called after every claimed device interrupt
    /// and IPI, on the interrupt stack with interrupts disabled, after the
    /// handler and before the EOI. It must only mark threads runnable (no
    /// context switch, no blocking, no allocation that may wait); the
    /// switch happens when `ProcessorIdle.wait` returns to the scheduler.
    nonisolated(unsafe) public static var wakeHook: (() -> Void)? = nil

    /// Interrupts of `vector` taken so far.
    public static func count(vector: UInt8) -> UInt64 { isRunning ? perVector[Int(vector)] : 0 }

    /// Brings the interrupt layer up: the firmware's tables, the 8259s
    /// remapped to 0x20–0x2F and masked, the local APIC enabled (x2APIC
    /// when offered), every I/O APIC pin masked, gates 32–255 installed,
    /// the LAPIC timer calibrated. Interrupts stay disabled (IF clear)
    /// outside `ProcessorIdle.wait` unless a caller enables them. Without
    /// a local APIC nothing changes and `isRunning` stays false.
    public static func start() {
        guard !isRunning else { return }
        let began = cpu_rdtsc()
        defer { startTicks = cpu_rdtsc() &- began }
        let cpu = CPUInformation(source: HardwareCPUID())
        guard cpu.has(.apic) else { return }
        handlers = [InterruptHandler?](repeating: nil, count: 256 * handlersPerVector)
        lineOfVector = [InterruptLine?](repeating: nil, count: 256)
        unclaimedRun.initialize(repeating: 0, count: 256)
        perVector.initialize(repeating: 0, count: 256)
        silenced.initialize(repeating: false, count: 256)
        wakePending.initialize(repeating: false, count: Processors.limit)
        applicationProcessorCounts.initialize(repeating: 0, count: Processors.limit)
        let firmware = Platform.firmware
        routing = firmware.interruptRouting
        if let pointer = firmware.multiprocessor?.floatingPointer, pointer.imcrPresent {
            // IMCR (MP spec §3.6.2.1): route the 8259 output away from the BSP.
            cpu_outb(0x22, 0x70)
            cpu_outb(0x23, 0x01)
        }
        maskLegacyPICs()
        Exceptions.installInterruptGates(interruptStack: interruptStack)
        let apic = LocalAPIC(x2APIC: cpu.has(.x2apic))
        apic.enable(spuriousVector: InterruptVectors.spurious, errorVector: InterruptVectors.apicError)
        localAPIC = apic
        bootProcessorAPICID = apic.id
        if var table = routing {
            for index in table.controllers.indices {
                let controller = table.controllers[index]
                if !mapDevice(controller.address, length: 0x20) { continue }
                let ioAPIC = IOAPIC(
                    registers: MMIORegisters(base: UInt(controller.address)),
                    globalSystemInterruptBase: controller.globalSystemInterruptBase)
                table.controllers[index].pinCount = ioAPIC.pinCount
                ioAPIC.maskAll()
                ioAPICs.append(ioAPIC)
            }
            // Only controllers that could be mapped stay usable.
            if ioAPICs.count != table.controllers.count { table.controllers = [] ; ioAPICs = [] }
            routing = table
        }
        LocalAPICTimer.start(apic: apic, cpu: cpu)
        isRunning = true
    }

    /// Remaps the 8259 pair to 0x20–0x2F (ICW1–ICW4) and masks every IRQ,
    /// so that nothing they raise can alias an exception vector.
    static func maskLegacyPICs() {
        cpu_outb(0x20, 0x11)
        cpu_outb(0xA0, 0x11)
        cpu_outb(0x21, InterruptVectors.legacyPICBase)
        cpu_outb(0xA1, InterruptVectors.legacyPICBase + 8)
        cpu_outb(0x21, 0x04)
        cpu_outb(0xA1, 0x02)
        cpu_outb(0x21, 0x01)
        cpu_outb(0xA1, 0x01)
        cpu_outb(0x21, 0xFF)
        cpu_outb(0xA1, 0xFF)
    }

    /// Device registers inside the 32-bit PCI hole are mapped at boot; others
    /// are mapped uncached now.
    static func mapDevice(_ address: UInt64, length: UInt64) -> Bool {
        if address >= Platform.deviceWindowStart && address + length <= 0x1_0000_0000 { return true }
        guard var mapper = Platform.pageTables, Platform.heap != nil else { return false }
        if mapper.translate(VirtualAddress(address)) != nil { return true }
        do throws(PlatformCoreError) {
            try MemoryLock.withLock { () throws(PlatformCoreError) in
                try PlatformCore.mapDevice(
                    PhysicalRange(start: PhysicalAddress(address & ~0xFFF), end: PhysicalAddress((address + length + 0xFFF) & ~0xFFF)),
                    mapper: &mapper, allocator: &Platform.heap!.pages.allocator)
            }
        } catch {
            return false
        }
        return true
    }

    // MARK: Driver API

    /// Runs `body` with interrupts disabled, restoring the flag afterwards.
    @inline(__always)
    public static func withInterruptsDisabled<Result>(_ body: () -> Result) -> Result {
        let wasEnabled = cpu_save_and_disable_interrupts() & (1 << 9) != 0
        let result = body()
        if wasEnabled { cpu_enable_interrupts() }
        return result
    }

    /// Enables interrupts outside idle waits too (handlers then run
    /// whenever a device interrupts, between any two instructions).
    public static func enable() { cpu_enable_interrupts() }
    public static func disable() { cpu_disable_interrupts() }

    /// Allocates a device vector and registers `handler` on it (for MSI,
    /// MSI-X and IPIs): the caller programs the device with
    /// `message(vector:)`.
    public static func register(handler: @escaping InterruptHandler) throws(InterruptError) -> InterruptRegistration {
        guard isRunning else { throw .notStarted }
        let wasEnabled = cpu_save_and_disable_interrupts() & (1 << 9) != 0
        defer { if wasEnabled { cpu_enable_interrupts() } }
        let vector = try allocator.allocate()
        handlers[Int(vector) * handlersPerVector] = handler
        unclaimedRun[Int(vector)] = 0
        silenced[Int(vector)] = false
        return InterruptRegistration(vector: vector, line: nil)
    }

    /// Registers `handler` on `vector` above the device range that a
    /// hypervisor raises by itself (Xen's event-channel upcall,
    /// `HVMOP_set_evtchn_upcall_vector`). The vectors the interrupt layer
    /// uses itself (timer, wake-up, TLB shootdown, APIC error, spurious)
    /// and one that already has a handler are refused.
    public static func register(fixedVector vector: UInt8, handler: @escaping InterruptHandler) throws(InterruptError) -> InterruptRegistration {
        guard isRunning else { throw .notStarted }
        let reserved = [InterruptVectors.timer, InterruptVectors.wakeup, InterruptVectors.tlbShootdown, InterruptVectors.apicError, InterruptVectors.spurious]
        guard vector > InterruptVectors.lastDevice, !reserved.contains(vector) else { throw .vectorBusy(vector) }
        let wasEnabled = cpu_save_and_disable_interrupts() & (1 << 9) != 0
        defer { if wasEnabled { cpu_enable_interrupts() } }
        guard handlers[Int(vector) * handlersPerVector] == nil else { throw .vectorBusy(vector) }
        handlers[Int(vector) * handlersPerVector] = handler
        unclaimedRun[Int(vector)] = 0
        silenced[Int(vector)] = false
        return InterruptRegistration(vector: vector, line: nil)
    }

    /// The MSI message that raises `vector` on this CPU (edge, fixed).
    public static func message(vector: UInt8) -> MSIMessage {
        MSIMessage(vector: vector, destination: UInt8(truncatingIfNeeded: bootProcessorAPICID))
    }

    /// Routes ISA IRQ `irq` (after the MADT's overrides) to a new vector
    /// with `handler`, and unmasks it.
    public static func register(isaIRQ irq: UInt8, handler: @escaping InterruptHandler) throws(InterruptError) -> InterruptRegistration {
        guard isRunning, let routing else { throw .notStarted }
        guard let line = routing.line(isaIRQ: irq) else { throw .noIOAPIC(globalSystemInterrupt: UInt32(irq)) }
        return try register(line: line, handler: handler)
    }

    /// Routes `gsi` with the given mode to a new vector with `handler`, and
    /// unmasks it.
    public static func register(
        globalSystemInterrupt gsi: UInt32, activeLow: Bool, levelTriggered: Bool, handler: @escaping InterruptHandler
    ) throws(InterruptError) -> InterruptRegistration {
        guard isRunning, let routing else { throw .notStarted }
        guard let line = routing.line(globalSystemInterrupt: gsi, activeLow: activeLow, levelTriggered: levelTriggered) else {
            throw .noIOAPIC(globalSystemInterrupt: gsi)
        }
        return try register(line: line, handler: handler)
    }

    /// Routes a PCI function's INTx# (its Interrupt Line register, as the
    /// firmware set it) to a new vector with `handler`, and unmasks it.
    public static func register<Access: PCIConfigurationAccess>(
        pciFunction function: PCIAddress, access: Access, handler: @escaping InterruptHandler
    ) throws(InterruptError) -> InterruptRegistration {
        guard isRunning, let routing else { throw .notStarted }
        let value = access.read8(function, offset: 0x3C)
        guard access.read8(function, offset: 0x3D) != 0 else { throw .noInterrupt(reason: "the function has no INTx pin") }
        guard let line = routing.line(pciInterruptLine: value) else {
            throw .noInterrupt(reason: "the firmware assigned no interrupt line")
        }
        return try register(line: line, handler: handler)
    }

    /// Routes `line` to a new vector with `handler` and unmasks it. A line
    /// already in use is shared when both uses are level-triggered with the
    /// same polarity (PCI INTx#): the handler joins the line's vector, and
    /// every handler runs on each interrupt. Otherwise `lineBusy`.
    public static func register(line: InterruptLine, handler: @escaping InterruptHandler) throws(InterruptError) -> InterruptRegistration {
        guard isRunning, line.controller < ioAPICs.count else { throw .notStarted }
        for index in 0..<256 {
            guard let existing = lineOfVector[index], existing.globalSystemInterrupt == line.globalSystemInterrupt else { continue }
            guard existing.levelTriggered && line.levelTriggered && existing.activeLow == line.activeLow else {
                throw .lineBusy(globalSystemInterrupt: line.globalSystemInterrupt)
            }
            let wasEnabled = cpu_save_and_disable_interrupts() & (1 << 9) != 0
            defer { if wasEnabled { cpu_enable_interrupts() } }
            for slot in 0..<handlersPerVector where handlers[index * handlersPerVector + slot] == nil {
                handlers[index * handlersPerVector + slot] = handler
                return InterruptRegistration(vector: UInt8(index), line: existing, slot: slot)
            }
            throw .lineBusy(globalSystemInterrupt: line.globalSystemInterrupt)
        }
        let registration = try register(handler: handler)
        withInterruptsDisabled { lineOfVector[Int(registration.vector)] = line }
        var entry = IOAPICRedirectionEntry(
            vector: registration.vector, activeLow: line.activeLow, levelTriggered: line.levelTriggered, masked: false,
            destination: UInt8(truncatingIfNeeded: bootProcessorAPICID))
        entry.deliveryMode = .fixed
        ioAPICLock.withLock { ioAPICs[line.controller].setEntry(pin: line.pin, entry) }
        return InterruptRegistration(vector: registration.vector, line: line)
    }

    /// Masks or unmasks the I/O APIC line of a registration.
    public static func setMasked(_ registration: InterruptRegistration, _ masked: Bool) {
        guard let line = registration.line, line.controller < ioAPICs.count else { return }
        ioAPICLock.withLock { ioAPICs[line.controller].setMasked(pin: line.pin, masked) }
    }

    /// Removes the handler; the last one of a vector also masks the line
    /// (if any) and frees the vector. Not from inside a handler.
    public static func unregister(_ registration: InterruptRegistration) {
        withInterruptsDisabled {
            let base = Int(registration.vector) * handlersPerVector
            handlers[base + registration.slot] = nil
            for slot in 0..<handlersPerVector where handlers[base + slot] != nil { return }
            if let line = registration.line, line.controller < ioAPICs.count {
                ioAPICLock.withLock { ioAPICs[line.controller].setMasked(pin: line.pin, true) }
            }
            lineOfVector[Int(registration.vector)] = nil
            try? allocator.free(registration.vector)
        }
    }

    /// The redirection entry programmed for a line (for diagnostics).
    public static func redirectionEntry(_ line: InterruptLine) -> IOAPICRedirectionEntry? {
        guard line.controller < ioAPICs.count else { return nil }
        return ioAPICLock.withLock { ioAPICs[line.controller].entry(pin: line.pin) }
    }

    /// Sends a fixed IPI with `vector` to this CPU.
    public static func sendSelfIPI(vector: UInt8) {
        localAPIC?.send(InterruptCommand(vector: vector, shorthand: .this))
    }

    // MARK: Dispatch

    static func dispatch(vector: UInt8) {
        let processor = Processors.currentIndex
        if processor != 0 {
            dispatchOnApplicationProcessor(vector: vector, processor: processor)
            return
        }
        statistics.total &+= 1
        guard isRunning else { return }
        perVector[Int(vector)] &+= 1
        if vector == InterruptVectors.spurious {
            statistics.spurious &+= 1
            return
        }
        if InterruptVectors.isLegacyPIC(vector) {
            // A masked 8259 still signals spurious IRQ 7/15; a spurious
            // IRQ 15 needs an EOI at the master for the cascade line.
            statistics.spurious &+= 1
            if vector == InterruptVectors.legacyPICBase + 15 { cpu_outb(0x20, 0x20) }
            return
        }
        guard let apic = localAPIC else { return }
        if vector == InterruptVectors.wakeup {
            // SMP wake-up: ends the idle wait (work was queued here).
            wakePending[0] = true
            apic.endOfInterrupt()
            return
        }
        if vector == InterruptVectors.tlbShootdown {
            TLBShootdown.answerInterrupt()
            apic.endOfInterrupt()
            return
        }
        if vector == InterruptVectors.timer {
            statistics.timer &+= 1
            LocalAPICTimer.expired()
            apic.endOfInterrupt()
            return
        }
        if vector == InterruptVectors.apicError {
            statistics.apicErrors &+= 1
            _ = apic.errorStatus()
            apic.endOfInterrupt()
            return
        }
        let base = Int(vector) * handlersPerVector
        if !silenced[Int(vector)], handlers[base] != nil || handlers[base + 1] != nil || handlers[base + 2] != nil || handlers[base + 3] != nil {
            // Every handler of a shared line runs: each quiets its device.
            var claimed = false
            for slot in 0..<handlersPerVector {
                if let handler = handlers[base + slot], handler(vector) { claimed = true }
            }
            if claimed {
                unclaimedRun[Int(vector)] = 0
                wakePending[0] = true
                wakeHook?()
            } else {
                statistics.unclaimed &+= 1
                unclaimedRun[Int(vector)] &+= 1
                if unclaimedRun[Int(vector)] >= stormThreshold { stopStorm(vector: vector) }
            }
        } else {
            statistics.unhandled &+= 1
            statistics.lastUnhandledVector = vector
            reportOnce(vector)
        }
        if apic.isInService(vector) { apic.endOfInterrupt() }
    }

    /// An AP takes IPIs and its own timer only (device lines and MSIs go
    /// to the boot CPU); it counts them in its own slot.
    static func dispatchOnApplicationProcessor(vector: UInt8, processor: Int) {
        guard isRunning, let apic = localAPIC else { return }
        applicationProcessorCounts[processor] &+= 1
        switch vector {
        case InterruptVectors.spurious:
            return
        case InterruptVectors.wakeup:
            wakePending[processor] = true
        case InterruptVectors.tlbShootdown:
            TLBShootdown.answerInterrupt()
        case InterruptVectors.timer:
            LocalAPICTimer.expired()
        case InterruptVectors.apicError:
            _ = apic.errorStatus()
        default:
            if InterruptVectors.isLegacyPIC(vector) { return }
            if !apic.isInService(vector) { return }
        }
        apic.endOfInterrupt()
    }

    /// A storm: mask the line behind `vector`, or disable the handler of an
    /// MSI/IPI vector (its next arrivals count as unhandled), and report.
    /// Nothing is freed here (`unregister` frees, outside interrupts).
    static func stopStorm(vector: UInt8) {
        statistics.storms &+= 1
        statistics.lastStormVector = vector
        unclaimedRun[Int(vector)] = 0
        Platform.write("rumprun: interrupt storm on vector ")
        Platform.writeHex(UInt64(vector))
        if let line = lineOfVector[Int(vector)], line.controller < ioAPICs.count {
            ioAPICLock.withLock { ioAPICs[line.controller].setMasked(pin: line.pin, true) }
            Platform.write(" (GSI ")
            Platform.writeDecimal(UInt64(line.globalSystemInterrupt))
            Platform.write("): line masked\n")
        } else {
            silenced[Int(vector)] = true
            Platform.write(": handler disabled\n")
        }
    }

    static func reportOnce(_ vector: UInt8) {
        let bit = UInt64(1) << UInt64(vector & 63)
        var seen = false
        switch vector >> 6 {
        case 0: seen = reported.0 & bit != 0; reported.0 |= bit
        case 1: seen = reported.1 & bit != 0; reported.1 |= bit
        case 2: seen = reported.2 & bit != 0; reported.2 |= bit
        default: seen = reported.3 & bit != 0; reported.3 |= bit
        }
        guard !seen else { return }
        Platform.write("rumprun: interrupt: unexpected vector ")
        Platform.writeHex(UInt64(vector))
        Platform.write(" (no handler), ignored\n")
    }
}

/// Called by isr.S for vectors 32–255 with the saved frame (same layout as
/// an exception frame: vector at slot 15).
@_cdecl("bmk_interrupt")
public func interruptEntry(_ frame: UnsafeMutablePointer<UInt64>) {
    Interrupts.dispatch(vector: UInt8(truncatingIfNeeded: frame[15]))
}
#endif
