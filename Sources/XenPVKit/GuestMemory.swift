// GuestMemory: the pages a Xen frontend shares with other domains, and the
// guest frame numbers (Xen "gfn": the pseudo-physical frame of HVM/PVH
// guests, the machine frame of PV guests) that grants and rings name them by.

/// Page-sized (4 KiB, `XEN_PAGE_SHIFT` 12) allocation with frame numbers.
///
/// In the guest the conformer wraps the page allocator and the physical
/// (PVH) or pseudo-physical-to-machine (PV) map; tests use a model whose
/// frames they can resolve from the backend side.
public protocol GuestMemory {
    /// A zeroed, page-aligned page, or nil when memory is exhausted.
    mutating func allocatePage() -> UnsafeMutableRawPointer?
    /// Returns a page from `allocatePage`. The caller guarantees no grant
    /// or ring still refers to it.
    mutating func freePage(_ page: UnsafeMutableRawPointer)
    /// The frame number Xen and backends use for the page at `page`.
    func frameNumber(of page: UnsafeMutableRawPointer) -> UInt64
}

/// The Xen page size for rings, grants and hypercalls (io/ring.h).
public let xenPageSize = 4096
