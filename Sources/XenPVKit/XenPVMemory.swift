// XenPVMemory: a 64-bit PV domain's memory (Xen public/xen.h "Start-of-day
// memory layout", mmu_update and update_va_mapping; Intel SDM vol. 3 §4.5
// for the 4-level entries). Xen maps the image, the P2M list, start_info,
// the store and console pages, the bootstrap page tables (read-only) and
// a stack with at least 512 KiB after it, up to a 4 MiB boundary. The rest
// of `nr_pages` is mapped here, at virtual address = pseudo-physical
// address (VIRT_BASE 0), with machine frames from the P2M list. Xen owns
// the page tables: the guest may read them, and changes them only through
// hypercalls; a page becomes a page table only once no writable mapping of
// it is left. Nothing here allocates (it runs before the heap exists).
import CXen

/// Where the builder finds a pseudo-physical page's contents: the guest
/// reads page `pfn` at virtual address `pfn << 12`; tests use a model.
public protocol XenPVPageAccess {
    /// The mapped page of pseudo-physical frame `pfn` (readable; writable
    /// unless it is a page table).
    func page(pfn: UInt64) -> UnsafeMutableRawPointer
}

/// The layout start_info describes, in pseudo-physical frames.
public struct XenPVMemoryLayout: Equatable, Sendable {
    /// `nr_pages`.
    public var pageCount: UInt64
    /// First frame of the bootstrap page tables (`pt_base`, VIRT_BASE 0).
    public var pageTableBase: UInt64
    /// `nr_pt_frames`.
    public var pageTableFrames: UInt64
    /// First frame Xen did not map: the guaranteed end of the bootstrap
    /// region (the tables, a stack of at least one page and 512 KiB, rounded
    /// up to 4 MiB), at most `pageCount`.
    public var mappedEnd: UInt64

    /// Pages of padding Xen guarantees after the bootstrap elements.
    public static var paddingPages: UInt64 { 512 * 1024 / 4096 }
    /// The bootstrap region ends on a 4 MiB boundary.
    public static var regionAlignment: UInt64 { 4 * 1024 * 1024 / 4096 }

    public init(pageCount: UInt64, pageTableBase: UInt64, pageTableFrames: UInt64) {
        self.pageCount = pageCount
        self.pageTableBase = pageTableBase
        self.pageTableFrames = pageTableFrames
        // Tables, then at least one stack page, then the padding.
        let guaranteed = pageTableBase + pageTableFrames + 1 + Self.paddingPages
        let aligned = (guaranteed + Self.regionAlignment - 1) & ~(Self.regionAlignment - 1)
        self.mappedEnd = min(aligned, pageCount)
    }

    public init(_ info: XenStartInfo) {
        self.init(pageCount: info.pageCount, pageTableBase: info.pageTableBase >> 12, pageTableFrames: info.pageTableFrames)
    }

    /// First frame after the bootstrap page tables: from here to
    /// `mappedEnd` the pages are mapped and free (Xen's bootstrap stack is
    /// left at entry for the image's own).
    public var firstFree: UInt64 { pageTableBase + pageTableFrames }
}

/// The outcome of `XenPVPageTableBuilder.mapRemainingPages`.
public struct XenPVMemoryMap: Equatable, Sendable {
    /// Every frame from here to `pageCount` is mapped, writable and free.
    public var firstFree: UInt64
    public var pageCount: UInt64
    /// Frames taken for new page tables (from the start of the free pool).
    public var newTables: UInt64
    /// Frames mapped by the builder (from the layout's `mappedEnd`).
    public var newlyMapped: UInt64
}

/// Entry bits the builder writes.
public enum XenPVEntry {
    /// A table entry pointing at a lower-level table: present, writable,
    /// user (rights are the intersection over levels; the leaf decides).
    public static func table(machineFrame: UInt64) -> UInt64 {
        machineFrame << 12 | PVPageTableEntry.present | PVPageTableEntry.writable | PVPageTableEntry.user
    }
    /// A read-only leaf: how a page that becomes a page table stays mapped.
    public static func readOnly(machineFrame: UInt64) -> UInt64 {
        machineFrame << 12 | PVPageTableEntry.present | PVPageTableEntry.user | PVPageTableEntry.accessed
            | PVPageTableEntry.noExecute
    }
    /// The frame of an entry (bits 12–51).
    public static func frame(_ entry: UInt64) -> UInt64 { (entry >> 12) & 0xFF_FFFF_FFFF }
}

/// Maps the pages past Xen's bootstrap region. Generic over the hypercalls
/// and over page access, so host tests run it against a model of Xen's
/// page-table rules.
public struct XenPVPageTableBuilder<H: Hypercalls, Access: XenPVPageAccess> {
    public var layout: XenPVMemoryLayout
    /// The P2M list (`mfn_list`): machine frame of each pseudo-physical frame.
    public var frames: UnsafePointer<UInt64>
    public var access: Access
    /// Requests are collected here and sent when it is full.
    var batch: UnsafeMutableBufferPointer<mmu_update>
    var queued = 0
    var nextFree: UInt64
    /// Page-table pages this builder created: [firstNew, nextFree).
    let firstNew: UInt64

    /// The caller guarantees `frames` holds `layout.pageCount` entries and
    /// `batch` stays valid while the builder runs.
    public init(
        layout: XenPVMemoryLayout, frames: UnsafePointer<UInt64>, access: Access,
        batch: UnsafeMutableBufferPointer<mmu_update>
    ) {
        self.layout = layout
        self.frames = frames
        self.access = access
        self.batch = batch
        self.nextFree = layout.firstFree
        self.firstNew = layout.firstFree
    }

    /// Largest domain mapped: one L3 table (L4 slot 0, 512 GiB) below
    /// Xen's hole at 0xFFFF800000000000.
    public static var maximumPages: UInt64 { 1 << 27 }

    /// Maps frames [mappedEnd, pageCount) writable at their pseudo-physical
    /// addresses, taking new page-table pages from the free pool (each
    /// zeroed, then remapped read-only with `update_va_mapping`, then
    /// linked into its parent with `mmu_update`). Each frame is mapped once.
    public mutating func mapRemainingPages(hypervisor: inout H) throws(XenPVError) -> XenPVMemoryMap {
        let end = layout.pageCount
        if end > Self.maximumPages { throw .tooManyPages(end) }
        var pfn = layout.mappedEnd
        let level4 = try tableFrame(machineFrame: frames[Int(layout.pageTableBase)], level: 4)
        while pfn < end {
            let l4Index = Int((pfn >> 27) & 511)
            let l3Index = Int((pfn >> 18) & 511)
            let l2Index = Int((pfn >> 9) & 511)
            // Links queued for the previous chunk are applied before its
            // parents are read again.
            try flush(hypervisor: &hypervisor)
            let level3 = try child(of: level4, index: l4Index, level: 3, hypervisor: &hypervisor, address: pfn << 12)
            let level2 = try child(of: level3, index: l3Index, level: 2, hypervisor: &hypervisor, address: pfn << 12)
            let level1 = try child(of: level2, index: l2Index, level: 1, hypervisor: &hypervisor, address: pfn << 12)
            let chunkEnd = min((pfn | 511) + 1, end)
            while pfn < chunkEnd {
                let machine = frames[Int(pfn)]
                if machine == 0 || machine > 0xFF_FFFF_FFFF { throw .invalidFrame(pfn: pfn, machineFrame: machine) }
                try queue(
                    mmu_update(
                        ptr: (frames[Int(level1)] << 12) + (pfn & 511) * 8 | UInt64(MMU_NORMAL_PT_UPDATE),
                        val: PVPageTableEntry.data(frame: machine)),
                    hypervisor: &hypervisor)
                pfn += 1
            }
        }
        try flush(hypervisor: &hypervisor)
        return XenPVMemoryMap(
            firstFree: nextFree, pageCount: end, newTables: nextFree - firstNew,
            newlyMapped: end > layout.mappedEnd ? end - layout.mappedEnd : 0)
    }

    /// The pseudo-physical frame of the table `index` of `parent` points
    /// to, made and linked first if the entry is not present.
    mutating func child(
        of parent: UInt64, index: Int, level: Int, hypervisor: inout H, address: UInt64
    ) throws(XenPVError) -> UInt64 {
        let entry = access.page(pfn: parent).load(fromByteOffset: index * 8, as: UInt64.self)
        if entry & PVPageTableEntry.present != 0 {
            return try tableFrame(machineFrame: XenPVEntry.frame(entry), level: level)
        }
        guard nextFree < layout.mappedEnd else { throw .noPageForPageTable(virtualAddress: address) }
        let table = nextFree
        nextFree += 1
        let machine = frames[Int(table)]
        access.page(pfn: table).initializeMemory(as: UInt8.self, repeating: 0, count: xenPageSize)
        // Read-only before Xen is asked to use it as a table.
        try flush(hypervisor: &hypervisor)
        do throws(HypercallError) {
            try hypervisor.updateMapping(virtualAddress: table << 12, entry: XenPVEntry.readOnly(machineFrame: machine))
        } catch {
            throw .hypercall(error)
        }
        try queue(
            mmu_update(
                ptr: (frames[Int(parent)] << 12) + UInt64(index) * 8 | UInt64(MMU_NORMAL_PT_UPDATE),
                val: XenPVEntry.table(machineFrame: machine)),
            hypervisor: &hypervisor)
        // Xen applies the link before any entry queued into the new table.
        return table
    }

    /// The pseudo-physical frame of page-table page `machineFrame`: one of
    /// the bootstrap tables or one this builder made.
    func tableFrame(machineFrame: UInt64, level: Int) throws(XenPVError) -> UInt64 {
        var pfn = layout.pageTableBase
        while pfn < layout.pageTableBase + layout.pageTableFrames {
            if frames[Int(pfn)] == machineFrame { return pfn }
            pfn += 1
        }
        pfn = firstNew
        while pfn < nextFree {
            if frames[Int(pfn)] == machineFrame { return pfn }
            pfn += 1
        }
        throw .unknownPageTable(machineFrame: machineFrame, level: level)
    }

    mutating func queue(_ request: mmu_update, hypervisor: inout H) throws(XenPVError) {
        if queued == batch.count { try flush(hypervisor: &hypervisor) }
        batch[queued] = request
        queued += 1
    }

    mutating func flush(hypervisor: inout H) throws(XenPVError) {
        guard queued > 0 else { return }
        let pending = UnsafeMutableBufferPointer(rebasing: batch[0..<queued])
        let requested = queued
        queued = 0
        let applied: Int
        do throws(HypercallError) {
            applied = try hypervisor.applyMMUUpdates(pending)
        } catch {
            throw .hypercall(error)
        }
        if applied != requested { throw .partialUpdate(requested: requested, applied: applied) }
    }
}

/// Grant and ring frames of a PV domain: pages come from a page source, and
/// their frame numbers are machine frames from the P2M list (a PV guest's
/// grants name machine frames).
public struct XenPVFrames<Pages: XenPVPageSource>: GuestMemory {
    public var pages: Pages
    public let frames: UnsafePointer<UInt64>
    public let pageCount: UInt64

    /// The caller guarantees `frames` holds `pageCount` entries.
    public init(pages: Pages, frames: UnsafePointer<UInt64>, pageCount: UInt64) {
        self.pages = pages
        self.frames = frames
        self.pageCount = pageCount
    }

    public mutating func allocatePage() -> UnsafeMutableRawPointer? { pages.allocatePage() }
    public mutating func freePage(_ page: UnsafeMutableRawPointer) { pages.freePage(page) }

    /// `mfn_list[pfn]` of the page; 0 for a page outside the domain.
    public func frameNumber(of page: UnsafeMutableRawPointer) -> UInt64 {
        let pfn = pages.pseudoPhysicalFrame(of: page)
        return pfn < pageCount ? frames[Int(pfn)] : 0
    }
}

/// Zeroed pages and their pseudo-physical frames (in the guest the page at
/// virtual address a is frame a >> 12, VIRT_BASE 0).
public protocol XenPVPageSource {
    mutating func allocatePage() -> UnsafeMutableRawPointer?
    mutating func freePage(_ page: UnsafeMutableRawPointer)
    func pseudoPhysicalFrame(of page: UnsafeMutableRawPointer) -> UInt64
}
