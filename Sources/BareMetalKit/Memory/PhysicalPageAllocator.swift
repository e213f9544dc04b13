// PhysicalPageAllocator: a binary buddy allocator of 4 KiB physical frames
// over the usable regions of the memory map (E820 via multiboot or PVH), with
// blocks from 4 KiB (order 0) to 1 GiB (order 18) aligned to their size.
//
// Lookups that index `zones` are `mutating` although they change nothing:
// a non-mutating method copies the whole 3.6 KB allocator to its stack
// before indexing the inline array (Swift 6.3, Embedded), which made every
// free() slow and 11 KiB deep. Inout access indexes in place.
//
// All bookkeeping lives in metadata arrays outside the managed frames (one
// state byte and two 32-bit free-list links per frame, 9 bytes per 4 KiB), so
// free memory is never written and need not even be mapped.

/// Why the page allocator refused a request.
public enum PageAllocatorError: Error, Equatable {
    /// More regions than the allocator keeps descriptors for.
    case tooManyRegions(limit: Int)
    /// The region cannot hold its metadata and at least one frame.
    case regionTooSmall(start: UInt64, byteCount: UInt64)
    /// The region overlaps one added before.
    case regionOverlaps(start: UInt64, end: UInt64)
    /// The region has more frames than 32-bit frame indexes can count.
    case regionTooLarge(start: UInt64, byteCount: UInt64)
    /// The metadata storage passed in is smaller than needed.
    case metadataTooSmall(needed: Int, given: Int)
    /// A free of an address outside every region.
    case outsideManagedMemory(address: UInt64)
    /// A free of an address that is not the start of a live allocation
    /// (double free, or an address in the middle of an allocation).
    case notAllocated(address: UInt64)
}

/// Counters of the page allocator, in 4 KiB frames.
public struct PageAllocatorStatistics: Equatable, Sendable {
    /// Frames under management (excluding metadata).
    public var totalFrames: UInt64 = 0
    public var freeFrames: UInt64 = 0
    /// Frames taken out of service with `reserve`.
    public var reservedFrames: UInt64 = 0
    /// Frames holding the allocator's own metadata.
    public var metadataFrames: UInt64 = 0
    public var peakFramesInUse: UInt64 = 0
    public var allocationCount: UInt64 = 0
    public var failedAllocationCount: UInt64 = 0

    public var framesInUse: UInt64 { totalFrames - freeFrames - reservedFrames }
}

/// A buddy allocator of physical frames.
///
/// Add memory with `addRegion`; allocate power-of-two blocks with
/// `allocate(order:)` or exact runs with `allocate(frameCount:)`, and return
/// either with `free(_:)`. Every allocation is aligned to the power of two
/// at or above its size (or to the requested alignment when larger).
public struct PhysicalPageAllocator: FrameAllocator {
    /// Largest block order: 2^18 frames = 1 GiB.
    public static var maximumOrder: Int { 18 }
    /// Regions (zones) the allocator can manage.
    public static var regionLimit: Int { 32 }
    public static var frameSize: UInt64 { PageSize.small }

    // Per-frame state byte.
    static var freeHead: UInt8 { 0x80 }
    static var allocatedHead: UInt8 { 0x40 }
    static var allocatedPiece: UInt8 { 0x20 }
    static var orderMask: UInt8 { 0x1F }
    static var noFrame: UInt32 { UInt32.max }

    /// One contiguous run of frames and its metadata.
    struct Zone {
        /// Physical frame number of the first managed frame.
        var firstFrame: UInt64 = 0
        var frameCount: UInt64 = 0
        /// One byte per frame: 0 (inside a block), or a head marker | order.
        var state: UnsafeMutablePointer<UInt8>? = nil
        /// Two words per frame: next and previous free block of a free head;
        /// the allocation's frame count at an allocated head.
        var links: UnsafeMutablePointer<UInt32>? = nil
        var freeHeads = InlineArray<19, UInt32>(repeating: PhysicalPageAllocator.noFrame)

        var endFrame: UInt64 { firstFrame + frameCount }
    }

    var zones = InlineArray<32, Zone>(repeating: Zone())
    public private(set) var regionCount = 0
    public private(set) var statistics = PageAllocatorStatistics()

    public init() {}

    /// Bytes of metadata a region of `frameCount` frames needs.
    public static func metadataByteCount(frameCount: UInt64) -> Int {
        // Links first (4-byte aligned), then state bytes.
        Int(frameCount) * 8 + Int(frameCount)
    }

    // MARK: Adding memory

    /// Adds the whole frames of `range` to the pool (never frame 0, whose
    /// address is the null pointer under an identity map), with metadata stored at
    /// `metadata`.
    ///
    /// The caller guarantees that `metadata` points to at least
    /// `metadataByteCount` writable bytes, 4-byte aligned, that stay
    /// reserved for the allocator and do not lie inside `range`.
    public mutating func addRegion(
        _ range: PhysicalRange, metadata: UnsafeMutableRawPointer, metadataByteCount: Int
    ) throws(PageAllocatorError) {
        let first = max(range.start.alignedUp(to: Self.frameSize).rawValue / Self.frameSize, 1)
        let end = range.end.alignedDown(to: Self.frameSize).rawValue / Self.frameSize
        guard end > first else { throw .regionTooSmall(start: range.start.rawValue, byteCount: range.byteCount) }
        let needed = Self.metadataByteCount(frameCount: end - first)
        guard metadataByteCount >= needed else { throw .metadataTooSmall(needed: needed, given: metadataByteCount) }
        try addZone(firstFrame: first, frameCount: end - first, metadata: metadata, range: range)
    }

    /// Adds the whole frames of `range`, keeping the metadata in the first
    /// frames of the range itself (reached through `mapping`).
    ///
    /// The caller guarantees that the range is unused memory that `mapping`
    /// reaches, and that nothing else uses it from now on.
    public mutating func addRegion<Mapping: FrameMapping>(
        _ range: PhysicalRange, carvingMetadataThrough mapping: Mapping
    ) throws(PageAllocatorError) {
        let first = max(range.start.alignedUp(to: Self.frameSize).rawValue / Self.frameSize, 1)
        let end = range.end.alignedDown(to: Self.frameSize).rawValue / Self.frameSize
        guard end > first else { throw .regionTooSmall(start: range.start.rawValue, byteCount: range.byteCount) }
        let frames = end - first
        // m metadata frames serve frames - m managed ones: 9 (frames - m) <= 4096 m.
        let metadataFrames = (9 * frames + 4096 + 9 - 1) / (4096 + 9)
        guard frames > metadataFrames else { throw .regionTooSmall(start: range.start.rawValue, byteCount: range.byteCount) }
        let metadata = mapping.pointer(to: PhysicalAddress(first * Self.frameSize))
        try addZone(firstFrame: first + metadataFrames, frameCount: frames - metadataFrames, metadata: metadata, range: range)
        statistics.metadataFrames += metadataFrames
    }

    mutating func addZone(
        firstFrame: UInt64, frameCount: UInt64, metadata: UnsafeMutableRawPointer, range: PhysicalRange
    ) throws(PageAllocatorError) {
        guard regionCount < Self.regionLimit else { throw .tooManyRegions(limit: Self.regionLimit) }
        guard frameCount < UInt64(Self.noFrame) else {
            throw .regionTooLarge(start: range.start.rawValue, byteCount: range.byteCount)
        }
        for index in 0..<regionCount {
            let other = zones[index]
            if firstFrame < other.endFrame && other.firstFrame < firstFrame + frameCount {
                throw .regionOverlaps(start: range.start.rawValue, end: range.end.rawValue)
            }
        }
        var zone = Zone()
        zone.firstFrame = firstFrame
        zone.frameCount = frameCount
        let links = metadata.bindMemory(to: UInt32.self, capacity: Int(frameCount) * 2)
        links.initialize(repeating: 0, count: Int(frameCount) * 2)
        let state = (metadata + Int(frameCount) * 8).bindMemory(to: UInt8.self, capacity: Int(frameCount))
        state.initialize(repeating: 0, count: Int(frameCount))
        zone.links = links
        zone.state = state
        zones[regionCount] = zone
        let zoneIndex = regionCount
        regionCount += 1
        statistics.totalFrames += frameCount
        releaseRange(zoneIndex: zoneIndex, from: 0, count: frameCount)
    }

    // MARK: Allocation

    /// A block of 2^order frames aligned to its size, or nil.
    public mutating func allocate(order: Int) -> PhysicalAddress? {
        guard order >= 0, order <= Self.maximumOrder else {
            statistics.failedAllocationCount += 1
            return nil
        }
        return allocate(frameCount: 1 << UInt64(order), alignmentFrames: 1)
    }

    /// `frameCount` contiguous frames aligned to `alignmentFrames` frames
    /// (a power of two) and to the largest power of two not above
    /// `frameCount`, optionally ending at or below `limit` (for DMA below
    /// 4 GiB or an AP trampoline below 1 MiB). The frames beyond
    /// `frameCount` in the underlying buddy block go back to the pool.
    public mutating func allocate(
        frameCount: UInt64, alignmentFrames: UInt64 = 1, limit: PhysicalAddress? = nil
    ) -> PhysicalAddress? {
        guard frameCount > 0, alignmentFrames > 0, alignmentFrames & (alignmentFrames - 1) == 0 else {
            statistics.failedAllocationCount += 1
            return nil
        }
        let order = max(Self.ceilingLog2(frameCount), Self.ceilingLog2(alignmentFrames))
        guard order <= Self.maximumOrder else {
            statistics.failedAllocationCount += 1
            return nil
        }
        let limitFrame = limit.map { $0.rawValue / Self.frameSize } ?? UInt64.max
        guard let (zoneIndex, index, foundOrder) = findFreeBlock(order: order, limitFrame: limitFrame) else {
            statistics.failedAllocationCount += 1
            return nil
        }
        removeFree(zoneIndex: zoneIndex, index: index, order: foundOrder)
        statistics.freeFrames -= 1 << UInt64(foundOrder)
        // Split down, returning upper halves.
        var current = foundOrder
        while current > order {
            current -= 1
            pushFree(zoneIndex: zoneIndex, index: index + (1 << UInt64(current)), order: current)
            statistics.freeFrames += 1 << UInt64(current)
        }
        markAllocated(zoneIndex: zoneIndex, index: index, count: frameCount)
        let blockFrames = UInt64(1) << UInt64(order)
        if blockFrames > frameCount {
            releaseRange(zoneIndex: zoneIndex, from: index + frameCount, count: blockFrames - frameCount)
        }
        statistics.allocationCount += 1
        statistics.peakFramesInUse = max(statistics.peakFramesInUse, statistics.framesInUse)
        return PhysicalAddress((zones[zoneIndex].firstFrame + index) * Self.frameSize)
    }

    /// Returns an allocation made by `allocate`, coalescing free buddies.
    public mutating func free(_ address: PhysicalAddress) throws(PageAllocatorError) {
        let (zoneIndex, index) = try locate(address)
        let state = zones[zoneIndex].state!
        guard address.isAligned(to: Self.frameSize), state[Int(index)] & 0xE0 == Self.allocatedHead else {
            throw .notAllocated(address: address.rawValue)
        }
        let count = UInt64(zones[zoneIndex].links![Int(index) * 2])
        let firstFrame = zones[zoneIndex].firstFrame
        Self.forEachPiece(from: firstFrame + index, count: count) { frame, _ in
            state[Int(frame - firstFrame)] = 0
        }
        releaseRange(zoneIndex: zoneIndex, from: index, count: count)
    }

    /// The frame count of the live allocation starting at `address`, or nil
    /// when no allocation starts there.
    public mutating func allocatedFrameCount(at address: PhysicalAddress) -> UInt64? {
        guard address.isAligned(to: Self.frameSize), let (zoneIndex, index) = try? locate(address),
            zones[zoneIndex].state![Int(index)] & 0xE0 == Self.allocatedHead
        else { return nil }
        return UInt64(zones[zoneIndex].links![Int(index) * 2])
    }

    /// Takes every free frame that overlaps `range` out of service for good
    /// (the image, loader structures, firmware tables). Frames already
    /// allocated are left alone. Returns how many frames were reserved.
    @discardableResult
    public mutating func reserve(_ range: PhysicalRange) -> UInt64 {
        guard !range.isEmpty else { return 0 }
        let firstFrame = range.start.rawValue / Self.frameSize
        let endFrame = (range.end.rawValue - 1) / Self.frameSize + 1
        var reserved: UInt64 = 0
        for zoneIndex in 0..<regionCount {
            let zone = zones[zoneIndex]
            var frame = max(firstFrame, zone.firstFrame)
            let stop = min(endFrame, zone.endFrame)
            while frame < stop {
                guard let (head, order) = freeBlock(containing: frame, zoneIndex: zoneIndex) else {
                    frame += 1
                    continue
                }
                removeFree(zoneIndex: zoneIndex, index: head - zone.firstFrame, order: order)
                statistics.freeFrames -= 1 << UInt64(order)
                reserved += carve(zoneIndex: zoneIndex, head: head, order: order, reservedStart: firstFrame, reservedEnd: endFrame)
                frame = head + (1 << UInt64(order))
            }
        }
        statistics.reservedFrames += reserved
        return reserved
    }

    // MARK: FrameAllocator

    public mutating func allocateFrame() -> PhysicalAddress? { allocate(order: 0) }

    public mutating func deallocateFrame(_ frame: PhysicalAddress) {
        do {
            try free(frame)
        } catch {
            preconditionFailure("page allocator: frame returned that was not allocated")
        }
    }

    // MARK: Internals

    static func ceilingLog2(_ value: UInt64) -> Int {
        value <= 1 ? 0 : 64 - (value - 1).leadingZeroBitCount
    }

    mutating func locate(_ address: PhysicalAddress) throws(PageAllocatorError) -> (Int, UInt64) {
        let frame = address.rawValue / Self.frameSize
        for zoneIndex in 0..<regionCount {
            let zone = zones[zoneIndex]
            if frame >= zone.firstFrame && frame < zone.endFrame { return (zoneIndex, frame - zone.firstFrame) }
        }
        throw .outsideManagedMemory(address: address.rawValue)
    }

    /// Calls `body(frame, order)` for the greedy decomposition of
    /// `[frame, frame + count)` into aligned power-of-two blocks.
    static func forEachPiece(from frame: UInt64, count: UInt64, _ body: (UInt64, Int) -> Void) {
        var current = frame
        let end = frame + count
        while current < end {
            let alignment = current == 0 ? Self.maximumOrder : min(current.trailingZeroBitCount, Self.maximumOrder)
            let fit = 63 - (end - current).leadingZeroBitCount
            let order = min(alignment, fit)
            body(current, order)
            current += 1 << UInt64(order)
        }
    }

    mutating func markAllocated(zoneIndex: Int, index: UInt64, count: UInt64) {
        let zone = zones[zoneIndex]
        var isFirst = true
        Self.forEachPiece(from: zone.firstFrame + index, count: count) { frame, order in
            zone.state![Int(frame - zone.firstFrame)] = (isFirst ? Self.allocatedHead : Self.allocatedPiece) | UInt8(order)
            isFirst = false
        }
        zone.links![Int(index) * 2] = UInt32(count)
    }

    /// Frees `[index, index + count)` of a zone as blocks, coalescing.
    mutating func releaseRange(zoneIndex: Int, from index: UInt64, count: UInt64) {
        let first = zones[zoneIndex].firstFrame
        var pieces = InlineArray<64, (UInt64, Int)>(repeating: (0, 0))
        var pieceCount = 0
        var current = first + index
        let end = first + index + count
        // Decompose in batches (at most 2 pieces per order boundary).
        while current < end {
            pieceCount = 0
            Self.forEachPiece(from: current, count: end - current) { frame, order in
                if pieceCount < 64 {
                    pieces[pieceCount] = (frame, order)
                    pieceCount += 1
                }
            }
            for pieceIndex in 0..<pieceCount {
                let (frame, order) = pieces[pieceIndex]
                insertFree(zoneIndex: zoneIndex, index: frame - first, order: order)
                statistics.freeFrames += 1 << UInt64(order)
                current = frame + (1 << UInt64(order))
            }
        }
    }

    /// Puts a block on its free list after merging it with free buddies.
    mutating func insertFree(zoneIndex: Int, index: UInt64, order: Int) {
        let zone = zones[zoneIndex]
        var index = index
        var order = order
        while order < Self.maximumOrder {
            let frame = zone.firstFrame + index
            let buddyFrame = frame ^ (1 << UInt64(order))
            guard buddyFrame >= zone.firstFrame, buddyFrame + (1 << UInt64(order)) <= zone.endFrame else { break }
            let buddy = buddyFrame - zone.firstFrame
            guard zone.state![Int(buddy)] == Self.freeHead | UInt8(order) else { break }
            removeFree(zoneIndex: zoneIndex, index: buddy, order: order)
            zone.state![Int(buddy)] = 0
            zone.state![Int(index)] = 0
            index = min(index, buddy)
            order += 1
        }
        pushFree(zoneIndex: zoneIndex, index: index, order: order)
    }

    mutating func pushFree(zoneIndex: Int, index: UInt64, order: Int) {
        let links = zones[zoneIndex].links!
        let head = zones[zoneIndex].freeHeads[order]
        zones[zoneIndex].state![Int(index)] = Self.freeHead | UInt8(order)
        links[Int(index) * 2] = head
        links[Int(index) * 2 + 1] = Self.noFrame
        if head != Self.noFrame { links[Int(head) * 2 + 1] = UInt32(index) }
        zones[zoneIndex].freeHeads[order] = UInt32(index)
    }

    mutating func removeFree(zoneIndex: Int, index: UInt64, order: Int) {
        let links = zones[zoneIndex].links!
        let next = links[Int(index) * 2]
        let previous = links[Int(index) * 2 + 1]
        if previous == Self.noFrame {
            zones[zoneIndex].freeHeads[order] = next
        } else {
            links[Int(previous) * 2] = next
        }
        if next != Self.noFrame { links[Int(next) * 2 + 1] = previous }
        zones[zoneIndex].state![Int(index)] = 0
    }

    /// The smallest free block of at least `order` whose first 2^order
    /// frames end at or below `limitFrame`: (zone, index, order).
    mutating func findFreeBlock(order: Int, limitFrame: UInt64) -> (Int, UInt64, Int)? {
        for candidate in order...Self.maximumOrder {
            for zoneIndex in 0..<regionCount {
                let zone = zones[zoneIndex]
                var index = zone.freeHeads[candidate]
                while index != Self.noFrame {
                    if zone.firstFrame + UInt64(index) + (1 << UInt64(order)) <= limitFrame {
                        return (zoneIndex, UInt64(index), candidate)
                    }
                    guard limitFrame != UInt64.max else { break }
                    index = zone.links![Int(index) * 2]
                }
            }
        }
        return nil
    }

    /// The free block containing `frame`: (head frame, order).
    mutating func freeBlock(containing frame: UInt64, zoneIndex: Int) -> (UInt64, Int)? {
        let zone = zones[zoneIndex]
        for order in 0...Self.maximumOrder {
            let head = frame & ~((1 << UInt64(order)) - 1)
            guard head >= zone.firstFrame else { return nil }
            if zone.state![Int(head - zone.firstFrame)] == Self.freeHead | UInt8(order) { return (head, order) }
        }
        return nil
    }

    /// Splits a block taken off the free lists: parts inside the reserved
    /// frames are dropped, parts outside go back. Returns frames dropped.
    mutating func carve(zoneIndex: Int, head: UInt64, order: Int, reservedStart: UInt64, reservedEnd: UInt64) -> UInt64 {
        let size = UInt64(1) << UInt64(order)
        let first = zones[zoneIndex].firstFrame
        if head >= reservedStart && head + size <= reservedEnd { return size }
        if head + size <= reservedStart || head >= reservedEnd {
            // A part outside: its buddy overlaps the reservation, so no merge.
            pushFree(zoneIndex: zoneIndex, index: head - first, order: order)
            statistics.freeFrames += size
            return 0
        }
        return carve(zoneIndex: zoneIndex, head: head, order: order - 1, reservedStart: reservedStart, reservedEnd: reservedEnd)
            + carve(zoneIndex: zoneIndex, head: head + size / 2, order: order - 1, reservedStart: reservedStart, reservedEnd: reservedEnd)
    }

    /// Calls `body(start, order)` for every free block, zone by zone and
    /// order by order.
    public func forEachFreeBlock(_ body: (PhysicalAddress, Int) -> Void) {
        for zoneIndex in 0..<regionCount {
            let zone = zones[zoneIndex]
            for order in 0...Self.maximumOrder {
                var index = zone.freeHeads[order]
                while index != Self.noFrame {
                    body(PhysicalAddress((zone.firstFrame + UInt64(index)) * Self.frameSize), order)
                    index = zone.links![Int(index) * 2]
                }
            }
        }
    }

    /// Checks the free lists against the state bytes and the counters:
    /// nil when consistent, else what is wrong. For tests and debugging.
    public func inconsistency() -> StaticString? {
        var free: UInt64 = 0
        for zoneIndex in 0..<regionCount {
            let zone = zones[zoneIndex]
            for order in 0...Self.maximumOrder {
                var index = zone.freeHeads[order]
                var previous = Self.noFrame
                var steps: UInt64 = 0
                while index != Self.noFrame {
                    steps += 1
                    if steps > zone.frameCount { return "free list has a cycle" }
                    let frame = zone.firstFrame + UInt64(index)
                    if zone.state![Int(index)] != Self.freeHead | UInt8(order) { return "free block state byte is wrong" }
                    if zone.links![Int(index) * 2 + 1] != previous { return "free list back link is wrong" }
                    if frame & ((1 << UInt64(order)) - 1) != 0 { return "free block is misaligned" }
                    if UInt64(index) + (1 << UInt64(order)) > zone.frameCount { return "free block leaves its zone" }
                    if order < Self.maximumOrder {
                        let buddyFrame = frame ^ (1 << UInt64(order))
                        if buddyFrame >= zone.firstFrame, buddyFrame + (1 << UInt64(order)) <= zone.endFrame,
                            zone.state![Int(buddyFrame - zone.firstFrame)] == Self.freeHead | UInt8(order)
                        {
                            return "two free buddies were not merged"
                        }
                    }
                    free += 1 << UInt64(order)
                    previous = index
                    index = zone.links![Int(index) * 2]
                }
            }
        }
        if free != statistics.freeFrames { return "free frame counter disagrees with the free lists" }
        return nil
    }
}
