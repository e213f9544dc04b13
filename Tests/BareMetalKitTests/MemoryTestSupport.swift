// MemoryTestSupport: seeded randomness and heap-backed "physical memory" for
// the memory, page-table and heap tests.
import BareMetalKit
import Testing

/// SplitMix64: deterministic, seedable.
struct SplitMixRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A heap buffer standing in for physical memory `[base, base + byteCount)`.
final class PhysicalArena {
    let base: PhysicalAddress
    let byteCount: Int
    let pointer: UnsafeMutableRawPointer

    init(base: UInt64, byteCount: Int) {
        self.base = PhysicalAddress(base)
        self.byteCount = byteCount
        // 2 MiB alignment keeps pointer alignment equal to physical alignment.
        pointer = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 0x20_0000)
        pointer.initializeMemory(as: UInt8.self, repeating: 0xA5, count: byteCount)
    }

    deinit { pointer.deallocate() }

    var mapping: OffsetFrameMapping { OffsetFrameMapping(base: base, pointer: pointer) }
    var range: PhysicalRange { PhysicalRange(start: base.rawValue, byteCount: UInt64(byteCount)) }

    /// A page allocator managing the whole arena, metadata carved from it.
    func pageAllocator() throws -> PhysicalPageAllocator {
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(range, carvingMetadataThrough: mapping)
        return allocator
    }
}

/// Metadata storage for page-allocator regions whose frames are never touched.
final class MetadataBuffer {
    let pointer: UnsafeMutableRawPointer
    let byteCount: Int
    init(frameCount: UInt64) {
        byteCount = PhysicalPageAllocator.metadataByteCount(frameCount: frameCount)
        pointer = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
    }
    deinit { pointer.deallocate() }
}

/// `#require` for expressions that mutate (the macro cannot take those).
func requireValue<T>(_ value: T?, sourceLocation: SourceLocation = #_sourceLocation) throws -> T {
    try #require(value, sourceLocation: sourceLocation)
}
