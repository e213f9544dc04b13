// GrantTable: grant table version 1 (Xen public/grant_table.h): granting a
// frame to another domain and ending that grant only once the peer no
// longer maps it.
import CXen

/// Why a grant operation failed.
public enum GrantTableError: Error, Equatable, Sendable {
    /// Every reference is granted or waits for its peer to unmap it.
    case exhausted(capacity: Int, awaitingRelease: Int)
    /// The reference is reserved, outside the table or not granted by us.
    case invalidReference(GrantReference)
    /// v1 entries hold 32-bit frame numbers; this frame needs grant table v2.
    case frameOutOfRange(UInt64)
    case hypercall(HypercallError)
}

/// The outcome of ending a grant.
public enum GrantRelease: Equatable, Sendable {
    /// The entry is cleared and the reference free for reuse.
    case released
    /// The peer still maps the frame (`GTF_reading`/`GTF_writing`); the
    /// reference is held back and released by `reclaim()` later.
    case deferred
}

/// A v1 grant table: an array of `grant_entry_v1` in frames Xen reads.
///
/// A reference is in one of three states: free, granted, or awaiting
/// release (ended by us while the peer still had it mapped). Only free
/// references are handed out, so a grant the backend still uses is never
/// reused for another frame.
///
/// One table serves the whole domain, so every frontend holds the same
/// instance.
public final class GrantTable {
    let entries: UnsafeMutablePointer<grant_entry_v1>
    /// Number of entries in the table.
    public let capacity: Int
    var free: [GrantReference]
    var awaitingRelease: [GrantReference]
    var states: [ReferenceState]

    enum ReferenceState: UInt8 {
        case reserved, free, granted, awaitingRelease
    }

    static var flagsOffset: Int { CXEN_OFFSETOF_grant_entry_v1_flags }
    static var domidOffset: Int { CXEN_OFFSETOF_grant_entry_v1_domid }
    static var frameOffset: Int { CXEN_OFFSETOF_grant_entry_v1_frame }

    /// Entries per 4 KiB grant-table frame.
    public static var entriesPerFrame: Int { xenPageSize / MemoryLayout<grant_entry_v1>.stride }

    /// Uses `frames` consecutive mapped grant-table frames at `base`.
    /// References below `GNTTAB_NR_RESERVED_ENTRIES` (console, xenstore)
    /// are never handed out.
    public init(base: UnsafeMutableRawPointer, frames: Int) {
        entries = base.bindMemory(to: grant_entry_v1.self, capacity: frames * Self.entriesPerFrame)
        capacity = frames * Self.entriesPerFrame
        free = []
        free.reserveCapacity(capacity)
        var reference = capacity - 1
        while reference >= Int(GNTTAB_NR_RESERVED_ENTRIES) {
            free.append(GrantReference(reference))
            reference -= 1
        }
        awaitingRelease = []
        states = Array(repeating: .free, count: capacity)
        for reference in 0..<min(capacity, Int(GNTTAB_NR_RESERVED_ENTRIES)) { states[reference] = .reserved }
    }

    /// Maps the domain's grant-table frames at the frames of `pages`
    /// (HVM/PVH: `XENMEM_add_to_physmap` with `XENMAPSPACE_grant_table`).
    public static func map<H: Hypercalls>(
        frameNumbers: UnsafeBufferPointer<UInt64>, using hypervisor: inout H
    ) throws(GrantTableError) {
        for (index, frame) in frameNumbers.enumerated() {
            do {
                try hypervisor.addToPhysmap(space: UInt32(XENMAPSPACE_grant_table), index: UInt(index), gpfn: UInt(frame))
            } catch { throw .hypercall(error) }
        }
    }

    func entry(_ reference: GrantReference) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(entries + Int(reference))
    }

    /// References free to grant.
    public var freeCount: Int { free.count }
    /// References ended by us but still mapped by their peer.
    public var awaitingReleaseCount: Int { awaitingRelease.count }

    /// Lets `domain` map `frame`, read-only if asked.
    public func grantAccess(
        to domain: DomainID, frame: UInt64, readOnly: Bool
    ) throws(GrantTableError) -> GrantReference {
        guard frame <= UInt64(UInt32.max) else { throw .frameOutOfRange(frame) }
        if free.isEmpty { _ = reclaim() }
        guard let reference = free.popLast() else {
            throw .exhausted(capacity: capacity, awaitingRelease: awaitingRelease.count)
        }
        let slot = entry(reference)
        cxen_store16(slot + Self.domidOffset, domain)
        cxen_store32(slot + Self.frameOffset, UInt32(frame))
        // Xen may use the entry as soon as the flags say so: domid and frame first.
        cxen_wmb()
        cxen_store16(slot + Self.flagsOffset, UInt16(GTF_permit_access) | (readOnly ? UInt16(GTF_readonly) : 0))
        states[Int(reference)] = .granted
        return reference
    }

    /// Whether `reference` was ended while mapped and is not yet released:
    /// until this turns false the frame must stay allocated.
    public func isAwaitingRelease(_ reference: GrantReference) -> Bool {
        Int(reference) < capacity && states[Int(reference)] == .awaitingRelease
    }

    /// Whether the peer currently maps the frame behind `reference`.
    public func isMappedByPeer(_ reference: GrantReference) -> Bool {
        guard Int(reference) < capacity else { return false }
        let flags = cxen_load16(entry(reference) + Self.flagsOffset)
        return flags & UInt16(GTF_reading | GTF_writing) != 0
    }

    /// Revokes a grant. The entry's flags are cleared with a compare-exchange
    /// that fails while Xen has `GTF_reading` or `GTF_writing` set, so a
    /// frame the peer still maps stays granted (and its reference unused)
    /// until `reclaim()` finds it unmapped.
    public func endAccess(_ reference: GrantReference) throws(GrantTableError) -> GrantRelease {
        guard Int(reference) < capacity, states[Int(reference)] == .granted else { throw .invalidReference(reference) }
        if tryClear(reference) {
            states[Int(reference)] = .free
            free.append(reference)
            return .released
        }
        states[Int(reference)] = .awaitingRelease
        awaitingRelease.append(reference)
        return .deferred
    }

    func tryClear(_ reference: GrantReference) -> Bool {
        let flags = entry(reference) + Self.flagsOffset
        var current = cxen_load16(flags)
        while true {
            if current & UInt16(GTF_reading | GTF_writing) != 0 { return false }
            let seen = cxen_cmpxchg16(flags, current, 0)
            if seen == current { return true }
            current = seen
        }
    }

    /// Releases every awaiting reference its peer has unmapped; returns how many.
    public func reclaim() -> Int {
        var released = 0
        var index = 0
        while index < awaitingRelease.count {
            let reference = awaitingRelease[index]
            if tryClear(reference) {
                states[Int(reference)] = .free
                free.append(reference)
                awaitingRelease.remove(at: index)
                released += 1
            } else {
                index += 1
            }
        }
        return released
    }
}

/// Pages a frontend shared with its backend, freed only once the backend
/// has let go of them: ending access to a grant the backend still maps is
/// deferred, and the page waits here until `sweep` finds it released.
struct GrantedPageQuarantine {
    private var entries: [(reference: GrantReference, page: UnsafeMutableRawPointer)] = []

    var count: Int { entries.count }

    /// Ends access to `reference` and frees `page`, or quarantines it while
    /// the backend still maps it. Ending a grant the frontend never held is
    /// a broken invariant, not a backend fault, and traps.
    mutating func release<Memory: GuestMemory>(
        _ reference: GrantReference, page: UnsafeMutableRawPointer, grants: GrantTable, memory: inout Memory
    ) {
        switch try? grants.endAccess(reference) {
        case .released?: memory.freePage(page)
        case .deferred?: entries.append((reference, page))
        case nil: preconditionFailure("a frontend ended a grant it does not hold")
        }
    }

    /// Frees the quarantined pages whose grants the backend has released.
    mutating func sweep<Memory: GuestMemory>(grants: GrantTable, memory: inout Memory) {
        guard !entries.isEmpty else { return }
        _ = grants.reclaim()
        var index = 0
        while index < entries.count {
            if grants.isAwaitingRelease(entries[index].reference) {
                index += 1
            } else {
                memory.freePage(entries.remove(at: index).page)
            }
        }
    }
}
