// TLBShootdownModel: the pure parts of the TLB shootdown, shared by the guest
// and the host tests: which TLB entries a change of the kernel page tables
// needs dropped (INVLPG per page, or everything above a threshold; CR3
// reload or a CR4.PGE toggle when global pages are on), the set of CPUs a
// request goes to and the acknowledgements it waits for, the TSC deadline,
// and the shootdown IPI's ICR word.
//
// Facts: Intel SDM vol. 3A §4.10.4.1 (INVLPG drops the entries for the page
// holding the address whatever their page size, global ones included; MOV
// to CR3 keeps global entries; toggling CR4.PGE drops all), §4.10.4.3 (a
// change from not-present to present needs no invalidation; narrowing
// rights does, and widening them can give spurious page faults), §4.10.5
// (other processors are told by an IPI).

/// A set of CPUs by dense index (0 = boot processor), at most 64.
public struct ProcessorSet: Equatable, Hashable, Sendable {
    public var bits: UInt64

    public init(bits: UInt64 = 0) { self.bits = bits }

    /// CPUs 0 to `count - 1`.
    public static func first(_ count: Int) -> ProcessorSet {
        if count <= 0 { return ProcessorSet() }
        if count >= 64 { return ProcessorSet(bits: ~0) }
        return ProcessorSet(bits: (UInt64(1) << UInt64(count)) - 1)
    }

    public var isEmpty: Bool { bits == 0 }
    public var count: Int { bits.nonzeroBitCount }

    public func contains(_ index: Int) -> Bool {
        index >= 0 && index < 64 && bits & (UInt64(1) << UInt64(index)) != 0
    }

    public mutating func insert(_ index: Int) {
        guard index >= 0 && index < 64 else { return }
        bits |= UInt64(1) << UInt64(index)
    }

    public mutating func remove(_ index: Int) {
        guard index >= 0 && index < 64 else { return }
        bits &= ~(UInt64(1) << UInt64(index))
    }

    public func removing(_ index: Int) -> ProcessorSet {
        var copy = self
        copy.remove(index)
        return copy
    }

    /// The lowest index in the set.
    public var lowest: Int? { bits == 0 ? nil : bits.trailingZeroBitCount }

    /// The indexes in ascending order.
    public var indexes: [Int] {
        var result: [Int] = []
        var rest = bits
        while rest != 0 {
            result.append(rest.trailingZeroBitCount)
            rest &= rest - 1
        }
        return result
    }
}

/// What a CPU drops from its TLB for one change of the kernel tables.
public enum TLBFlush: Equatable, Sendable {
    /// INVLPG for `count` 4 KiB pages from `first` (page-aligned). INVLPG
    /// also drops a 2 MiB or 1 GiB entry holding the address, and global
    /// entries.
    case pages(first: UInt64, count: UInt64)
    /// Every entry: one CR3 reload (or CR4.PGE toggle) instead of many
    /// INVLPGs.
    case everything

    /// Nothing to drop (an empty range).
    public static var nothing: TLBFlush { .pages(first: 0, count: 0) }

    /// Pages above which a whole flush is cheaper than INVLPG per page
    /// (Linux's `tlb_single_page_flush_ceiling` is 33).
    public static var defaultPageThreshold: UInt64 { 32 }

    /// The flush for the bytes `[start, start + byteCount)`: the 4 KiB
    /// pages they touch, or `.everything` when that is more than
    /// `pageThreshold` pages or the range wraps around the address space.
    public static func covering(start: UInt64, byteCount: UInt64, pageThreshold: UInt64 = defaultPageThreshold) -> TLBFlush {
        guard byteCount > 0 else { return .nothing }
        let first = start & ~(PageSize.small - 1)
        let (last, overflow) = start.addingReportingOverflow(byteCount - 1)
        if overflow { return .everything }
        let count = ((last & ~(PageSize.small - 1)) - first) / PageSize.small + 1
        return count > pageThreshold ? .everything : .pages(first: first, count: count)
    }

    /// How many INVLPGs the flush takes (0 for `.everything`).
    public var pageCount: UInt64 {
        if case .pages(_, let count) = self { return count }
        return 0
    }

    public var isNothing: Bool { self == .nothing }
}

/// How one CPU drops every TLB entry, given its own CR4.
public enum TLBFullFlushMethod: Equatable, Sendable {
    /// CR4.PGE is off: no entry is global, a CR3 reload drops them all.
    case reloadCR3
    /// CR4.PGE is on: write CR4 without PGE, then `restoring` (SDM vol. 3A
    /// §4.10.4.1: a CR4.PGE change drops every entry, global ones too).
    case toggleGlobalPages(restoring: UInt64)

    /// CR4 bit 7, PGE (page global enable).
    public static var globalPagesEnable: UInt64 { 1 << 7 }

    public init(controlRegister4 cr4: UInt64) {
        self = cr4 & Self.globalPagesEnable != 0 ? .toggleGlobalPages(restoring: cr4) : .reloadCR3
    }
}

/// One shootdown as the initiator publishes it: the flush, who asked, and
/// which CPUs must perform it and acknowledge.
public struct TLBShootdownRequest: Equatable, Sendable {
    /// Counts requests (the first one is 1), for diagnostics.
    public var sequence: UInt64
    public var initiator: Int
    public var flush: TLBFlush
    /// Every online CPU but the initiator.
    public var targets: ProcessorSet

    public init(sequence: UInt64, initiator: Int, flush: TLBFlush, online: ProcessorSet) {
        self.sequence = sequence
        self.initiator = initiator
        self.flush = flush
        self.targets = online.removing(initiator)
    }

    /// No other CPU needs telling (one CPU online, or nothing to flush).
    public var needsInterprocessorInterrupts: Bool { !targets.isEmpty && !flush.isNothing }
}

/// What an acknowledgement did to a round.
public enum TLBAcknowledgement: Equatable, Sendable {
    /// The CPU was still owed; now it is not.
    case accepted
    /// The CPU had acknowledged already (a second IPI or a second poll).
    case duplicate
    /// The CPU was never a target of this request.
    case notTargeted
}

/// The initiator's view of a round: the targets still to acknowledge.
/// The guest keeps `pending.bits` in one atomic word that each target
/// clears its own bit in; this type is the same bookkeeping in one place.
public struct TLBShootdownRound: Equatable, Sendable {
    public let request: TLBShootdownRequest
    public private(set) var pending: ProcessorSet

    public init(request: TLBShootdownRequest) {
        self.request = request
        pending = request.needsInterprocessorInterrupts ? request.targets : ProcessorSet()
    }

    public mutating func acknowledge(_ cpu: Int) -> TLBAcknowledgement {
        guard request.targets.contains(cpu), request.needsInterprocessorInterrupts else { return .notTargeted }
        guard pending.contains(cpu) else { return .duplicate }
        pending.remove(cpu)
        return .accepted
    }

    public var isComplete: Bool { pending.isEmpty }

    /// The CPU a timed-out initiator names: the lowest one still owed.
    public var firstMissing: Int? { pending.lowest }
}

/// A TSC deadline that saturates instead of wrapping.
public struct TSCDeadline: Equatable, Sendable {
    public let tsc: UInt64

    public init(now: UInt64, microseconds: UInt64, ticksPerMicrosecond: UInt64) {
        let (ticks, overflow1) = microseconds.multipliedReportingOverflow(by: max(ticksPerMicrosecond, 1))
        let (end, overflow2) = now.addingReportingOverflow(ticks)
        tsc = overflow1 || overflow2 ? UInt64.max : end
    }

    public func hasPassed(at now: UInt64) -> Bool { now > tsc }
}

public enum TLBShootdownTiming {
    /// How long an initiator waits for every target to acknowledge before
    /// it panics naming the first missing CPU. Generous: a vCPU thread of
    /// a loaded host running TCG can stall for a long while.
    public static let acknowledgeTimeout: UInt64 = 5_000_000
}

/// What one CPU did for shootdowns (each CPU writes only its own).
public struct TLBShootdownCounters: Equatable, Sendable {
    /// Rounds this CPU started that went to at least one other CPU.
    public var requestsSent: UInt64 = 0
    /// Requests of other CPUs this CPU performed and acknowledged.
    public var requestsAnswered: UInt64 = 0
    /// INVLPGs done for other CPUs' requests.
    public var pagesInvalidated: UInt64 = 0
    /// Whole flushes done for other CPUs' requests.
    public var fullFlushes: UInt64 = 0
    /// Answers given while spinning on a lock with interrupts off, rather
    /// than from the IPI.
    public var answeredWhileSpinning: UInt64 = 0

    public init() {}
}

extension InterruptCommand {
    /// The TLB shootdown IPI to one CPU: fixed delivery, physical
    /// destination, edge.
    public static func tlbShootdown(apicID: UInt32) -> InterruptCommand {
        InterruptCommand(vector: InterruptVectors.tlbShootdown, destination: apicID)
    }
}
