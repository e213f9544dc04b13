// The first guest heap: random allocation traces checked against a
// reference model (no overlap, alignment, contents intact, statistics).
import Testing

@testable import BareMetalKit

final class HeapRegion {
    let memory: UnsafeMutableRawPointer
    let length: Int
    init(length: Int) {
        self.length = length
        memory = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
    }
    deinit { memory.deallocate() }
}

@Test func randomTracesKeepAllocationsDisjointAlignedAndIntact() throws {
    let region = HeapRegion(length: 8 << 20)
    var heap = try #require(HeapAllocator(start: region.memory, length: region.length))
    var generator = SplitMixRandom(seed: 42)  // MemoryTestSupport.swift
    struct Live { var pointer: UnsafeMutableRawPointer; var size: Int; var fill: UInt8 }
    var live: [Live] = []
    for step in 0..<20_000 {
        if live.isEmpty || Int.random(in: 0..<100, using: &generator) < 55 {
            let size = Bool.random(using: &generator) ? Int.random(in: 0...300, using: &generator) : Int.random(in: 0...40_000, using: &generator)
            let alignment = 1 << Int.random(in: 3...13, using: &generator)
            guard let pointer = heap.allocate(size: size, alignment: alignment) else { continue }
            #expect(UInt(bitPattern: pointer) % UInt(alignment) == 0)
            #expect(try heap.usableSize(pointer) >= size)
            #expect(heap.pageRange.contains(UInt(bitPattern: pointer)))
            let fill = UInt8(truncatingIfNeeded: step)
            pointer.initializeMemory(as: UInt8.self, repeating: fill, count: size)
            live.append(Live(pointer: pointer, size: size, fill: fill))
        } else {
            let victim = live.remove(at: Int.random(in: 0..<live.count, using: &generator))
            // Its bytes must be exactly as written: nobody else wrote over them.
            let bytes = UnsafeRawBufferPointer(start: victim.pointer, count: victim.size)
            #expect(bytes.allSatisfy { $0 == victim.fill })
            try heap.free(victim.pointer)
        }
    }
    // No two live allocations overlap.
    let sorted = live.sorted { UInt(bitPattern: $0.pointer) < UInt(bitPattern: $1.pointer) }
    for (a, b) in zip(sorted, sorted.dropFirst()) where a.size > 0 {
        #expect(UInt(bitPattern: a.pointer) + UInt(a.size) <= UInt(bitPattern: b.pointer))
    }
    for allocation in live { try heap.free(allocation.pointer) }
    #expect(heap.statistics.bytesInUse == 0)
    #expect(heap.statistics.peakBytesInUse > 0)
}

@Test func exhaustionReturnsNilAndFreeingMakesRoomAgain() throws {
    let region = HeapRegion(length: 1 << 20)
    var heap = try #require(HeapAllocator(start: region.memory, length: region.length))
    var blocks: [UnsafeMutableRawPointer] = []
    while let block = heap.allocate(size: 64 * 1024) { blocks.append(block) }
    #expect(!blocks.isEmpty)
    #expect(heap.allocate(size: 64 * 1024) == nil)
    #expect(heap.statistics.failedAllocationCount == 2)  // the loop's last try and this one
    try heap.free(blocks.removeLast())
    #expect(heap.allocate(size: 64 * 1024) != nil)
}

@Test func badFreesAreReported() throws {
    let region = HeapRegion(length: 1 << 20)
    var heap = try #require(HeapAllocator(start: region.memory, length: region.length))
    let smallBlock = heap.allocate(size: 32)
    let largeBlock = heap.allocate(size: 10_000)
    let small = try #require(smallBlock)
    let large = try #require(largeBlock)
    var outside = 0
    #expect(throws: HeapError.pointerOutsideHeap(UInt(bitPattern: withUnsafeMutablePointer(to: &outside) { UnsafeMutableRawPointer($0) }))) {
        try withUnsafeMutablePointer(to: &outside) { try heap.free(UnsafeMutableRawPointer($0)) }
    }
    #expect(throws: HeapError.notAnAllocation(UInt(bitPattern: large + 8))) { try heap.free(large + 8) }
    #expect(throws: HeapError.notAnAllocation(UInt(bitPattern: small + 8))) { try heap.free(small + 8) }
    try heap.free(small)
    #expect(throws: HeapError.doubleFree(UInt(bitPattern: small))) { try heap.free(small) }
    try heap.free(large)
    #expect(throws: HeapError.notAnAllocation(UInt(bitPattern: large))) { try heap.free(large) }
    #expect(heap.allocate(size: 8, alignment: 3) == nil)
}

@Test func regionsTooSmallForBookkeepingAreRefused() {
    let region = HeapRegion(length: 4096)
    #expect(HeapAllocator(start: region.memory, length: 4096) == nil)
    #expect(HeapAllocator(start: region.memory, length: 0) == nil)
}
