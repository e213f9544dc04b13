// DMAArena: DMA memory for host tests, at "physical" addresses unrelated to
// its pointers, so device models must translate and drivers cannot cheat.
import BareMetalKit

/// A bump arena whose physical base is far from its pointers. Device models
/// reach it only through `pointer(physical:length:)`, which refuses any
/// range outside allocated memory.
final class DMAArena {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    let physicalBase: UInt64 = 0x40_0000_0000
    var next = 0
    var allocations: [Int: Int] = [:]  // offset -> byte count
    var storeBarriers = 0
    var fullBarriers = 0

    init(capacity: Int = 8 << 20) {
        self.capacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0xA5, count: capacity)
    }

    deinit { base.deallocate() }

    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        let start = (next + alignment - 1) & ~(alignment - 1)
        guard start + byteCount <= capacity else { return nil }
        next = start + byteCount
        allocations[start] = byteCount
        (base + start).initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        return base + start
    }

    /// A caller buffer in the arena (for block requests), filled with `fill`.
    func buffer(count: Int, fill: UInt8 = 0) -> UnsafeMutableRawBufferPointer {
        let memory = allocate(byteCount: count, alignment: 16)!
        memory.initializeMemory(as: UInt8.self, repeating: fill, count: count)
        return UnsafeMutableRawBufferPointer(start: memory, count: count)
    }

    func physical(_ pointer: UnsafeRawPointer) -> UInt64 {
        let offset = UnsafeRawPointer(base).distance(to: pointer)
        precondition(offset >= 0 && offset < capacity, "pointer outside the DMA arena")
        return physicalBase + UInt64(offset)
    }

    /// The memory at a device-supplied physical range, or nil when any byte
    /// lies outside allocated arena memory.
    func pointer(physical: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard physical >= physicalBase else { return nil }
        let offset = Int(physical - physicalBase)
        guard length >= 0, offset + length <= next else { return nil }
        for (start, count) in allocations where offset >= start && offset + length <= start + count {
            return base + offset
        }
        return nil
    }
}

/// The arena as the drivers' `DMAMemory`.
struct TestDMA: DMAMemory {
    let arena: DMAArena
    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        arena.allocate(byteCount: byteCount, alignment: alignment)
    }
    func deallocate(_ pointer: UnsafeMutableRawPointer) {}
    func physicalAddress(of pointer: UnsafeRawPointer) -> UInt64 { arena.physical(pointer) }
    func storeBarrier() { arena.storeBarriers += 1 }
    func loadBarrier() {}
    func fullBarrier() { arena.fullBarriers += 1 }
}

/// A deterministic generator (SplitMix64) for seeded test data.
struct SeededGenerator: RandomNumberGenerator {
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

/// Memory-mapped I/O for tests: a table of regions, each served by a model.
protocol MMIOHandler: AnyObject {
    func read(_ offset: Int, width: Int) -> UInt64
    func write(_ offset: Int, width: Int, _ value: UInt64)
}

final class MMIOBus {
    var regions: [(base: UInt64, length: UInt64, handler: MMIOHandler)] = []
    var unmappedAccesses: [UInt64] = []

    func add(base: UInt64, length: UInt64, _ handler: MMIOHandler) { regions.append((base, length, handler)) }

    func region(_ address: UInt64) -> (MMIOHandler, Int)? {
        for region in regions where address >= region.base && address < region.base + region.length {
            return (region.handler, Int(address - region.base))
        }
        unmappedAccesses.append(address)
        return nil
    }
}

/// A window of the bus at `base`, as a `RegisterBlock`.
struct BusWindow: RegisterBlock {
    let bus: MMIOBus
    let base: UInt64
    func read(_ offset: Int, _ width: Int) -> UInt64 {
        guard let (handler, at) = bus.region(base + UInt64(offset)) else { return ~0 }
        return handler.read(at, width: width)
    }
    func write(_ offset: Int, _ width: Int, _ value: UInt64) {
        guard let (handler, at) = bus.region(base + UInt64(offset)) else { return }
        handler.write(at, width: width, value)
    }
    func read8(at offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read(offset, 1)) }
    func read16(at offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read(offset, 2)) }
    func read32(at offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: read(offset, 4)) }
    func write8(at offset: Int, _ value: UInt8) { write(offset, 1, UInt64(value)) }
    func write16(at offset: Int, _ value: UInt16) { write(offset, 2, UInt64(value)) }
    func write32(at offset: Int, _ value: UInt32) { write(offset, 4, UInt64(value)) }
}

struct BusMapper: MemoryMappedIO {
    let bus: MMIOBus
    func map(physicalAddress: UInt64, length: UInt64) -> BusWindow { BusWindow(bus: bus, base: physicalAddress) }
}

/// I/O ports served by the same bus (port numbers as addresses).
struct BusPorts: PortIOSpace {
    let bus: MMIOBus
    func ports(at port: UInt16, length: Int) -> BusWindow { BusWindow(bus: bus, base: UInt64(port)) }
}
