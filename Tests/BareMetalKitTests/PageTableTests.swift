// Tests of the 4-level page-table builder: real tables in heap memory,
// walked back and checked bit by bit (Intel SDM vol. 3 §4.5).
import Testing
@testable import BareMetalKit

struct PageTableTests {
    /// 16 MiB of "physical memory" at 16 MiB: frames for the tables.
    let arena = PhysicalArena(base: 0x100_0000, byteCount: 16 << 20)

    func makeMapper() throws -> (PageTableMapper<OffsetFrameMapping>, PhysicalPageAllocator) {
        var frames = try arena.pageAllocator()
        let mapper = try PageTableMapper(mapping: arena.mapping, allocator: &frames)
        return (mapper, frames)
    }

    func leafBits(_ mapper: PageTableMapper<OffsetFrameMapping>, _ address: UInt64) throws -> UInt64 {
        try #require(mapper.translate(VirtualAddress(address))).leaf.rawValue
    }

    /// The layout the guest uses: text, rodata, data, a stack with a guard
    /// page, RAM in 2 MiB pages, the LAPIC and IOAPIC uncached.
    @Test func kernelLayoutHasTheRightPermissions() throws {
        var (mapper, frames) = try makeMapper()
        let image = KernelImageLayout(
            text: PhysicalRange(start: PhysicalAddress(0x10_0000), end: PhysicalAddress(0x12_3456)),
            readOnlyData: PhysicalRange(start: PhysicalAddress(0x12_4000), end: PhysicalAddress(0x13_0010)),
            data: PhysicalRange(start: PhysicalAddress(0x13_1000), end: PhysicalAddress(0x20_0000)))
        try mapper.mapKernelImage(image, allocator: &frames)
        // RAM [0, 64 MiB) identity-mapped RW+NX around the image; the null page stays out.
        try mapper.identityMap(
            PhysicalRange(start: 0, byteCount: 64 << 20), attributes: .data, excluding: image.whole,
            allocator: &frames)
        try mapper.identityMap(
            PhysicalRange(start: 0xFEE0_0000, byteCount: 0x1000), attributes: .device, excluding: nil,
            allocator: &frames)
        try mapper.identityMap(
            PhysicalRange(start: 0xFEC0_0000, byteCount: 0x1000), attributes: .device, excluding: nil,
            allocator: &frames)
        // A 64 KiB stack at 36 MiB with its guard page below.
        let stackBottom: UInt64 = 0x240_0000
        let removed = try mapper.unmap(range: VirtualAddress(stackBottom - 0x1000), byteCount: 0x1000, allocator: &frames)
        #expect(removed == 0x1000)

        // Null page: unmapped; the next page: RAM.
        #expect(mapper.translate(VirtualAddress(0)) == nil)
        #expect(mapper.translate(VirtualAddress(0xFFF)) == nil)
        #expect(try #require(mapper.translate(VirtualAddress(0x1000))).attributes == .data)

        // Text: R+X, not writable: P=1, R/W=0, XD=0.
        let text = try leafBits(mapper, 0x10_0000)
        #expect(text & 1 == 1)
        #expect(text & (1 << 1) == 0)
        #expect(text & (1 << 63) == 0)
        #expect(text & (1 << 7) == 0)
        #expect(try #require(mapper.translate(VirtualAddress(0x12_3FFF))).attributes == .text)
        // Rodata: R, XD set.
        let rodata = try leafBits(mapper, 0x12_4000)
        #expect(rodata & (1 << 1) == 0)
        #expect(rodata & (1 << 63) != 0)
        #expect(try #require(mapper.translate(VirtualAddress(0x13_0FFF))).attributes == .readOnly)
        // Data and bss: RW + XD.
        let data = try leafBits(mapper, 0x13_1000)
        #expect(data & (1 << 1) != 0)
        #expect(data & (1 << 63) != 0)
        #expect(try #require(mapper.translate(VirtualAddress(0x1F_FFFF))).attributes == .data)
        // RAM above the image: 2 MiB pages, RW + XD, PS set.
        let ram = try #require(mapper.translate(VirtualAddress(0x60_0000 + 0x1234)))
        #expect(ram.pageSize == .large)
        #expect(ram.physical == PhysicalAddress(0x60_1234))
        #expect(ram.leaf.rawValue & (1 << 7) != 0)
        #expect(ram.attributes == .data)
        // No page anywhere is both writable and executable.
        var pages = 0
        mapper.forEachMapping { page in
            pages += 1
            #expect(!(page.attributes.contains(.writable) && page.attributes.contains(.executable)))
        }
        #expect(pages > 0)
        // MMIO: PCD and PWT (UC with the power-up PAT), RW, XD.
        let lapic = try leafBits(mapper, 0xFEE0_0000)
        #expect(lapic & (1 << 4) != 0)
        #expect(lapic & (1 << 3) != 0)
        #expect(lapic & (1 << 63) != 0)
        #expect(try #require(mapper.translate(VirtualAddress(0xFEC0_0010))).attributes == .device)
        #expect(mapper.translate(VirtualAddress(0xFEC0_1000)) == nil)
        // The guard page: unmapped; the stack above and the page below it: mapped.
        #expect(mapper.translate(VirtualAddress(stackBottom - 0x1000)) == nil)
        #expect(mapper.translate(VirtualAddress(stackBottom - 1)) == nil)
        let stack = try #require(mapper.translate(VirtualAddress(stackBottom)))
        #expect(stack.pageSize == .large)  // 36 MiB is 2 MiB-aligned: the split page is the one below
        #expect(stack.physical == PhysicalAddress(stackBottom))
        #expect(stack.attributes == .data)
        #expect(try #require(mapper.translate(VirtualAddress(stackBottom - 0x1001))).physical == PhysicalAddress(stackBottom - 0x1001))
        // The rest of the split 2 MiB page is still there.
        #expect(try #require(mapper.translate(VirtualAddress(0x220_0000))).pageSize == .small)
        #expect(try #require(mapper.translate(VirtualAddress(0x23F_E000))).attributes == .data)
    }

    @Test func intermediateEntriesAllowEverythingAndLeavesDecide() throws {
        var (mapper, frames) = try makeMapper()
        try mapper.map(VirtualAddress(0x4000_0000), to: PhysicalAddress(0x5000), attributes: .readOnly, allocator: &frames)
        let pml4 = arena.mapping.pointer(to: mapper.root).load(fromByteOffset: 0, as: UInt64.self)
        #expect(pml4 & 0xFFF == 0x3)  // P + R/W, supervisor, no XD
        #expect(pml4 >> 63 == 0)
        let pdpt = arena.mapping.pointer(to: PageTableEntry(rawValue: pml4).address).load(fromByteOffset: 8, as: UInt64.self)
        #expect(pdpt & 0xFFF == 0x3)
        let leaf = try leafBits(mapper, 0x4000_0000)
        #expect(leaf == 0x8000_0000_0000_5001)
    }

    @Test func tablesAreAllocatedOnlyWhenNeeded() throws {
        var (mapper, frames) = try makeMapper()
        let before = frames.statistics.framesInUse
        try mapper.map(range: VirtualAddress(0x20_0000), to: PhysicalAddress(0x20_0000), byteCount: 8 << 20,
            attributes: .data, allocator: &frames)
        // PDPT + PD: four 2 MiB leaves in one page directory.
        #expect(frames.statistics.framesInUse - before == 2)
        try mapper.map(range: VirtualAddress(0x100_0000), to: PhysicalAddress(0x100_0000), byteCount: 0x3000,
            attributes: .data, allocator: &frames)
        #expect(frames.statistics.framesInUse - before == 3)
    }

    @Test func hugePagesMapAGibibyte() throws {
        var (mapper, frames) = try makeMapper()
        try mapper.map(range: VirtualAddress(0xFFFF_8000_0000_0000), to: PhysicalAddress(0), byteCount: 1 << 30,
            attributes: [.writable, .global], allowHugePages: true, allocator: &frames)
        let translation = try #require(mapper.translate(VirtualAddress(0xFFFF_8000_1234_5678)))
        #expect(translation.pageSize == .huge)
        #expect(translation.physical == PhysicalAddress(0x1234_5678))
        #expect(translation.attributes == [.writable, .global])
        #expect(translation.leaf.rawValue & (1 << 8) != 0)
        var seen: [VirtualAddress] = []
        mapper.forEachMapping { seen.append($0.pageVirtual) }
        #expect(seen == [VirtualAddress(0xFFFF_8000_0000_0000)])
        // Unmapping one page in the middle splits twice (1 GiB -> 2 MiB -> 4 KiB).
        try mapper.unmap(range: VirtualAddress(0xFFFF_8000_0040_3000), byteCount: 0x1000, allocator: &frames)
        #expect(mapper.translate(VirtualAddress(0xFFFF_8000_0040_3000)) == nil)
        #expect(try #require(mapper.translate(VirtualAddress(0xFFFF_8000_0040_4000))).pageSize == .small)
        #expect(try #require(mapper.translate(VirtualAddress(0xFFFF_8000_0060_0000))).pageSize == .large)
        #expect(try #require(mapper.translate(VirtualAddress(0xFFFF_8000_3FE0_0000))).physical == PhysicalAddress(0x3FE0_0000))
        var count = 0
        mapper.forEachMapping { _ in count += 1 }
        #expect(count == 511 + 511)
    }

    @Test func errorsAreReported() throws {
        var (mapper, frames) = try makeMapper()
        try mapper.map(VirtualAddress(0x20_0000), to: PhysicalAddress(0x20_0000), size: .large, attributes: .data, allocator: &frames)
        #expect(throws: PageTableError.alreadyMapped(virtual: 0x20_1000)) {
            try mapper.map(VirtualAddress(0x20_1000), to: PhysicalAddress(0x1000), attributes: .data, allocator: &frames)
        }
        try mapper.map(VirtualAddress(0x40_1000), to: PhysicalAddress(0x1000), attributes: .data, allocator: &frames)
        #expect(throws: PageTableError.alreadyMapped(virtual: 0x40_0000)) {
            try mapper.map(VirtualAddress(0x40_0000), to: PhysicalAddress(0x20_0000), size: .large, attributes: .data, allocator: &frames)
        }
        #expect(throws: PageTableError.misaligned(virtual: 0x60_1000, physical: 0x20_0000, pageSize: 0x20_0000)) {
            try mapper.map(VirtualAddress(0x60_1000), to: PhysicalAddress(0x20_0000), size: .large, attributes: .data, allocator: &frames)
        }
        #expect(throws: PageTableError.notCanonical(virtual: 0x0000_8000_0000_0000)) {
            try mapper.map(VirtualAddress(0x0000_8000_0000_0000), to: PhysicalAddress(0), attributes: .data, allocator: &frames)
        }
        #expect(throws: PageTableError.notCanonical(virtual: 0x0000_8000_0000_0FFF)) {
            try mapper.map(range: VirtualAddress(0x0000_7FFF_FFFF_F000), to: PhysicalAddress(0), byteCount: 0x2000,
                attributes: .data, allocator: &frames)
        }
        #expect(throws: PageTableError.physicalAddressTooWide(physical: 1 << 52)) {
            try mapper.map(VirtualAddress(0x80_0000), to: PhysicalAddress(1 << 52), attributes: .data, allocator: &frames)
        }
        #expect(throws: PageTableError.notMapped(virtual: 0x90_0000)) {
            try mapper.protect(range: VirtualAddress(0x90_0000), byteCount: 0x1000, attributes: .data, allocator: &frames)
        }
        // Running out of frames while a table is needed.
        while frames.allocateFrame() != nil {}
        #expect(throws: PageTableError.outOfFrames(virtual: 0x7000_0000_0000)) {
            try mapper.map(VirtualAddress(0x7000_0000_0000), to: PhysicalAddress(0), attributes: .data, allocator: &frames)
        }
    }

    @Test func protectChangesAttributesAndSplitsAtTheEdges() throws {
        var (mapper, frames) = try makeMapper()
        try mapper.map(range: VirtualAddress(0x20_0000), to: PhysicalAddress(0x20_0000), byteCount: 6 << 20,
            attributes: .data, allocator: &frames)
        try mapper.protect(range: VirtualAddress(0x3F_F000), byteCount: 0x20_2000, attributes: .readOnly, allocator: &frames)
        #expect(try #require(mapper.translate(VirtualAddress(0x3F_E000))).attributes == .data)
        #expect(try #require(mapper.translate(VirtualAddress(0x3F_F000))).attributes == .readOnly)
        let middle = try #require(mapper.translate(VirtualAddress(0x40_0000)))
        #expect(middle.pageSize == .large)  // wholly inside: kept whole
        #expect(middle.attributes == .readOnly)
        #expect(try #require(mapper.translate(VirtualAddress(0x60_0000))).attributes == .readOnly)
        #expect(try #require(mapper.translate(VirtualAddress(0x60_1000))).attributes == .data)
        #expect(try #require(mapper.translate(VirtualAddress(0x60_1000))).physical == PhysicalAddress(0x60_1000))
    }

    /// Random 4 KiB and 2 MiB maps and unmaps against a dictionary model.
    @Test(arguments: [11, 12, 13] as [UInt64])
    func randomizedAgainstReferenceModel(seed: UInt64) throws {
        var generator = SplitMixRandom(seed: seed)
        var (mapper, frames) = try makeMapper()
        var model: [UInt64: (UInt64, MemoryAttributes)] = [:]  // 4 KiB virtual page -> physical, attributes
        let choices: [MemoryAttributes] = [.text, .readOnly, .data, .device, [.writable, .global]]
        for _ in 0..<600 {
            let page = (generator.next() % 4096) * 0x1000 + (generator.next() % 2 == 0 ? 0 : 0xFFFF_8000_0000_0000)
            let attributes = choices[Int(generator.next() % UInt64(choices.count))]
            switch generator.next() % 3 {
            case 0:
                let physical = (generator.next() % 0x10_0000) * 0x1000
                if model[page] == nil {
                    try mapper.map(VirtualAddress(page), to: PhysicalAddress(physical), attributes: attributes, allocator: &frames)
                    model[page] = (physical, attributes)
                } else {
                    #expect(throws: PageTableError.alreadyMapped(virtual: page)) {
                        try mapper.map(VirtualAddress(page), to: PhysicalAddress(physical), attributes: attributes, allocator: &frames)
                    }
                }
            case 1:
                let large = page & ~0x1F_FFFF
                let physical = (generator.next() % 0x800) * 0x20_0000
                let free = (0..<512).allSatisfy { model[large + UInt64($0) * 0x1000] == nil }
                if free {
                    // Only where no table exists yet can a 2 MiB leaf go.
                    do {
                        try mapper.map(VirtualAddress(large), to: PhysicalAddress(physical), size: .large,
                            attributes: attributes, allocator: &frames)
                        for index in 0..<512 as Range<UInt64> { model[large + index * 0x1000] = (physical + index * 0x1000, attributes) }
                    } catch PageTableError.alreadyMapped {
                    }
                }
            default:
                let count = 1 + generator.next() % 600
                let removed = try mapper.unmap(range: VirtualAddress(page), byteCount: count * 0x1000, allocator: &frames)
                var expected: UInt64 = 0
                for index in 0..<count where model.removeValue(forKey: page + index * 0x1000) != nil { expected += 0x1000 }
                #expect(removed == expected)
            }
        }
        for (page, (physical, attributes)) in model {
            let translation = try #require(mapper.translate(VirtualAddress(page + 0x123)))
            #expect(translation.physical == PhysicalAddress(physical + 0x123))
            #expect(translation.attributes == attributes)
        }
        var mapped = 0
        mapper.forEachMapping { mapped += Int($0.pageSize.byteCount / 0x1000) }
        #expect(mapped == model.count)
    }
}
