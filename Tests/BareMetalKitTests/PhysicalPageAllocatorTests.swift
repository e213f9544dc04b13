// Tests of the buddy page allocator: against a reference model with seeded
// random operations, coalescing, fragmentation, alignment and exhaustion.
import Testing
@testable import BareMetalKit

struct PhysicalPageAllocatorTests {
    /// Sorted free blocks, for comparing pool states.
    func freeBlocks(_ allocator: PhysicalPageAllocator) -> [UInt64] {
        var blocks: [UInt64] = []
        allocator.forEachFreeBlock { start, order in blocks.append(start.rawValue << 8 | UInt64(order)) }
        return blocks.sorted()
    }

    @Test func freshRegionIsMaximallyCoalesced() throws {
        // A 4 GiB region at 4 GiB: four 1 GiB blocks, metadata outside.
        let frames: UInt64 = 1 << 20
        let metadata = MetadataBuffer(frameCount: frames)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 1 << 32, byteCount: 1 << 32), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        #expect(allocator.statistics.totalFrames == frames)
        #expect(allocator.statistics.freeFrames == frames)
        #expect(freeBlocks(allocator).map { $0 & 0xFF } == [18, 18, 18, 18])
        #expect(allocator.inconsistency() == nil)
    }

    @Test func unalignedRegionIsCutIntoAlignedBlocks() throws {
        // [0x13000, 0x450000): blocks must be aligned to their own size in
        // physical terms, not relative to the region.
        let metadata = MetadataBuffer(frameCount: 0x450 - 0x13)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: PhysicalAddress(0x12345), end: PhysicalAddress(0x450FFF)),
            metadata: metadata.pointer, metadataByteCount: metadata.byteCount)
        #expect(allocator.statistics.totalFrames == 0x450 - 0x13)
        var covered: UInt64 = 0
        allocator.forEachFreeBlock { start, order in
            #expect(start.isAligned(to: 4096 << UInt64(order)))
            #expect(start.rawValue >= 0x13000 && start.rawValue + (4096 << UInt64(order)) <= 0x450000)
            covered += 1 << UInt64(order)
        }
        #expect(covered == 0x450 - 0x13)
        let large = try requireValue(allocator.allocate(order: 9))
        #expect(large == PhysicalAddress(0x20_0000))
        #expect(allocator.allocate(order: 9) == nil)
        #expect(allocator.inconsistency() == nil)
    }

    @Test func frameZeroIsNeverManaged() throws {
        let metadata = MetadataBuffer(frameCount: 16)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(PhysicalRange(start: 0, byteCount: 16 * 4096), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        #expect(allocator.statistics.totalFrames == 15)
        while let frame = allocator.allocateFrame() { #expect(frame != PhysicalAddress(0)) }
    }

    @Test func exhaustionReturnsNilAndFreeingAllRestoresThePool() throws {
        let arena = PhysicalArena(base: 0x10_0000, byteCount: 1 << 20)
        var allocator = try arena.pageAllocator()
        let initial = freeBlocks(allocator)
        let total = allocator.statistics.totalFrames
        #expect(allocator.statistics.metadataFrames == 1)
        var frames: [PhysicalAddress] = []
        while let frame = allocator.allocateFrame() { frames.append(frame) }
        #expect(UInt64(frames.count) == total)
        #expect(Set(frames).count == frames.count)
        #expect(allocator.statistics.freeFrames == 0)
        #expect(allocator.statistics.failedAllocationCount == 1)
        #expect(allocator.allocate(order: 0) == nil)
        #expect(allocator.statistics.failedAllocationCount == 2)
        // The metadata frame is never handed out.
        #expect(!frames.contains(PhysicalAddress(0x10_0000)))
        var generator = SplitMixRandom(seed: 7)
        frames.shuffle(using: &generator)
        for frame in frames { try allocator.free(frame) }
        #expect(freeBlocks(allocator) == initial)
        #expect(allocator.statistics.peakFramesInUse == total)
        #expect(allocator.inconsistency() == nil)
    }

    @Test func fragmentationBlocksLargerOrdersUntilBuddiesReturn() throws {
        let metadata = MetadataBuffer(frameCount: 64)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 0x40_0000, byteCount: 64 * 4096), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        var frames: [PhysicalAddress] = []
        for _ in 0..<64 { frames.append(try requireValue(allocator.allocate(order: 0))) }
        let sorted = frames.sorted()
        for (index, frame) in sorted.enumerated() where index % 2 == 0 { try allocator.free(frame) }
        #expect(allocator.statistics.freeFrames == 32)
        #expect(allocator.allocate(order: 1) == nil)
        for (index, frame) in sorted.enumerated() where index % 2 == 1 { try allocator.free(frame) }
        #expect(freeBlocks(allocator) == [0x40_0000 << 8 | 6])
        #expect(allocator.allocate(order: 6) == PhysicalAddress(0x40_0000))
    }

    @Test func exactRunsReturnTheirTailAndFreeWhole() throws {
        let metadata = MetadataBuffer(frameCount: 1024)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 0x100_0000, byteCount: 1024 * 4096), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        let run = try requireValue(allocator.allocate(frameCount: 17))
        #expect(run.isAligned(to: 16 * 4096))
        #expect(allocator.statistics.framesInUse == 17)
        #expect(allocator.allocatedFrameCount(at: run) == 17)
        // The middle of a run is not an allocation.
        #expect(allocator.allocatedFrameCount(at: run.advanced(by: 16 * 4096)) == nil)
        #expect(throws: PageAllocatorError.notAllocated(address: run.rawValue + 16 * 4096)) {
            try allocator.free(run.advanced(by: 16 * 4096))
        }
        let aligned = try requireValue(allocator.allocate(frameCount: 3, alignmentFrames: 64))
        #expect(aligned.isAligned(to: 64 * 4096))
        #expect(allocator.statistics.framesInUse == 20)
        try allocator.free(run)
        try allocator.free(aligned)
        #expect(allocator.statistics.framesInUse == 0)
        #expect(freeBlocks(allocator) == [0x100_0000 << 8 | 10])
        #expect(allocator.inconsistency() == nil)
    }

    @Test func badFreesAreReported() throws {
        let metadata = MetadataBuffer(frameCount: 16)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 0x20_0000, byteCount: 16 * 4096), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        let frame = try requireValue(allocator.allocate(order: 2))
        try allocator.free(frame)
        #expect(throws: PageAllocatorError.notAllocated(address: frame.rawValue)) { try allocator.free(frame) }
        #expect(throws: PageAllocatorError.outsideManagedMemory(address: 0x1000)) {
            try allocator.free(PhysicalAddress(0x1000))
        }
        let again = try requireValue(allocator.allocate(order: 0))
        #expect(throws: PageAllocatorError.notAllocated(address: again.rawValue + 8)) {
            try allocator.free(again.advanced(by: 8))
        }
        #expect(allocator.inconsistency() == nil)
    }

    @Test func regionsMustNotOverlapAndAreLimited() throws {
        let metadata = MetadataBuffer(frameCount: 16)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 0x20_0000, byteCount: 16 * 4096), metadata: metadata.pointer,
            metadataByteCount: metadata.byteCount)
        #expect(throws: PageAllocatorError.regionOverlaps(start: 0x20_F000, end: 0x21_1000)) {
            try allocator.addRegion(
                PhysicalRange(start: 0x20_F000, byteCount: 2 * 4096), metadata: metadata.pointer,
                metadataByteCount: metadata.byteCount)
        }
        #expect(throws: PageAllocatorError.metadataTooSmall(needed: 9 * 32, given: 9 * 16)) {
            try allocator.addRegion(
                PhysicalRange(start: 0x80_0000, byteCount: 32 * 4096), metadata: metadata.pointer,
                metadataByteCount: metadata.byteCount)
        }
        #expect(throws: PageAllocatorError.regionTooSmall(start: 0x1_0001, byteCount: 0xFFF)) {
            try allocator.addRegion(
                PhysicalRange(start: 0x1_0001, byteCount: 0xFFF), metadata: metadata.pointer,
                metadataByteCount: metadata.byteCount)
        }
        let buffers = (0..<32).map { _ in MetadataBuffer(frameCount: 1) }
        var many = PhysicalPageAllocator()
        for (index, buffer) in buffers.enumerated() {
            try many.addRegion(
                PhysicalRange(start: UInt64(index + 1) * 0x10_0000, byteCount: 4096), metadata: buffer.pointer,
                metadataByteCount: buffer.byteCount)
        }
        #expect(throws: PageAllocatorError.tooManyRegions(limit: 32)) {
            try many.addRegion(
                PhysicalRange(start: 0x1000_0000, byteCount: 4096), metadata: buffers[0].pointer,
                metadataByteCount: buffers[0].byteCount)
        }
        #expect(many.statistics.totalFrames == 32)
        // Regions of one frame each have no buddies: order 1 must fail.
        #expect(many.allocate(order: 1) == nil)
        #expect(many.allocate(order: 0) != nil)
    }

    @Test func reservedRangesAreNeverHandedOut() throws {
        let arena = PhysicalArena(base: 0x10_0000, byteCount: 2 << 20)
        var allocator = try arena.pageAllocator()
        let before = allocator.statistics.freeFrames
        // The "image": [0x100000 + 0x3000, 0x180000) minus the metadata frame.
        let reserved = allocator.reserve(PhysicalRange(start: PhysicalAddress(0x10_3800), end: PhysicalAddress(0x18_0000)))
        #expect(reserved == (0x18_0000 - 0x10_3000) / 4096)
        #expect(allocator.statistics.reservedFrames == reserved)
        #expect(allocator.statistics.freeFrames == before - reserved)
        #expect(allocator.reserve(PhysicalRange(start: PhysicalAddress(0x10_3000), end: PhysicalAddress(0x10_4000))) == 0)
        #expect(allocator.inconsistency() == nil)
        while let frame = allocator.allocateFrame() {
            #expect(frame.rawValue < 0x10_3000 || frame.rawValue >= 0x18_0000)
        }
        #expect(allocator.statistics.framesInUse == before - reserved)
    }

    @Test func limitKeepsAllocationsLow() throws {
        let low = MetadataBuffer(frameCount: 0x9F - 1)
        let high = MetadataBuffer(frameCount: 0x7F00)
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: 0x1000, byteCount: 0x9E000), metadata: low.pointer, metadataByteCount: low.byteCount)
        try allocator.addRegion(
            PhysicalRange(start: 0x10_0000, byteCount: 0x7F00 * 4096), metadata: high.pointer,
            metadataByteCount: high.byteCount)
        let trampoline = try requireValue(allocator.allocate(frameCount: 1, limit: PhysicalAddress(0x10_0000)))
        #expect(trampoline.rawValue + 4096 <= 0x10_0000)
        let dma = try requireValue(allocator.allocate(frameCount: 16, limit: PhysicalAddress(0x20_0000)))
        #expect(dma.rawValue + 16 * 4096 <= 0x20_0000)
        #expect(allocator.allocate(frameCount: 512, limit: PhysicalAddress(0x10_0000)) == nil)
        #expect(allocator.inconsistency() == nil)
    }

    /// Random allocations and frees against a model of which frames are
    /// owned, checked for overlap, alignment, bounds and counters.
    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func randomizedAgainstReferenceModel(seed: UInt64) throws {
        var generator = SplitMixRandom(seed: seed)
        let regions: [(UInt64, UInt64)] = [(0x1000, 0x9F000), (0x10_0000, 0x3F0_0000), (0x1_0000_0000, 0x20_0000)]
        let buffers = regions.map { MetadataBuffer(frameCount: $0.1 / 4096) }
        var allocator = PhysicalPageAllocator()
        for (region, buffer) in zip(regions, buffers) {
            try allocator.addRegion(
                PhysicalRange(start: region.0, byteCount: region.1), metadata: buffer.pointer,
                metadataByteCount: buffer.byteCount)
        }
        let initial = freeBlocks(allocator)
        // Frame ownership: frames below 64 MiB, then the 2 MiB at 4 GiB.
        var owned = [Bool](repeating: false, count: 0x4000 + 0x200)
        func slot(_ frame: UInt64) -> Int { frame >= 0x10_0000 ? Int(0x4000 + frame - 0x10_0000) : Int(frame) }
        var live: [(PhysicalAddress, UInt64)] = []
        var modelInUse: UInt64 = 0
        var modelPeak: UInt64 = 0
        var refusals = 0
        for step in 0..<3000 {
            if live.isEmpty || generator.next() % 100 < 55 {
                let count: UInt64
                var alignment: UInt64 = 1
                switch generator.next() % 4 {
                case 0: count = 1 << (generator.next() % 7)
                case 1: count = 1 + generator.next() % 300
                case 2:
                    count = 1 + generator.next() % 20
                    alignment = 1 << (generator.next() % 10)
                default: count = 1 << (8 + generator.next() % 5)
                }
                guard let start = allocator.allocate(frameCount: count, alignmentFrames: alignment) else {
                    // Refusal is only allowed when no free block is big enough.
                    let needed = max(
                        PhysicalPageAllocator.ceilingLog2(count), PhysicalPageAllocator.ceilingLog2(alignment))
                    var largest = -1
                    allocator.forEachFreeBlock { _, order in largest = max(largest, order) }
                    #expect(largest < needed)
                    refusals += 1
                    continue
                }
                let blockAlignment = UInt64(1) << UInt64(max(
                    PhysicalPageAllocator.ceilingLog2(alignment), 63 - count.leadingZeroBitCount))
                #expect(start.isAligned(to: blockAlignment * 4096))
                let inRegion = regions.contains { start.rawValue >= $0.0 && start.rawValue + count * 4096 <= $0.0 + $0.1 }
                #expect(inRegion)
                let first = start.rawValue / 4096
                var overlaps = false
                for frame in first..<first + count {
                    overlaps = overlaps || owned[slot(frame)]
                    owned[slot(frame)] = true
                }
                #expect(!overlaps, "frames handed out twice")
                live.append((start, count))
                modelInUse += count
                modelPeak = max(modelPeak, modelInUse)
            } else {
                let index = Int(generator.next() % UInt64(live.count))
                let (start, count) = live.remove(at: index)
                #expect(allocator.allocatedFrameCount(at: start) == count)
                try allocator.free(start)
                let first = start.rawValue / 4096
                for frame in first..<first + count { owned[slot(frame)] = false }
                modelInUse -= count
            }
            #expect(allocator.statistics.framesInUse == modelInUse)
            if step % 500 == 0 { #expect(allocator.inconsistency() == nil) }
        }
        #expect(allocator.statistics.peakFramesInUse == modelPeak)
        #expect(allocator.statistics.failedAllocationCount == UInt64(refusals))
        for (start, _) in live { try allocator.free(start) }
        #expect(allocator.statistics.framesInUse == 0)
        #expect(freeBlocks(allocator) == initial)
        #expect(allocator.inconsistency() == nil)
    }
}
