// SizeClassHeap: the guest's malloc. Small requests (up to 2 KiB) come from
// size classes carved out of 16 KiB slabs; larger ones are whole pages from
// the page allocator, so freed memory goes back to the system.

/// Where the heap gets whole pages: the physical page allocator in the
/// guest, any page-granular allocator in tests.
public protocol PageSource {
    /// `count` contiguous 4 KiB pages aligned to `alignment` bytes (a power
    /// of two, at least 4096), or nil.
    mutating func allocatePages(count: Int, alignment: Int) -> UnsafeMutableRawPointer?
    /// Returns pages obtained from `allocatePages`.
    mutating func freePages(_ pointer: UnsafeMutableRawPointer)
    /// The page count of the live allocation starting exactly at `pointer`,
    /// or nil when no page allocation starts there. Mutating only so that
    /// a large allocator is passed by address, never copied to the stack.
    mutating func allocatedPageCount(at pointer: UnsafeRawPointer) -> Int?
}

/// Pages from a `PhysicalPageAllocator`, reached through a mapping.
public struct PhysicalPageSource<Mapping: ReversibleFrameMapping>: PageSource {
    public var allocator: PhysicalPageAllocator
    public let mapping: Mapping

    public init(allocator: PhysicalPageAllocator, mapping: Mapping) {
        self.allocator = allocator
        self.mapping = mapping
    }

    public mutating func allocatePages(count: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard count > 0, alignment >= 4096 else { return nil }
        guard let start = allocator.allocate(frameCount: UInt64(count), alignmentFrames: UInt64(alignment / 4096)) else {
            return nil
        }
        return mapping.pointer(to: start)
    }

    public mutating func freePages(_ pointer: UnsafeMutableRawPointer) {
        do {
            try allocator.free(mapping.physicalAddress(of: pointer))
        } catch {
            preconditionFailure("heap: returned pages the page allocator did not hand out")
        }
    }

    public mutating func allocatedPageCount(at pointer: UnsafeRawPointer) -> Int? {
        allocator.allocatedFrameCount(at: mapping.physicalAddress(of: pointer)).map { Int($0) }
    }
}

/// Why the heap refused a `free`: a bad pointer or heap corruption.
public enum SizeClassHeapError: Error, Equatable {
    /// The pointer is not inside any allocation the heap made.
    case notAnAllocation(address: UInt)
    /// The pointer was already freed.
    case doubleFree(address: UInt)
    /// A slab header failed its check (overwritten by a stray write).
    case corruptSlab(address: UInt)
}

/// Counters an application can read (bytes are usable sizes).
public struct SizeClassHeapStatistics: Equatable, Sendable {
    public var bytesInUse = 0
    public var peakBytesInUse = 0
    /// Bytes of pages held for slabs and large allocations.
    public var pageBytes = 0
    public var allocationCount = 0
    public var freeCount = 0
    public var failedAllocationCount = 0
}

/// A slab-and-page heap over a `PageSource`.
///
/// Slab layout (16 KiB, aligned to 16 KiB): a header with the class, the
/// free list, the partial-list links and an allocation bitmap, then objects
/// aligned to the largest power of two dividing their size.
public struct SizeClassHeap<Pages: PageSource> {
    public var pages: Pages
    public private(set) var statistics = SizeClassHeapStatistics()

    /// Slabs with at least one free object, per class.
    var partial = InlineArray<24, UnsafeMutableRawPointer?>(repeating: nil)
    /// Empty slabs kept per class (at most one) to avoid page churn.
    var emptySlabs = InlineArray<24, UInt8>(repeating: 0)

    public static var slabSize: Int { 16384 }
    public static var pageSize: Int { 4096 }
    /// Largest size (and alignment) served from slabs.
    public static var largestSmallSize: Int { 2048 }
    static var classCount: Int { 24 }
    static var slabMagic: UInt { 0x5AB5_1AB5_C0FF_EE00 }

    // Slab header fields (byte offsets).
    static var magicOffset: Int { 0 }
    static var classOffset: Int { 8 }  // UInt16
    static var inUseOffset: Int { 10 }  // UInt16
    static var firstObjectOffset: Int { 12 }  // UInt16
    static var freeListOffset: Int { 16 }  // UInt32, 0 = empty
    static var uncarvedOffset: Int { 20 }  // UInt32
    static var nextOffset: Int { 24 }
    static var previousOffset: Int { 32 }
    static var bitmapOffset: Int { 40 }  // 128 bytes: 1024 objects
    static var headerSize: Int { 168 }

    public init(pages: Pages) {
        self.pages = pages
    }

    /// Object size of a class: 16..128 by 16, then four steps per doubling.
    public static func classSize(_ index: Int) -> Int {
        if index < 8 { return 16 * (index + 1) }
        let group = (index - 8) / 4  // 0: 160..256, 1: 320..512, ...
        let step = 32 << group
        return 128 << group + step * ((index - 8) % 4 + 1)
    }

    /// The largest power of two dividing a class size (its natural alignment).
    static func classAlignment(_ index: Int) -> Int {
        let size = classSize(index)
        return size & -size
    }

    /// The smallest class that holds `size` bytes aligned to `alignment`.
    static func classIndex(size: Int, alignment: Int) -> Int? {
        for index in 0..<classCount where classSize(index) >= size && classAlignment(index) >= alignment {
            return index
        }
        return nil
    }

    // MARK: Allocation

    /// `size` bytes aligned to `alignment` (a power of two), or nil when the
    /// request is malformed or memory is exhausted.
    public mutating func allocate(size: Int, alignment: Int = 16) -> UnsafeMutableRawPointer? {
        guard alignment > 0, alignment & (alignment - 1) == 0, size >= 0, size <= Int.max / 4 else {
            statistics.failedAllocationCount += 1
            return nil
        }
        let effective = max(size, 1)
        let result: UnsafeMutableRawPointer?
        let usable: Int
        if effective <= Self.largestSmallSize && alignment <= Self.largestSmallSize,
            let index = Self.classIndex(size: effective, alignment: max(alignment, 16))
        {
            result = allocateSmall(classIndex: index)
            usable = Self.classSize(index)
        } else {
            let count = (effective + Self.pageSize - 1) / Self.pageSize
            result = pages.allocatePages(count: count, alignment: max(alignment, Self.pageSize))
            usable = count * Self.pageSize
            if result != nil { statistics.pageBytes += usable }
        }
        guard let result else {
            statistics.failedAllocationCount += 1
            return nil
        }
        statistics.allocationCount += 1
        statistics.bytesInUse += usable
        statistics.peakBytesInUse = max(statistics.peakBytesInUse, statistics.bytesInUse)
        return result
    }

    /// Returns an allocation; nil does nothing.
    public mutating func free(_ pointer: UnsafeMutableRawPointer?) throws(SizeClassHeapError) {
        guard let pointer else { return }
        if let count = pages.allocatedPageCount(at: pointer) {
            pages.freePages(pointer)
            statistics.pageBytes -= count * Self.pageSize
            statistics.bytesInUse -= count * Self.pageSize
            statistics.freeCount += 1
            return
        }
        let (slab, objectIndex) = try locateSmall(pointer)
        let bit = Self.bitmapWord(slab, objectIndex)
        guard bit.pointee & (1 << UInt64(objectIndex % 64)) != 0 else {
            throw .doubleFree(address: UInt(bitPattern: pointer))
        }
        bit.pointee &= ~(1 << UInt64(objectIndex % 64))
        let index = Int(slab.load(fromByteOffset: Self.classOffset, as: UInt16.self))
        let inUse = slab.load(fromByteOffset: Self.inUseOffset, as: UInt16.self)
        let wasFull = Self.isFull(slab, classIndex: index)
        pointer.storeBytes(of: slab.load(fromByteOffset: Self.freeListOffset, as: UInt32.self), as: UInt32.self)
        slab.storeBytes(of: UInt32(pointer - slab), toByteOffset: Self.freeListOffset, as: UInt32.self)
        slab.storeBytes(of: inUse - 1, toByteOffset: Self.inUseOffset, as: UInt16.self)
        if wasFull { pushPartial(slab, classIndex: index) }
        statistics.bytesInUse -= Self.classSize(index)
        statistics.freeCount += 1
        if inUse == 1 {
            if emptySlabs[index] >= 1 {
                removePartial(slab, classIndex: index)
                slab.storeBytes(of: 0, toByteOffset: Self.magicOffset, as: UInt.self)
                pages.freePages(slab)
                statistics.pageBytes -= Self.slabSize
            } else {
                emptySlabs[index] += 1
            }
        }
    }

    /// The bytes usable at an allocation made here. (Mutating for the same
    /// reason as `PageSource.allocatedPageCount`: no copy of the heap.)
    public mutating func usableSize(_ pointer: UnsafeRawPointer) throws(SizeClassHeapError) -> Int {
        if let count = pages.allocatedPageCount(at: pointer) { return count * Self.pageSize }
        let (slab, objectIndex) = try locateSmall(pointer)
        guard Self.bitmapWord(slab, objectIndex).pointee & (1 << UInt64(objectIndex % 64)) != 0 else {
            throw .notAnAllocation(address: UInt(bitPattern: pointer))
        }
        return Self.classSize(Int(slab.load(fromByteOffset: Self.classOffset, as: UInt16.self)))
    }

    /// `realloc`: a block of `size` bytes holding the old contents (up to
    /// the smaller size); the old block is freed when a new one was made.
    /// Returns nil, leaving the old block alone, when memory is exhausted.
    public mutating func reallocate(
        _ pointer: UnsafeMutableRawPointer?, size: Int, alignment: Int = 16
    ) throws(SizeClassHeapError) -> UnsafeMutableRawPointer? {
        guard let pointer else { return allocate(size: size, alignment: alignment) }
        let old = try usableSize(pointer)
        if size <= old && size > old / 2 && Int(bitPattern: pointer) & (alignment - 1) == 0 { return pointer }
        guard let fresh = allocate(size: size, alignment: alignment) else { return nil }
        fresh.copyMemory(from: pointer, byteCount: min(old, size))
        try free(pointer)
        return fresh
    }

    // MARK: Slabs

    mutating func allocateSmall(classIndex index: Int) -> UnsafeMutableRawPointer? {
        let slab: UnsafeMutableRawPointer
        if let head = partial[index] {
            slab = head
        } else {
            guard let fresh = pages.allocatePages(count: Self.slabSize / Self.pageSize, alignment: Self.slabSize) else {
                return nil
            }
            statistics.pageBytes += Self.slabSize
            slab = fresh
            let first = (Self.headerSize + Self.classAlignment(index) - 1) & -Self.classAlignment(index)
            slab.storeBytes(of: Self.slabMagic ^ UInt(bitPattern: slab), toByteOffset: Self.magicOffset, as: UInt.self)
            slab.storeBytes(of: UInt16(index), toByteOffset: Self.classOffset, as: UInt16.self)
            slab.storeBytes(of: 0, toByteOffset: Self.inUseOffset, as: UInt16.self)
            slab.storeBytes(of: UInt16(first), toByteOffset: Self.firstObjectOffset, as: UInt16.self)
            slab.storeBytes(of: 0, toByteOffset: Self.freeListOffset, as: UInt32.self)
            slab.storeBytes(of: UInt32(first), toByteOffset: Self.uncarvedOffset, as: UInt32.self)
            (slab + Self.bitmapOffset).initializeMemory(as: UInt64.self, repeating: 0, count: 16)
            pushPartial(slab, classIndex: index)
            emptySlabs[index] += 1
        }
        let size = Self.classSize(index)
        let inUse = slab.load(fromByteOffset: Self.inUseOffset, as: UInt16.self)
        if inUse == 0 { emptySlabs[index] -= 1 }
        let object: UnsafeMutableRawPointer
        let freeList = slab.load(fromByteOffset: Self.freeListOffset, as: UInt32.self)
        if freeList != 0 {
            object = slab + Int(freeList)
            slab.storeBytes(of: object.load(as: UInt32.self), toByteOffset: Self.freeListOffset, as: UInt32.self)
        } else {
            let uncarved = Int(slab.load(fromByteOffset: Self.uncarvedOffset, as: UInt32.self))
            object = slab + uncarved
            slab.storeBytes(of: UInt32(uncarved + size), toByteOffset: Self.uncarvedOffset, as: UInt32.self)
        }
        slab.storeBytes(of: inUse + 1, toByteOffset: Self.inUseOffset, as: UInt16.self)
        let objectIndex = (object - slab - Int(slab.load(fromByteOffset: Self.firstObjectOffset, as: UInt16.self))) / size
        Self.bitmapWord(slab, objectIndex).pointee |= 1 << UInt64(objectIndex % 64)
        if Self.isFull(slab, classIndex: index) { removePartial(slab, classIndex: index) }
        return object
    }

    static func isFull(_ slab: UnsafeMutableRawPointer, classIndex index: Int) -> Bool {
        let uncarved = Int(slab.load(fromByteOffset: Self.uncarvedOffset, as: UInt32.self))
        return slab.load(fromByteOffset: Self.freeListOffset, as: UInt32.self) == 0
            && uncarved + Self.classSize(index) > Self.slabSize
    }

    static func bitmapWord(_ slab: UnsafeMutableRawPointer, _ objectIndex: Int) -> UnsafeMutablePointer<UInt64> {
        (slab + Self.bitmapOffset).assumingMemoryBound(to: UInt64.self) + objectIndex / 64
    }

    /// The slab and object index of a small allocation's pointer.
    mutating func locateSmall(_ pointer: UnsafeRawPointer) throws(SizeClassHeapError) -> (UnsafeMutableRawPointer, Int) {
        let address = UInt(bitPattern: pointer)
        let slab = UnsafeMutableRawPointer(bitPattern: address & ~UInt(Self.slabSize - 1))
        guard let slab, pages.allocatedPageCount(at: slab) == Self.slabSize / Self.pageSize else {
            throw .notAnAllocation(address: address)
        }
        guard slab.load(fromByteOffset: Self.magicOffset, as: UInt.self) == Self.slabMagic ^ UInt(bitPattern: slab) else {
            throw .notAnAllocation(address: address)
        }
        let index = Int(slab.load(fromByteOffset: Self.classOffset, as: UInt16.self))
        guard index < Self.classCount else { throw .corruptSlab(address: UInt(bitPattern: slab)) }
        let size = Self.classSize(index)
        let first = Int(slab.load(fromByteOffset: Self.firstObjectOffset, as: UInt16.self))
        let offset = Int(address - UInt(bitPattern: slab))
        guard offset >= first, (offset - first) % size == 0, offset + size <= Self.slabSize else {
            throw .notAnAllocation(address: address)
        }
        return (slab, (offset - first) / size)
    }

    mutating func pushPartial(_ slab: UnsafeMutableRawPointer, classIndex index: Int) {
        let head = partial[index]
        slab.storeBytes(of: head, toByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
        slab.storeBytes(of: nil, toByteOffset: Self.previousOffset, as: UnsafeMutableRawPointer?.self)
        head?.storeBytes(of: slab, toByteOffset: Self.previousOffset, as: UnsafeMutableRawPointer?.self)
        partial[index] = slab
    }

    mutating func removePartial(_ slab: UnsafeMutableRawPointer, classIndex index: Int) {
        let next = slab.load(fromByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
        let previous = slab.load(fromByteOffset: Self.previousOffset, as: UnsafeMutableRawPointer?.self)
        if let previous {
            previous.storeBytes(of: next, toByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
        } else {
            partial[index] = next
        }
        next?.storeBytes(of: previous, toByteOffset: Self.previousOffset, as: UnsafeMutableRawPointer?.self)
    }
}
