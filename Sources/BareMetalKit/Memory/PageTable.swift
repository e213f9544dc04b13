// PageTable: x86-64 4-level paging structures (Intel SDM vol. 3 §4.5, entry
// formats in Tables 4-14 to 4-20; memory types through PCD/PWT with the
// power-up PAT, §11.12.3) built and walked in Swift, generic over how frames
// are obtained and reached so host tests build real tables in heap memory.

/// Bits of a paging-structure entry (SDM vol. 3 Tables 4-14 to 4-20).
public struct PageTableFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 0 P: the entry maps a page or references a table.
    public static var present: Self { Self(rawValue: 1 << 0) }
    /// Bit 1 R/W: writes allowed (with CR0.WP, also for supervisor code).
    public static var writable: Self { Self(rawValue: 1 << 1) }
    /// Bit 2 U/S: user-mode accesses allowed.
    public static var userAccessible: Self { Self(rawValue: 1 << 2) }
    /// Bit 3 PWT: page-level write-through.
    public static var writeThrough: Self { Self(rawValue: 1 << 3) }
    /// Bit 4 PCD: page-level cache disable.
    public static var cacheDisabled: Self { Self(rawValue: 1 << 4) }
    /// Bit 5 A: accessed (set by the CPU).
    public static var accessed: Self { Self(rawValue: 1 << 5) }
    /// Bit 6 D: dirty (set by the CPU, leaf entries only).
    public static var dirty: Self { Self(rawValue: 1 << 6) }
    /// Bit 7 PS: the PDPTE or PDE maps a 1 GiB or 2 MiB page.
    public static var pageSize: Self { Self(rawValue: 1 << 7) }
    /// Bit 8 G: global translation (with CR4.PGE), kept across CR3 loads.
    public static var global: Self { Self(rawValue: 1 << 8) }
    /// Bit 63 XD: instruction fetches not allowed (with IA32_EFER.NXE).
    public static var noExecute: Self { Self(rawValue: 1 << 63) }
}

/// One 64-bit paging-structure entry.
public struct PageTableEntry: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Physical address bits 51:12 (MAXPHYADDR at most 52).
    public static var addressMask: UInt64 { 0x000F_FFFF_FFFF_F000 }

    public init(address: PhysicalAddress, flags: PageTableFlags) {
        rawValue = (address.rawValue & Self.addressMask) | flags.rawValue
    }

    public var flags: PageTableFlags { PageTableFlags(rawValue: rawValue & ~Self.addressMask) }
    public var isPresent: Bool { rawValue & 1 != 0 }
    /// The referenced table or 4 KiB page (for a large page, mask further).
    public var address: PhysicalAddress { PhysicalAddress(rawValue & Self.addressMask) }
}

/// What a mapping allows, independent of how the bits encode it.
/// Every present mapping is readable.
public struct MemoryAttributes: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static var writable: Self { Self(rawValue: 1 << 0) }
    public static var executable: Self { Self(rawValue: 1 << 1) }
    /// Strong uncacheable (PCD + PWT: PAT entry 3, UC, at power-up).
    public static var uncached: Self { Self(rawValue: 1 << 2) }
    public static var global: Self { Self(rawValue: 1 << 3) }
    public static var userAccessible: Self { Self(rawValue: 1 << 4) }

    /// Kernel text: read and execute.
    public static var text: Self { [.executable] }
    /// Read-only data: read, no execute.
    public static var readOnly: Self { [] }
    /// Data, bss, heap, stacks: read and write, no execute.
    public static var data: Self { [.writable] }
    /// Device registers: read, write, uncached, no execute.
    public static var device: Self { [.writable, .uncached] }

    /// The leaf-entry flags that give these attributes.
    public var leafFlags: PageTableFlags {
        var flags: PageTableFlags = .present
        if contains(.writable) { flags.insert(.writable) }
        if !contains(.executable) { flags.insert(.noExecute) }
        if contains(.uncached) { flags.formUnion([.cacheDisabled, .writeThrough]) }
        if contains(.global) { flags.insert(.global) }
        if contains(.userAccessible) { flags.insert(.userAccessible) }
        return flags
    }
}

/// Sizes of pages a leaf entry can map.
public enum PageMappingSize: Int, Sendable {
    /// 4 KiB, a PTE at level 1.
    case small = 1
    /// 2 MiB, a PDE with PS at level 2.
    case large = 2
    /// 1 GiB, a PDPTE with PS at level 3 (needs CPUID.80000001H:EDX[26]).
    case huge = 3

    public var byteCount: UInt64 { UInt64(1) << UInt64(12 + 9 * (rawValue - 1)) }
}

/// Why a page-table operation failed.
public enum PageTableError: Error, Equatable {
    /// The virtual address is not canonical (bits 63:47 differ).
    case notCanonical(virtual: UInt64)
    /// An address or length is not a multiple of the page size.
    case misaligned(virtual: UInt64, physical: UInt64, pageSize: UInt64)
    /// Something is already mapped there.
    case alreadyMapped(virtual: UInt64)
    /// Nothing is mapped there.
    case notMapped(virtual: UInt64)
    /// The frame allocator ran out while a table was needed.
    case outOfFrames(virtual: UInt64)
    /// The physical address has bits above bit 51.
    case physicalAddressTooWide(physical: UInt64)
}

/// A translation found by walking the tables.
public struct PageTranslation: Equatable, Sendable {
    /// The physical address the virtual address maps to.
    public var physical: PhysicalAddress
    /// Start of the page holding it, virtual and physical.
    public var pageVirtual: VirtualAddress
    public var pagePhysical: PhysicalAddress
    public var pageSize: PageMappingSize
    /// What the whole walk allows: writable only if every level allows it,
    /// executable only if no level sets XD.
    public var attributes: MemoryAttributes
    /// The leaf entry itself.
    public var leaf: PageTableEntry
}

/// Builds, changes and walks one 4-level page-table hierarchy.
///
/// Changes are plain memory writes: when the hierarchy is live in CR3 the
/// caller flushes the TLB (`invlpg` per page, or a CR3 reload) afterwards.
public struct PageTableMapper<Mapping: FrameMapping> {
    /// The PML4 table's physical address (the value for CR3 bits 51:12).
    public let root: PhysicalAddress
    public let mapping: Mapping

    /// Entries of non-leaf levels allow everything; leaves decide.
    static var tableFlags: PageTableFlags { [.present, .writable] }

    /// Starts an empty hierarchy with a fresh PML4 from `allocator`.
    public init<Allocator: FrameAllocator>(mapping: Mapping, allocator: inout Allocator) throws(PageTableError) {
        guard let frame = allocator.allocateFrame() else { throw .outOfFrames(virtual: 0) }
        self.mapping = mapping
        self.root = frame
        Self.zero(mapping.pointer(to: frame))
    }

    /// Works on an existing hierarchy. The caller guarantees that `root`
    /// and every table below it are reachable through `mapping`.
    public init(root: PhysicalAddress, mapping: Mapping) {
        self.root = root
        self.mapping = mapping
    }

    static func zero(_ pointer: UnsafeMutableRawPointer) {
        pointer.initializeMemory(as: UInt64.self, repeating: 0, count: 512)
    }

    @inline(__always)
    func entry(_ table: PhysicalAddress, _ index: Int) -> UnsafeMutablePointer<UInt64> {
        mapping.pointer(to: table).assumingMemoryBound(to: UInt64.self) + index
    }

    // MARK: Mapping

    /// Maps one page of `size` at `virtual` to `physical`.
    public mutating func map<Allocator: FrameAllocator>(
        _ virtual: VirtualAddress, to physical: PhysicalAddress, size: PageMappingSize = .small,
        attributes: MemoryAttributes, allocator: inout Allocator
    ) throws(PageTableError) {
        guard virtual.isCanonical else { throw .notCanonical(virtual: virtual.rawValue) }
        guard virtual.isAligned(to: size.byteCount), physical.isAligned(to: size.byteCount) else {
            throw .misaligned(virtual: virtual.rawValue, physical: physical.rawValue, pageSize: size.byteCount)
        }
        guard physical.rawValue & ~PageTableEntry.addressMask & ~0xFFF == 0 else {
            throw .physicalAddressTooWide(physical: physical.rawValue)
        }
        var table = root
        var level = 4
        while level > size.rawValue {
            let slot = entry(table, virtual.tableIndex(level: level))
            let current = PageTableEntry(rawValue: slot.pointee)
            if current.isPresent {
                if current.flags.contains(.pageSize) { throw .alreadyMapped(virtual: virtual.rawValue) }
                table = current.address
            } else {
                guard let frame = allocator.allocateFrame() else { throw .outOfFrames(virtual: virtual.rawValue) }
                Self.zero(mapping.pointer(to: frame))
                slot.pointee = PageTableEntry(address: frame, flags: Self.tableFlags).rawValue
                table = frame
            }
            level -= 1
        }
        let slot = entry(table, virtual.tableIndex(level: level))
        guard !PageTableEntry(rawValue: slot.pointee).isPresent else { throw .alreadyMapped(virtual: virtual.rawValue) }
        var flags = attributes.leafFlags
        if size != .small { flags.insert(.pageSize) }
        slot.pointee = PageTableEntry(address: physical, flags: flags).rawValue
    }

    /// Maps `byteCount` bytes (a multiple of 4 KiB) at `virtual` to
    /// `physical`, using 2 MiB pages where both addresses line up (and 1 GiB
    /// pages when `allowHugePages`), 4 KiB pages elsewhere.
    public mutating func map<Allocator: FrameAllocator>(
        range virtual: VirtualAddress, to physical: PhysicalAddress, byteCount: UInt64,
        attributes: MemoryAttributes, allowLargePages: Bool = true, allowHugePages: Bool = false,
        allocator: inout Allocator
    ) throws(PageTableError) {
        guard virtual.isAligned(to: PageSize.small), physical.isAligned(to: PageSize.small),
            byteCount & (PageSize.small - 1) == 0
        else {
            throw .misaligned(virtual: virtual.rawValue, physical: physical.rawValue, pageSize: PageSize.small)
        }
        let last = virtual.rawValue &+ (byteCount &- 1)
        guard byteCount == 0 || (last >= virtual.rawValue && VirtualAddress(last).isCanonical
            && (virtual.rawValue >> 47 == last >> 47))
        else { throw .notCanonical(virtual: last) }
        var offset: UInt64 = 0
        while offset < byteCount {
            let v = virtual.advanced(by: offset)
            let p = physical.advanced(by: offset)
            let remaining = byteCount - offset
            func fits(_ candidate: PageMappingSize) -> Bool {
                v.isAligned(to: candidate.byteCount) && p.isAligned(to: candidate.byteCount)
                    && remaining >= candidate.byteCount
            }
            var size = PageMappingSize.small
            if allowHugePages && fits(.huge) {
                size = .huge
            } else if allowLargePages && fits(.large) {
                size = .large
            }
            try map(v, to: p, size: size, attributes: attributes, allocator: &allocator)
            offset += size.byteCount
        }
    }

    // MARK: Walking

    /// The translation of `virtual`, or nil when it is not mapped.
    public func translate(_ virtual: VirtualAddress) -> PageTranslation? {
        guard virtual.isCanonical else { return nil }
        var table = root
        var writable = true
        var executable = true
        var user = true
        var level = 4
        while level >= 1 {
            let current = PageTableEntry(rawValue: entry(table, virtual.tableIndex(level: level)).pointee)
            guard current.isPresent else { return nil }
            let flags = current.flags
            writable = writable && flags.contains(.writable)
            executable = executable && !flags.contains(.noExecute)
            user = user && flags.contains(.userAccessible)
            if level == 1 || flags.contains(.pageSize) {
                let size = PageMappingSize(rawValue: level)!
                let pagePhysical = PhysicalAddress(current.address.rawValue & ~(size.byteCount - 1))
                var attributes: MemoryAttributes = []
                if writable { attributes.insert(.writable) }
                if executable { attributes.insert(.executable) }
                if user { attributes.insert(.userAccessible) }
                if flags.contains(.global) { attributes.insert(.global) }
                if flags.contains(.cacheDisabled) && flags.contains(.writeThrough) { attributes.insert(.uncached) }
                let offset = virtual.rawValue & (size.byteCount - 1)
                return PageTranslation(
                    physical: pagePhysical.advanced(by: offset), pageVirtual: virtual.alignedDown(to: size.byteCount),
                    pagePhysical: pagePhysical, pageSize: size, attributes: attributes, leaf: current)
            }
            table = current.address
            level -= 1
        }
        return nil
    }

    /// Calls `body` for every mapped page in ascending virtual order.
    public func forEachMapping(_ body: (PageTranslation) -> Void) {
        walk(table: root, level: 4, base: 0, body)
    }

    func walk(table: PhysicalAddress, level: Int, base: UInt64, _ body: (PageTranslation) -> Void) {
        for index in 0..<512 {
            let current = PageTableEntry(rawValue: entry(table, index).pointee)
            guard current.isPresent else { continue }
            let address = base | (UInt64(index) << UInt64(12 + 9 * (level - 1)))
            if level == 1 || current.flags.contains(.pageSize) {
                if let translation = translate(VirtualAddress.canonical(address)) { body(translation) }
            } else {
                walk(table: current.address, level: level - 1, base: address, body)
            }
        }
    }

    // MARK: Changing

    /// Removes every mapping in `[virtual, virtual + byteCount)` (whole
    /// 4 KiB pages), splitting large pages that lie partly inside. Returns
    /// the bytes that were mapped. Tables left empty stay allocated.
    @discardableResult
    public mutating func unmap<Allocator: FrameAllocator>(
        range virtual: VirtualAddress, byteCount: UInt64, allocator: inout Allocator
    ) throws(PageTableError) -> UInt64 {
        var removed: UInt64 = 0
        try forEachLeaf(in: virtual, byteCount: byteCount, skipHoles: true, allocator: &allocator) { slot, size in
            slot.pointee = 0
            removed += size
        }
        return removed
    }

    /// Gives every page in the range new attributes, splitting large pages
    /// that lie partly inside. Throws `notMapped` at the first hole (pages
    /// before it have already changed).
    public mutating func protect<Allocator: FrameAllocator>(
        range virtual: VirtualAddress, byteCount: UInt64, attributes: MemoryAttributes, allocator: inout Allocator
    ) throws(PageTableError) {
        try forEachLeaf(in: virtual, byteCount: byteCount, skipHoles: false, allocator: &allocator) { slot, size in
            let current = PageTableEntry(rawValue: slot.pointee)
            var flags = attributes.leafFlags
            if size != PageSize.small { flags.insert(.pageSize) }
            slot.pointee = PageTableEntry(address: current.address, flags: flags).rawValue
        }
    }

    /// Visits the leaf slots that lie wholly inside the range, splitting
    /// large pages at its edges first.
    mutating func forEachLeaf<Allocator: FrameAllocator>(
        in virtual: VirtualAddress, byteCount: UInt64, skipHoles: Bool, allocator: inout Allocator,
        _ body: (UnsafeMutablePointer<UInt64>, UInt64) -> Void
    ) throws(PageTableError) {
        guard virtual.isAligned(to: PageSize.small), byteCount & (PageSize.small - 1) == 0 else {
            throw .misaligned(virtual: virtual.rawValue, physical: 0, pageSize: PageSize.small)
        }
        let last = virtual.rawValue &+ (byteCount &- 1)
        guard virtual.isCanonical,
            byteCount == 0 || (last >= virtual.rawValue && virtual.rawValue >> 47 == last >> 47)
        else { throw .notCanonical(virtual: virtual.rawValue) }
        let end = virtual.rawValue &+ byteCount
        var address = virtual.rawValue
        while address != end {
            var table = root
            var level = 4
            var advanced = false
            while !advanced {
                let span = UInt64(1) << UInt64(12 + 9 * (level - 1))
                let slot = entry(table, VirtualAddress(address).tableIndex(level: level))
                let current = PageTableEntry(rawValue: slot.pointee)
                if !current.isPresent {
                    guard skipHoles else { throw .notMapped(virtual: address) }
                    let next = (address & ~(span - 1)) &+ span
                    address = (next > end || next < address) ? end : next
                    advanced = true
                } else if level == 1 || current.flags.contains(.pageSize) {
                    if address & (span - 1) == 0 && end &- address >= span {
                        body(slot, span)
                        address = address &+ span
                        advanced = true
                    } else {
                        try split(slot, level: level, virtual: address, allocator: &allocator)
                        table = PageTableEntry(rawValue: slot.pointee).address
                        level -= 1
                    }
                } else {
                    table = current.address
                    level -= 1
                }
            }
        }
    }

    /// Replaces a large leaf at `level` (2 or 3) with a table of 512
    /// next-level leaves mapping the same memory with the same flags.
    mutating func split<Allocator: FrameAllocator>(
        _ slot: UnsafeMutablePointer<UInt64>, level: Int, virtual: UInt64, allocator: inout Allocator
    ) throws(PageTableError) {
        let current = PageTableEntry(rawValue: slot.pointee)
        guard let frame = allocator.allocateFrame() else { throw .outOfFrames(virtual: virtual) }
        let childSpan = UInt64(1) << UInt64(12 + 9 * (level - 2))
        let base = current.address.rawValue & ~((childSpan << 9) - 1)
        var flags = current.flags
        flags.remove([.accessed, .dirty])
        if level - 1 == 1 { flags.remove(.pageSize) }
        let table = mapping.pointer(to: frame).assumingMemoryBound(to: UInt64.self)
        for index in 0..<512 {
            table[index] = PageTableEntry(address: PhysicalAddress(base + UInt64(index) * childSpan), flags: flags).rawValue
        }
        slot.pointee = PageTableEntry(address: frame, flags: Self.tableFlags).rawValue
    }
}

/// Where the linker put the parts of an identity-mapped kernel image
/// (`__image_start`, `__text_end`, `__rodata_start`, `__rodata_end`,
/// `__data_start`, `__image_end` in hw.ld).
public struct KernelImageLayout: Sendable {
    /// Code: mapped read + execute.
    public var text: PhysicalRange
    /// Read-only data and notes: mapped read-only, no execute.
    public var readOnlyData: PhysicalRange
    /// Data, GOT, bss (and the boot stack in it): read-write, no execute.
    public var data: PhysicalRange

    public init(text: PhysicalRange, readOnlyData: PhysicalRange, data: PhysicalRange) {
        self.text = text
        self.readOnlyData = readOnlyData
        self.data = data
    }

    /// The pages the whole image occupies.
    public var whole: PhysicalRange {
        PhysicalRange(
            start: min(text.start, readOnlyData.start, data.start).alignedDown(to: PageSize.small),
            end: max(text.end, readOnlyData.end, data.end).alignedUp(to: PageSize.small))
    }
}

extension PageTableMapper {
    /// Identity-maps the image: each part rounded out to whole pages, text
    /// R+X, read-only data R+NX, data RW+NX.
    public mutating func mapKernelImage<Allocator: FrameAllocator>(
        _ layout: KernelImageLayout, allocator: inout Allocator
    ) throws(PageTableError) {
        let parts: (PhysicalRange, MemoryAttributes, PhysicalRange, MemoryAttributes, PhysicalRange, MemoryAttributes) =
            (layout.text, .text, layout.readOnlyData, .readOnly, layout.data, .data)
        try identityMap(parts.0, attributes: parts.1, excluding: nil, allocator: &allocator)
        try identityMap(parts.2, attributes: parts.3, excluding: nil, allocator: &allocator)
        try identityMap(parts.4, attributes: parts.5, excluding: nil, allocator: &allocator)
    }

    /// Identity-maps the pages overlapping `range` (never the null page),
    /// leaving out the pages of `excluding`; 2 MiB pages where they fit.
    public mutating func identityMap<Allocator: FrameAllocator>(
        _ range: PhysicalRange, attributes: MemoryAttributes, excluding: PhysicalRange?,
        allocator: inout Allocator
    ) throws(PageTableError) {
        let start = max(range.start.alignedDown(to: PageSize.small), PhysicalAddress(PageSize.small))
        let end = range.end.alignedUp(to: PageSize.small)
        guard end > start else { return }
        func mapPart(_ from: PhysicalAddress, _ to: PhysicalAddress) throws(PageTableError) {
            guard to > from else { return }
            try map(
                range: VirtualAddress(from.rawValue), to: from, byteCount: to.rawValue - from.rawValue,
                attributes: attributes, allocator: &allocator)
        }
        if let excluding, !excluding.isEmpty {
            let holeStart = excluding.start.alignedDown(to: PageSize.small)
            let holeEnd = excluding.end.alignedUp(to: PageSize.small)
            try mapPart(start, min(end, holeStart))
            try mapPart(max(start, holeEnd), end)
        } else {
            try mapPart(start, end)
        }
    }
}
