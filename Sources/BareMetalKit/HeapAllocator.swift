// HeapAllocator: the first guest heap. Whole 4 KiB pages for large requests
// (first fit over a per-page map) and power-of-two size classes from 16 B to
// 2 KiB carved out of pages for small ones. It keeps all bookkeeping inside
// the region it manages, so it needs nothing before it exists.

/// Counters an application can read.
public struct HeapStatistics: Equatable, Sendable {
    public var totalBytes: Int
    public var bytesInUse: Int
    public var peakBytesInUse: Int
    public var allocationCount: Int
    public var failedAllocationCount: Int
}

/// Why a `free` or `realloc` was refused: heap corruption or a bad pointer.
public enum HeapError: Error, Equatable {
    case pointerOutsideHeap(UInt)
    case notAnAllocation(UInt)
    case doubleFree(UInt)
}

/// A page-and-size-class allocator over one contiguous region.
///
/// Layout of the managed region: a header page run with the free-list heads
/// and one 32-bit word of state per page, then the allocatable pages.
public struct HeapAllocator {
    public static var pageSize: Int { 4096 }
    static var smallClassCount: Int { 8 }  // 16, 32, ..., 2048 bytes
    static var largestSmallSize: Int { 16 << (smallClassCount - 1) }

    // Per-page state words.
    static var freePage: UInt32 { 0 }
    static var runHeadFlag: UInt32 { 0x8000_0000 }
    static var runTailFlag: UInt32 { 0x4000_0000 }
    static var smallFreeMarker: UInt64 { 0xF2EE_F2EE_F2EE_F2EE }

    let pages: UnsafeMutableRawPointer
    public let pageCount: Int
    let pageState: UnsafeMutablePointer<UInt32>
    let freeLists: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    var searchHint = 0
    public private(set) var statistics: HeapStatistics

    /// Manages `[start, start + length)`.
    ///
    /// The caller guarantees that the region is writable memory used by
    /// nothing else for the allocator's lifetime. Returns nil when the region
    /// cannot hold the bookkeeping and at least one page.
    public init?(start: UnsafeMutableRawPointer, length: Int) {
        let pageSize = Self.pageSize
        let alignedStart = (UInt(bitPattern: start) + UInt(pageSize - 1)) & ~UInt(pageSize - 1)
        let end = UInt(bitPattern: start) + UInt(length)
        guard end > alignedStart else { return nil }
        let totalPages = Int((end - alignedStart) / UInt(pageSize))
        // Bookkeeping: free-list heads, then one state word per page.
        let headerBytes = Self.smallClassCount * 8
        var metadataPages = 1
        while metadataPages * pageSize < headerBytes + 4 * (totalPages - metadataPages) {
            metadataPages += 1
        }
        guard totalPages > metadataPages else { return nil }
        let metadata = UnsafeMutableRawPointer(bitPattern: alignedStart)!
        freeLists = metadata.bindMemory(to: UnsafeMutableRawPointer?.self, capacity: Self.smallClassCount)
        for index in 0..<Self.smallClassCount { freeLists[index] = nil }
        pageCount = totalPages - metadataPages
        pageState = (metadata + headerBytes).bindMemory(to: UInt32.self, capacity: pageCount)
        pageState.initialize(repeating: Self.freePage, count: pageCount)
        pages = metadata + metadataPages * pageSize
        statistics = HeapStatistics(
            totalBytes: pageCount * pageSize, bytesInUse: 0, peakBytesInUse: 0,
            allocationCount: 0, failedAllocationCount: 0)
    }

    /// The address range of allocatable pages.
    public var pageRange: Range<UInt> {
        UInt(bitPattern: pages)..<UInt(bitPattern: pages) + UInt(pageCount * Self.pageSize)
    }

    static func smallClass(for size: Int) -> Int {
        var classIndex = 0
        while 16 << classIndex < size { classIndex += 1 }
        return classIndex
    }

    /// Allocates `size` bytes aligned to `alignment` (a power of two).
    /// Returns nil when the request cannot be met.
    public mutating func allocate(size: Int, alignment: Int = 16) -> UnsafeMutableRawPointer? {
        guard alignment > 0, alignment & (alignment - 1) == 0, size >= 0, size <= Int.max / 2 else {
            statistics.failedAllocationCount += 1
            return nil
        }
        let effective = max(size, alignment, 1)
        let result: UnsafeMutableRawPointer?
        let bytes: Int
        if effective <= Self.largestSmallSize {
            let classIndex = Self.smallClass(for: effective)
            result = allocateSmall(classIndex: classIndex)
            bytes = 16 << classIndex
        } else {
            let count = (size + Self.pageSize - 1) / Self.pageSize
            result = allocatePages(count: max(count, 1), alignment: max(alignment, Self.pageSize))
            bytes = max(count, 1) * Self.pageSize
        }
        guard let result else {
            statistics.failedAllocationCount += 1
            return nil
        }
        statistics.allocationCount += 1
        statistics.bytesInUse += bytes
        statistics.peakBytesInUse = max(statistics.peakBytesInUse, statistics.bytesInUse)
        return result
    }

    /// The usable size of an allocation made here.
    public func usableSize(_ pointer: UnsafeMutableRawPointer) throws(HeapError) -> Int {
        let page = try pageIndex(pointer)
        let state = pageState[page]
        if state & Self.runHeadFlag != 0 {
            guard pointer == pages + page * Self.pageSize else { throw .notAnAllocation(UInt(bitPattern: pointer)) }
            return Int(state & ~Self.runHeadFlag) * Self.pageSize
        }
        if state != Self.freePage && state & Self.runTailFlag == 0 {
            let size = 16 << Int(state - 1)
            guard (pointer - pages) % size == 0 else { throw .notAnAllocation(UInt(bitPattern: pointer)) }
            return size
        }
        throw .notAnAllocation(UInt(bitPattern: pointer))
    }

    /// Returns an allocation. Freeing nil does nothing.
    public mutating func free(_ pointer: UnsafeMutableRawPointer?) throws(HeapError) {
        guard let pointer else { return }
        let size = try usableSize(pointer)
        let page = try pageIndex(pointer)
        let state = pageState[page]
        if state & Self.runHeadFlag != 0 {
            let count = Int(state & ~Self.runHeadFlag)
            for index in page..<page + count { pageState[index] = Self.freePage }
            searchHint = min(searchHint, page)
        } else {
            // Small block: the free list links through the block's first
            // word; the second word marks it free to catch double frees.
            let marker = (pointer + 8).assumingMemoryBound(to: UInt64.self)
            if size >= 16 && marker.pointee == Self.smallFreeMarker && isOnFreeList(pointer, classIndex: Int(state - 1)) {
                throw .doubleFree(UInt(bitPattern: pointer))
            }
            let classIndex = Int(state - 1)
            pointer.storeBytes(of: freeLists[classIndex], as: UnsafeMutableRawPointer?.self)
            marker.pointee = Self.smallFreeMarker
            freeLists[classIndex] = pointer
        }
        statistics.bytesInUse -= size
    }

    func isOnFreeList(_ pointer: UnsafeMutableRawPointer, classIndex: Int) -> Bool {
        var current = freeLists[classIndex]
        while let block = current {
            if block == pointer { return true }
            current = block.load(as: UnsafeMutableRawPointer?.self)
        }
        return false
    }

    func pageIndex(_ pointer: UnsafeMutableRawPointer) throws(HeapError) -> Int {
        guard pageRange.contains(UInt(bitPattern: pointer)) else { throw .pointerOutsideHeap(UInt(bitPattern: pointer)) }
        return (pointer - pages) / Self.pageSize
    }

    mutating func allocateSmall(classIndex: Int) -> UnsafeMutableRawPointer? {
        if let block = freeLists[classIndex] {
            freeLists[classIndex] = block.load(as: UnsafeMutableRawPointer?.self)
            (block + 8).storeBytes(of: 0, as: UInt64.self)
            return block
        }
        guard let page = allocatePages(count: 1, alignment: Self.pageSize) else { return nil }
        pageState[(page - pages) / Self.pageSize] = UInt32(classIndex + 1)
        let size = 16 << classIndex
        // Keep the first block, thread the rest onto the free list.
        var offset = Self.pageSize - size
        while offset > 0 {
            let block = page + offset
            block.storeBytes(of: freeLists[classIndex], as: UnsafeMutableRawPointer?.self)
            (block + 8).storeBytes(of: Self.smallFreeMarker, as: UInt64.self)
            freeLists[classIndex] = block
            offset -= size
        }
        return page
    }

    mutating func allocatePages(count: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        guard count <= pageCount else { return nil }
        let base = UInt(bitPattern: pages)
        var index = searchHint
        while index + count <= pageCount {
            let address = base + UInt(index * Self.pageSize)
            if address % UInt(alignment) != 0 {
                let skip = (UInt(alignment) - address % UInt(alignment)) / UInt(Self.pageSize)
                index += Int(skip)
                continue
            }
            var length = 0
            while length < count && pageState[index + length] == Self.freePage { length += 1 }
            if length == count {
                pageState[index] = Self.runHeadFlag | UInt32(count)
                for tail in index + 1..<index + count { pageState[tail] = Self.runTailFlag }
                if index == searchHint { searchHint = index + count }
                return pages + index * Self.pageSize
            }
            index += length + 1
        }
        return nil
    }
}
