// GuestTLBShootdown: keeps every CPU's TLB in step with the kernel page
// tables (Intel SDM vol. 3A §4.10.4–4.10.5). Whatever removes or changes a
// live kernel mapping calls `TLBShootdown.invalidate` after the change
// (`KernelMappings.unmap` and `.protect` pair the two): this CPU's flush, then a request
// published in shared memory, the shootdown IPI (vector 0xF2) to every
// other online CPU, and a TSC-bounded wait until each has flushed and
// acknowledged. A CPU that never acknowledges is a panic that names it.
//
// Deadlock freedom: one request at a time (a ticket lock). A CPU that spins
// with interrupts off (every `TicketLock`, the shootdown lock included, and
// the mailbox waits of `Processors`) answers a request aimed at it from the
// spin loop, so two initiators at once, or an initiator holding a lock
// another CPU wants, cannot wait on each other. The initiator itself waits
// with interrupts off; no request can be aimed at it then, because it holds
// the shootdown lock.
#if hasFeature(Embedded)
import CPUPrimitives
import Synchronization

public enum TLBShootdown {
    /// Held by an initiator for its whole round.
    static let lock = TicketLock()
    /// Bit i set: CPU i still owes an acknowledgement of `request`. Each
    /// target clears only its own bit; the initiator waits for zero.
    static let pending = Atomic<UInt64>(0)
    /// The request of the current round; written by the lock holder before
    /// it publishes `pending`, unchanged until `pending` is zero.
    nonisolated(unsafe) static var request = TLBShootdownRequest(
        sequence: 0, initiator: 0, flush: .nothing, online: ProcessorSet())
    nonisolated(unsafe) static var sequence: UInt64 = 0
    nonisolated(unsafe) static var counterTable: UnsafeMutablePointer<TLBShootdownCounters>? = nil

    /// Sets up the per-CPU counters and touches the shared state on the
    /// boot processor, before any AP runs.
    static func prepare() {
        guard counterTable == nil else { return }
        let size = MemoryLayout<TLBShootdownCounters>.stride * Processors.limit
        guard let raw = Platform.heap?.allocate(size: size, alignment: 64) else {
            Platform.panic("out of memory for the TLB shootdown counters")
        }
        let table = raw.bindMemory(to: TLBShootdownCounters.self, capacity: Processors.limit)
        table.initialize(repeating: TLBShootdownCounters(), count: Processors.limit)
        counterTable = table
        pending.store(0, ordering: .releasing)
    }

    /// What CPU `index` did for shootdowns so far.
    public static func counters(of index: Int) -> TLBShootdownCounters {
        guard let counterTable, index >= 0, index < Processors.limit else { return TLBShootdownCounters() }
        cpu_compiler_barrier()
        return counterTable[index]
    }

    /// Requests published so far (every CPU's).
    public static var requestCount: UInt64 { sequence }

    /// Drops every CPU's TLB entries for `[start, start + byteCount)`
    /// (page-granular; more than `TLBFlush.defaultPageThreshold` pages
    /// flush everything): this CPU's at once, each other online CPU's
    /// through the shootdown IPI, and returns when all have acknowledged.
    ///
    /// Call it after the kernel page tables lost or changed a mapping in
    /// the range (`KernelMappings` does). Not from an interrupt handler.
    /// Panics, naming the CPU, if one does not acknowledge within
    /// `TLBShootdownTiming.acknowledgeTimeout`.
    public static func invalidate(start: UInt64, byteCount: UInt64) {
        let flush = TLBFlush.covering(start: start, byteCount: byteCount)
        if flush.isNothing { return }
        let flags = cpu_save_and_disable_interrupts()
        perform(flush)
        let me = Processors.currentIndex
        let online = ProcessorSet.first(Processors.count)
        guard !online.removing(me).isEmpty, Processors.localAPIC != nil else {
            cpu_restore_interrupts(flags)
            return
        }
        let state = lock.lock()
        sequence &+= 1
        request = TLBShootdownRequest(sequence: sequence, initiator: me, flush: flush, online: online)
        let round = TLBShootdownRound(request: request)
        pending.store(round.pending.bits, ordering: .releasing)
        var rest = round.pending.bits
        while rest != 0 {
            let target = rest.trailingZeroBitCount
            rest &= rest - 1
            if let apicID = Processors.apicID(of: target) { bmk_signal_processor(2, apicID) }  // PrivilegedOperations.h
        }
        counterTable?[me].requestsSent &+= 1
        let deadline = TSCDeadline(
            now: cpu_rdtsc(), microseconds: TLBShootdownTiming.acknowledgeTimeout,
            ticksPerMicrosecond: Processors.tscPerMicrosecond)
        while true {
            let owed = pending.load(ordering: .acquiring)
            if owed == 0 { break }
            if deadline.hasPassed(at: cpu_rdtsc()) { notAcknowledged(ProcessorSet(bits: owed)) }
            cpu_pause()
        }
        lock.unlock(restoring: state)
        cpu_restore_interrupts(flags)
    }

    /// Performs and acknowledges a request aimed at this CPU, if any: from
    /// the shootdown IPI, and from every spin loop that runs with
    /// interrupts off. Cheap when nothing is pending (one load).
    @inline(__always)
    static func answerPending(whileSpinning: Bool = true) {
        if pending.load(ordering: .relaxed) == 0 { return }
        bmk_tlb_answer(whileSpinning ? 1 : 0)  // hw: TLBShootdown.answer (PrivilegedOperations.h)
    }

    /// The IPI handler's part (interrupts are off in it).
    static func answerInterrupt() {
        answer(whileSpinning: false)
    }

    static func answer(whileSpinning: Bool) {
        // Interrupts off, so the IPI handler cannot run in the middle of a
        // poll and acknowledge a later request for this one's flush.
        let flags = cpu_save_and_disable_interrupts()
        let me = Processors.currentIndex
        let bit = UInt64(1) << UInt64(me & 63)
        if pending.load(ordering: .acquiring) & bit != 0 {
            let flush = request.flush
            perform(flush)
            if let counterTable {
                counterTable[me].requestsAnswered &+= 1
                counterTable[me].pagesInvalidated &+= flush.pageCount
                if flush == .everything { counterTable[me].fullFlushes &+= 1 }
                if whileSpinning { counterTable[me].answeredWhileSpinning &+= 1 }
            }
            // INVLPG and MOV to CR3/CR4 serialise: the flush is done
            // before the acknowledgement becomes visible.
            pending.bitwiseAnd(~bit, ordering: .releasing)
        }
        cpu_restore_interrupts(flags)
    }

    /// This CPU's part of a flush.
    static func perform(_ flush: TLBFlush) {
        switch flush {
        case .pages(let first, let count):
            var page = first
            var left = count
            while left > 0 {
                cpu_invalidate_page(page)
                page &+= PageSize.small
                left -= 1
            }
        case .everything:
            switch TLBFullFlushMethod(controlRegister4: cpu_read_cr4()) {
            case .reloadCR3:
                cpu_write_cr3(cpu_read_cr3())
            case .toggleGlobalPages(let cr4):
                cpu_write_cr4(cr4 & ~TLBFullFlushMethod.globalPagesEnable)
                cpu_write_cr4(cr4)
            }
        }
    }

    /// The timeout: one report naming the first CPU that still owes an
    /// acknowledgement, then the panic status.
    static func notAcknowledged(_ owed: ProcessorSet) -> Never {
        Platform.claimStop()
        let cpu = owed.lowest ?? 0
        Platform.write("rumprun: panic: TLB shootdown not acknowledged by cpu ")
        Platform.writeDecimal(UInt64(cpu))
        if let apicID = Processors.apicID(of: cpu) {
            Platform.write(" (APIC id ")
            Platform.writeDecimal(UInt64(apicID))
            Platform.write(")")
        }
        Platform.write(" within ")
        Platform.writeDecimal(TLBShootdownTiming.acknowledgeTimeout / 1000)
        Platform.write(" ms")
        if owed.count > 1 {
            Platform.write(", nor by ")
            Platform.writeDecimal(UInt64(owed.count - 1))
            Platform.write(" more")
        }
        Platform.write("\n")
        Platform.halt(portValue: GuestExit.panicValue)
    }
}

/// Changes of the live kernel page tables that remove or narrow mappings,
/// each made under one lock and followed by `TLBShootdown.invalidate` of
/// the range, so no CPU keeps using the old mapping once the call returns.
/// The platform's own paths (stack guard pages, the AP trampoline) make the
/// same change-then-`invalidate` pair, also under `MemoryLock`.
/// Adding a mapping where nothing was mapped needs no shootdown (a
/// not-present entry is never cached) and goes through the mapper directly.
public enum KernelMappings {
    /// Changes made through this type hold `MemoryLock`, the lock of every
    /// path that edits the kernel tables or uses the page allocator.
    static func withTablesLocked<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        try MemoryLock.withLock(body)
    }

    /// Unmaps `[virtual, virtual + byteCount)` (whole 4 KiB pages) from
    /// the kernel's tables and returns the bytes that were mapped. Every
    /// CPU has dropped the range from its TLB when this returns, also
    /// after an error part-way through.
    @discardableResult
    public static func unmap(_ virtual: VirtualAddress, byteCount: UInt64) throws(PageTableError) -> UInt64 {
        try withTablesLocked { () throws(PageTableError) -> UInt64 in
            guard var mapper = Platform.pageTables, Platform.heap != nil else {
                Platform.panic("kernel mappings changed before the kernel page tables exist")
            }
            // Also after an error part-way: pages before it have changed.
            defer { TLBShootdown.invalidate(start: virtual.rawValue, byteCount: byteCount) }
            return try mapper.unmap(range: virtual, byteCount: byteCount, allocator: &Platform.heap!.pages.allocator)
        }
    }

    /// Gives `[virtual, virtual + byteCount)` new attributes in the
    /// kernel's tables. Every CPU has dropped the old translations when
    /// this returns (also when it throws `notMapped` part-way): narrowed
    /// rights must not outlive the call, and a stale narrower entry would
    /// give a spurious page fault, which this kernel treats as fatal.
    public static func protect(_ virtual: VirtualAddress, byteCount: UInt64, attributes: MemoryAttributes) throws(PageTableError) {
        try withTablesLocked { () throws(PageTableError) in
            guard var mapper = Platform.pageTables, Platform.heap != nil else {
                Platform.panic("kernel mappings changed before the kernel page tables exist")
            }
            defer { TLBShootdown.invalidate(start: virtual.rawValue, byteCount: byteCount) }
            try mapper.protect(range: virtual, byteCount: byteCount, attributes: attributes, allocator: &Platform.heap!.pages.allocator)
        }
    }
}
@_cdecl("bmk_hw_tlb_answer")
public func hwTLBAnswer(_ whileSpinning: Int32) {
    TLBShootdown.answer(whileSpinning: whileSpinning != 0)
}
#endif
