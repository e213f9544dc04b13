// Boot-information parsing: multiboot 1 and PVH structures laid out in a
// simulated physical memory, well-formed and broken.
import Testing

@testable import BareMetalKit

/// Sparse physical memory: bytes written by the test, nothing else readable.
struct SimulatedMemory: PhysicalMemoryReader {
    var bytes: [UInt64: UInt8] = [:]

    func loadByte(at address: UInt64) -> UInt8? { bytes[address] }

    mutating func store32(_ address: UInt64, _ value: UInt32) {
        for index in 0..<4 { bytes[address + UInt64(index)] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
    }

    mutating func store64(_ address: UInt64, _ value: UInt64) {
        store32(address, UInt32(truncatingIfNeeded: value))
        store32(address + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    mutating func storeString(_ address: UInt64, _ string: String) {
        for (index, byte) in string.utf8.enumerated() { bytes[address + UInt64(index)] = byte }
        bytes[address + UInt64(string.utf8.count)] = 0
    }
}

/// A multiboot information structure at 0x9000 as QEMU's loader builds it.
func multibootMemory(commandLine: String = "{\"argv\":[\"a\"]}") -> SimulatedMemory {
    var memory = SimulatedMemory()
    let info: UInt64 = 0x9000
    for offset in stride(from: UInt64(0), to: 116, by: 4) { memory.store32(info + offset, 0) }
    memory.store32(info, (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6))  // mem, cmdline, mods, mmap
    memory.store32(info + 4, 639)
    memory.store32(info + 8, 130_048)
    memory.store32(info + 16, 0xA000)
    memory.storeString(0xA000, commandLine)
    memory.store32(info + 20, 1)  // one module
    memory.store32(info + 24, 0xB000)
    memory.store32(0xB000, 0x20_0000)
    memory.store32(0xB004, 0x20_1000)
    memory.store32(0xB008, 0xB100)
    memory.storeString(0xB100, "disk.img")
    // Memory map: 2 entries of size 20 (+4 for the size field).
    memory.store32(info + 44, 48)
    memory.store32(info + 48, 0xC000)
    memory.store32(0xC000, 20)
    memory.store64(0xC004, 0)
    memory.store64(0xC00C, 0x9_FC00)
    memory.store32(0xC014, 1)
    memory.store32(0xC018, 20)
    memory.store64(0xC01C, 0x10_0000)
    memory.store64(0xC024, 0x7F0_0000)
    memory.store32(0xC02C, 1)
    return memory
}

/// A version-1 hvm_start_info at 0x6000.
func pvhMemory(entries: UInt32 = 2) -> SimulatedMemory {
    var memory = SimulatedMemory()
    let info: UInt64 = 0x6000
    memory.store32(info, 0x336E_C578)
    memory.store32(info + 4, 1)
    memory.store32(info + 8, 0)
    memory.store32(info + 12, 0)
    memory.store64(info + 16, 0)
    memory.store64(info + 24, 0x7000)
    memory.storeString(0x7000, "{\"hostname\":\"pvh\"} virtio_mmio.device=512@0xfeb00e00:12")
    memory.store64(info + 32, 0xF_5000)
    memory.store64(info + 40, 0x8000)
    memory.store32(info + 48, entries)
    memory.store32(info + 52, 0)
    memory.store64(0x8000, 0)
    memory.store64(0x8008, 0x9_FC00)
    memory.store32(0x8010, 1)
    memory.store64(0x8018, 0x10_0000)
    memory.store64(0x8020, 0x3F0_0000)
    memory.store32(0x8028, 1)
    return memory
}

@Test func multibootInformationIsParsed() throws {
    let parser = try BootInfoParser(memory: multibootMemory(), protocolNumber: 1, infoAddress: 0x9000)
    let info = try parser.parse()
    #expect(info.bootProtocol == .multiboot)
    #expect(String(decoding: info.commandLine, as: UTF8.self) == "{\"argv\":[\"a\"]}")
    #expect(info.memoryRegions == [
        MemoryRegion(start: 0, length: 0x9_FC00, kind: .usable),
        MemoryRegion(start: 0x10_0000, length: 0x7F0_0000, kind: .usable),
    ])
    #expect(info.modules == [BootModule(start: 0x20_0000, length: 0x1000, commandLine: Array("disk.img".utf8))])
    #expect(info.rsdpAddress == nil)
    // The highest structure is the module ending at 0x201000.
    #expect(try parser.highestReferencedAddress() == 0x20_1000)
}

@Test func pvhStartInfoIsParsed() throws {
    let parser = try BootInfoParser(memory: pvhMemory(), protocolNumber: 2, infoAddress: 0x6000)
    let info = try parser.parse()
    #expect(info.bootProtocol == .pvh)
    #expect(info.rsdpAddress == 0xF_5000)
    #expect(info.memoryRegions.count == 2)
    #expect(info.memoryRegions[1] == MemoryRegion(start: 0x10_0000, length: 0x3F0_0000, kind: .usable))
    #expect(try parser.highestReferencedAddress() == 0x8000 + 2 * 24)
}

@Test func unknownLoaderAndBadMagicAreRejected() {
    #expect(throws: BootInfoError.unknownLoader(protocolNumber: 0)) {
        try BootInfoParser(memory: pvhMemory(), protocolNumber: 0, infoAddress: 0x6000)
    }
    var memory = pvhMemory()
    memory.store32(0x6000, 0xDEAD_BEEF)
    #expect(throws: BootInfoError.badPVHMagic(found: 0xDEAD_BEEF)) {
        try BootInfoParser(memory: memory, protocolNumber: 2, infoAddress: 0x6000)
    }
}

@Test func truncatedStructuresAreRejected() throws {
    // The memory map claims a third entry that is not there.
    let parser = try BootInfoParser(memory: pvhMemory(entries: 3), protocolNumber: 2, infoAddress: 0x6000)
    #expect(throws: BootInfoError.unreadable(address: 0x8030)) { try parser.parse() }

    // A multiboot map entry whose size field is too small to hold an entry.
    var memory = multibootMemory()
    memory.store32(0xC018, 8)
    let broken = try BootInfoParser(memory: memory, protocolNumber: 1, infoAddress: 0x9000)
    #expect(throws: BootInfoError.entrySizeTooSmall(size: 8)) { try broken.parse() }
}

@Test func hostileCountsAndStringsAreBounded() throws {
    var memory = pvhMemory()
    memory.store32(0x6000 + 48, 1_000_000)
    let parser = try BootInfoParser(memory: memory, protocolNumber: 2, infoAddress: 0x6000)
    #expect(throws: BootInfoError.tooManyEntries(what: "PVH memory map", count: 1_000_000, limit: 1024)) { try parser.parse() }

    var long = multibootMemory()
    long.store32(0x9000 + 16, 0x2_0000)
    long.storeString(0x2_0000, String(repeating: "x", count: 5000))
    let longParser = try BootInfoParser(memory: long, protocolNumber: 1, infoAddress: 0x9000)
    #expect(throws: BootInfoError.stringTooLong(address: 0x2_0000, limit: 4096)) { try longParser.parse() }
}

@Test func regionsThatWrapAroundAreRejected() throws {
    var memory = pvhMemory()
    memory.store64(0x8018, 0xFFFF_FFFF_FFFF_F000)
    memory.store64(0x8020, 0x2000)
    let parser = try BootInfoParser(memory: memory, protocolNumber: 2, infoAddress: 0x6000)
    #expect(throws: BootInfoError.regionOverflows(start: 0xFFFF_FFFF_FFFF_F000, length: 0x2000)) { try parser.parse() }
}

@Test func multibootWithoutMapFallsBackToMemoryFields() throws {
    var memory = multibootMemory()
    memory.store32(0x9000, 1)  // only mem_lower/mem_upper
    let info = try BootInfoParser(memory: memory, protocolNumber: 1, infoAddress: 0x9000).parse()
    #expect(info.memoryRegions == [
        MemoryRegion(start: 0, length: 639 * 1024, kind: .usable),
        MemoryRegion(start: 0x10_0000, length: 130_048 * 1024, kind: .usable),
    ])
    memory.store32(0x9000, 0)
    #expect(throws: BootInfoError.noMemoryMap) {
        try BootInfoParser(memory: memory, protocolNumber: 1, infoAddress: 0x9000).parse()
    }
}
