// Tests of the size-class heap over the buddy page allocator: a reference
// model of live blocks with contents, alignment, double frees, page return.
import Testing
@testable import BareMetalKit

struct SizeClassHeapTests {
    let arena = PhysicalArena(base: 0x200_0000, byteCount: 32 << 20)

    func makeHeap() throws -> SizeClassHeap<PhysicalPageSource<OffsetFrameMapping>> {
        SizeClassHeap(pages: PhysicalPageSource(allocator: try arena.pageAllocator(), mapping: arena.mapping))
    }

    @Test func classesGrowAndAreAligned() {
        var sizes: [Int] = []
        for index in 0..<24 { sizes.append(SizeClassHeap<PhysicalPageSource<OffsetFrameMapping>>.classSize(index)) }
        #expect(sizes == [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
            640, 768, 896, 1024, 1280, 1536, 1792, 2048])
    }

    @Test func smallAndLargeAllocationsWithAlignment() throws {
        var heap = try makeHeap()
        let a = try requireValue(heap.allocate(size: 1))
        #expect(Int(bitPattern: a) % 16 == 0)
        #expect(try heap.usableSize(a) == 16)
        let b = try requireValue(heap.allocate(size: 100, alignment: 64))
        #expect(Int(bitPattern: b) % 64 == 0)
        #expect(try heap.usableSize(b) == 128)
        let c = try requireValue(heap.allocate(size: 24, alignment: 1024))
        #expect(Int(bitPattern: c) % 1024 == 0)
        let page = try requireValue(heap.allocate(size: 10, alignment: 4096))
        #expect(Int(bitPattern: page) % 4096 == 0)
        #expect(try heap.usableSize(page) == 4096)
        let big = try requireValue(heap.allocate(size: 65 * 1024, alignment: 64 * 1024))
        #expect(Int(bitPattern: big) % (64 * 1024) == 0)
        #expect(try heap.usableSize(big) == 68 * 1024)
        #expect(heap.statistics.bytesInUse == 16 + 128 + 1024 + 4096 + 68 * 1024)
        for pointer in [a, b, c, page, big] { try heap.free(pointer) }
        #expect(heap.statistics.bytesInUse == 0)
        #expect(heap.statistics.peakBytesInUse == 16 + 128 + 1024 + 4096 + 68 * 1024)
    }

    @Test func badFreesAreCaught() throws {
        var heap = try makeHeap()
        let small = try requireValue(heap.allocate(size: 40))
        let other = try requireValue(heap.allocate(size: 40))
        try heap.free(small)
        #expect(throws: SizeClassHeapError.doubleFree(address: UInt(bitPattern: small))) { try heap.free(small) }
        #expect(throws: SizeClassHeapError.notAnAllocation(address: UInt(bitPattern: other + 8))) {
            try heap.free(other + 8)
        }
        let large = try requireValue(heap.allocate(size: 10000))
        try heap.free(large)
        #expect(throws: SizeClassHeapError.notAnAllocation(address: UInt(bitPattern: large))) { try heap.free(large) }
        #expect(throws: SizeClassHeapError.notAnAllocation(address: UInt(bitPattern: large + 4096))) {
            try heap.usableSize(large + 4096)
        }
        try heap.free(nil)
    }

    @Test func reallocateKeepsContents() throws {
        var heap = try makeHeap()
        let first = try requireValue(heap.allocate(size: 20))
        for index in 0..<20 { first.storeBytes(of: UInt8(index), toByteOffset: index, as: UInt8.self) }
        let grown = try requireValue(try heap.reallocate(first, size: 5000))
        for index in 0..<20 { #expect(grown.load(fromByteOffset: index, as: UInt8.self) == UInt8(index)) }
        #expect(throws: SizeClassHeapError.doubleFree(address: UInt(bitPattern: first))) { try heap.free(first) }
        let shrunk = try requireValue(try heap.reallocate(grown, size: 3))
        #expect(shrunk.load(fromByteOffset: 2, as: UInt8.self) == 2)
        #expect(try heap.usableSize(shrunk) == 16)
    }

    @Test func exhaustionFailsCleanlyAndEverythingComesBack() throws {
        var heap = try makeHeap()
        let before = heap.pages.allocator.statistics.freeFrames
        var blocks: [UnsafeMutableRawPointer] = []
        while let block = heap.allocate(size: 1 << 20) { blocks.append(block) }
        #expect(blocks.count >= 30)
        #expect(heap.statistics.failedAllocationCount == 1)
        var smalls: [UnsafeMutableRawPointer] = []
        while let block = heap.allocate(size: 700) { smalls.append(block) }
        #expect(heap.allocate(size: 1) == nil || heap.pages.allocator.statistics.freeFrames < 4)
        for block in blocks + smalls { try heap.free(block) }
        // Everything but at most one cached empty slab per class is back.
        #expect(heap.pages.allocator.statistics.freeFrames + 24 * 4 >= before)
        #expect(heap.statistics.bytesInUse == 0)
        #expect(heap.pages.allocator.inconsistency() == nil)
    }

    /// Random malloc/free/realloc against a model: no overlap, alignment,
    /// usable sizes, contents preserved, counters exact.
    @Test(arguments: [21, 22, 23] as [UInt64])
    func randomizedAgainstReferenceModel(seed: UInt64) throws {
        var heap = try makeHeap()
        var generator = SplitMixRandom(seed: seed)
        struct Block { var pointer: UnsafeMutableRawPointer; var size: Int; var usable: Int; var fill: UInt8 }
        var live: [Block] = []
        var modelInUse = 0
        // The first and last 256 bytes of each block keep their fill.
        func intact(_ pointer: UnsafeMutableRawPointer, _ size: Int, _ fill: UInt8) -> Bool {
            let head = UnsafeRawBufferPointer(start: pointer, count: min(size, 256))
            let tail = UnsafeRawBufferPointer(start: pointer + max(0, size - 256), count: min(size, 256))
            return head.allSatisfy { $0 == fill } && tail.allSatisfy { $0 == fill }
        }
        func check(_ block: Block) { #expect(intact(block.pointer, block.size, block.fill)) }
        for step in 0..<2000 {
            // Allocate more than free while under 12 MiB, else only free.
            let roll = modelInUse > 12 << 20 ? 60 + generator.next() % 40 : generator.next() % 100
            if live.isEmpty || roll < 55 {
                let size: Int
                switch generator.next() % 5 {
                case 0, 1: size = Int(generator.next() % 129)
                case 2: size = Int(generator.next() % 2049)
                case 3: size = Int(generator.next() % 20000)
                default: size = Int(generator.next() % 300_000)
                }
                let alignment = 1 << Int(generator.next() % 13)
                guard let pointer = heap.allocate(size: size, alignment: alignment) else {
                    Issue.record("allocation of \(size) failed with \(modelInUse) bytes live")
                    continue
                }
                #expect(Int(bitPattern: pointer) % max(alignment, 16) == 0)
                let usable = try heap.usableSize(pointer)
                #expect(usable >= max(size, 1))
                let fill = UInt8(truncatingIfNeeded: step)
                pointer.initializeMemory(as: UInt8.self, repeating: fill, count: size)
                live.append(Block(pointer: pointer, size: size, usable: usable, fill: fill))
                modelInUse += usable
            } else if roll < 90 {
                let block = live.remove(at: Int(generator.next() % UInt64(live.count)))
                check(block)
                try heap.free(block.pointer)
                modelInUse -= block.usable
            } else {
                let index = Int(generator.next() % UInt64(live.count))
                var block = live[index]
                check(block)
                let size = Int(generator.next() % 10000)
                let pointer = try requireValue(try heap.reallocate(block.pointer, size: size))
                let kept = min(size, block.size)
                #expect(intact(pointer, kept, block.fill))
                pointer.initializeMemory(as: UInt8.self, repeating: block.fill, count: size)
                modelInUse -= block.usable
                block.pointer = pointer
                block.size = size
                block.usable = try heap.usableSize(pointer)
                modelInUse += block.usable
                live[index] = block
            }
            #expect(heap.statistics.bytesInUse == modelInUse)
        }
        // No two live blocks overlap.
        let sorted = live.sorted { $0.pointer < $1.pointer }
        for (left, right) in zip(sorted, sorted.dropFirst()) { #expect(left.pointer + left.usable <= right.pointer) }
        for block in live {
            check(block)
            try heap.free(block.pointer)
        }
        #expect(heap.statistics.bytesInUse == 0)
        #expect(heap.pages.allocator.inconsistency() == nil)
        #expect(heap.statistics.pageBytes <= 24 * SizeClassHeap<PhysicalPageSource<OffsetFrameMapping>>.slabSize)
    }
}
