// Tests of the ACPI and Intel MP table parsers on QEMU's real tables
// (Fixtures/ACPI, made by dump-qemu-tables.sh) and on malformed ones.
import Foundation
import Testing
@testable import BareMetalKit

/// Physical memory made of a few byte ranges; everything else is unreadable.
struct SparseMemory: PhysicalMemoryReader {
    var chunks: [(UInt64, [UInt8])] = []

    func loadByte(at address: UInt64) -> UInt8? {
        for (start, bytes) in chunks where address >= start && address - start < UInt64(bytes.count) {
            return bytes[Int(address - start)]
        }
        return nil
    }

    mutating func write(_ address: UInt64, _ bytes: [UInt8]) { chunks.insert((address, bytes), at: 0) }

    /// Changes one byte inside an existing chunk.
    mutating func poke(_ address: UInt64, _ value: UInt8) {
        for index in chunks.indices where address >= chunks[index].0 && address - chunks[index].0 < UInt64(chunks[index].1.count) {
            chunks[index].1[Int(address - chunks[index].0)] = value
            return
        }
    }
}

/// A fixture: "BMKMEM01", u64 RSDP address, then (u64 address, u32 length, bytes)*.
struct MemoryFixture {
    var memory = SparseMemory()
    var rsdpAddress: UInt64 = 0

    init(_ name: String) throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/ACPI/\(name).bin")
        let data = [UInt8](try Data(contentsOf: url))
        func load(_ offset: Int, _ count: Int) -> UInt64 {
            (0..<count).reduce(0) { $0 | UInt64(data[offset + $1]) << (8 * UInt64($1)) }
        }
        #expect(String(decoding: data[0..<8], as: UTF8.self) == "BMKMEM01")
        rsdpAddress = load(8, 8)
        var offset = 16
        while offset < data.count {
            let address = load(offset, 8)
            let length = Int(load(offset + 8, 4))
            memory.chunks.append((address, Array(data[offset + 12..<offset + 12 + length])))
            offset += 12 + length
        }
    }
}

/// Builds a table with a valid checksum at byte 9 (ACPI) from its bytes.
func acpiTable(_ signature: String, revision: UInt8 = 1, body: [UInt8]) -> [UInt8] {
    var bytes = Array(signature.utf8) + [0, 0, 0, 0, revision, 0] + Array("BMKOEM".utf8) + Array("BMKTABLE".utf8)
    bytes += [1, 0, 0, 0] + Array("BMK ".utf8) + [1, 0, 0, 0] + body
    let length = UInt32(bytes.count)
    for index in 0..<4 { bytes[4 + index] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(index))) }
    bytes[9] = 0 &- bytes.reduce(0, &+)
    return bytes
}

func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<T.bitWidth / 8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
}

/// An ACPI 2.0 RSDP at `address` pointing to an XSDT at `xsdt`.
func rsdp(xsdt: UInt64, rsdt: UInt32 = 0) -> [UInt8] {
    var bytes = Array("RSD PTR ".utf8) + [0] + Array("BMKOEM".utf8) + [2] + littleEndian(rsdt)
    bytes += littleEndian(UInt32(36)) + littleEndian(xsdt) + [0, 0, 0, 0]
    bytes[8] = 0 &- bytes[0..<20].reduce(0, &+)
    bytes[32] = 0 &- bytes.reduce(0, &+)
    return bytes
}

struct ACPITests {
    @Test(arguments: [1, 2, 4, 8])
    func qemuPCTables(cpus: Int) throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp\(cpus)")
        // SeaBIOS puts the RSDP in the BIOS area, where the search finds it.
        let found = try #require(ACPITables.findRSDP(memory: fixture.memory))
        #expect(found == fixture.rsdpAddress)
        let tables = try ACPITables(memory: fixture.memory, rsdpAddress: found)
        #expect(tables.rsdp.revision == 0)
        #expect(tables.rsdp.xsdtAddress == nil)
        #expect(tables.root.signature == .rsdt)
        #expect(tables.signatures == [.fadt, .madt, .hpet, TableSignature("WAET")])

        let madt = try #require(try tables.madt())
        #expect(madt.localAPICAddress == 0xFEE0_0000)
        #expect(madt.hasLegacyPICs)
        #expect(madt.processors.map(\.apicID) == (0..<cpus).map(UInt32.init))
        #expect(madt.processors.map(\.processorUID) == (0..<cpus).map(UInt32.init))
        #expect(madt.processors.allSatisfy { $0.isEnabled && !$0.isX2APIC })
        #expect(madt.ioAPICs == [MADTIOAPIC(ioAPICID: 0, address: 0xFEC0_0000, globalSystemInterruptBase: 0)])
        // IRQ 0 (the PIT) arrives at GSI 2; the PCI link IRQs are level, active high.
        #expect(madt.route(isaIRQ: 0) == ISAInterruptRoute(globalSystemInterrupt: 2, activeLow: false, levelTriggered: false))
        for irq: UInt8 in [5, 9, 10, 11] {
            #expect(madt.route(isaIRQ: irq) == ISAInterruptRoute(globalSystemInterrupt: UInt32(irq), activeLow: false, levelTriggered: true))
        }
        #expect(madt.route(isaIRQ: 4) == ISAInterruptRoute(globalSystemInterrupt: 4, activeLow: false, levelTriggered: false))
        #expect(madt.overrides.count == 5)
        #expect(madt.localNMIs.count == 1)
        #expect(madt.localNMIs[0].appliesToAllProcessors && madt.localNMIs[0].localInterrupt == 1)
        #expect(madt.nmiSources.isEmpty && madt.otherEntryCount == 0)
        let (ioAPIC, pin) = try #require(madt.ioAPIC(forGlobalSystemInterrupt: 9))
        #expect(ioAPIC.address == 0xFEC0_0000 && pin == 9)
        #expect(madt.ioAPIC(forGlobalSystemInterrupt: 24) == nil)

        let hpet = try #require(try tables.hpet())
        #expect(hpet.baseAddress == GenericAddress(addressSpaceID: 0, registerBitWidth: 0, registerBitOffset: 0, accessSize: 0, address: 0xFED0_0000))
        #expect(hpet.pciVendorID == 0x8086)
        #expect(hpet.comparatorCount == 3)
        #expect(hpet.hasSixtyFourBitCounter)
        #expect(hpet.isLegacyReplacementCapable)

        let fadt = try #require(try tables.fadt())
        #expect(fadt.revision == 1)
        #expect(fadt.century == 0x32)
        #expect(fadt.pmTimerBlock == 0x608)
        #expect(fadt.sciInterrupt == 9)
        #expect(!fadt.isHardwareReduced && !fadt.pmTimerIs32Bit && !fadt.cmosRTCNotPresent)
        #expect(try tables.pciConfigurationRegions() == nil)
    }

    @Test func disabledProcessorsAreListedButNotEnabled() throws {
        // -smp 2,maxcpus=4: QEMU lists the two hot-pluggable CPUs as disabled.
        let fixture = try MemoryFixture("qemu-7.2-pc-smp2-max4")
        let tables = try ACPITables(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress)
        let madt = try #require(try tables.madt())
        #expect(madt.processors.count == 4)
        #expect(madt.enabledProcessors.map(\.apicID) == [0, 1])
        #expect(madt.processors.filter { !$0.isEnabled }.map(\.apicID) == [2, 3])
    }

    @Test func q35HasPCIExpressConfigurationSpace() throws {
        let fixture = try MemoryFixture("qemu-7.2-q35-smp4")
        let tables = try ACPITables(memory: fixture.memory, rsdpAddress: try #require(ACPITables.findRSDP(memory: fixture.memory)))
        let regions = try #require(try tables.pciConfigurationRegions())
        #expect(regions == [PCIConfigurationRegion(baseAddress: 0xB000_0000, segmentGroup: 0, startBus: 0, endBus: 255)])
        #expect(regions[0].address(bus: 1, device: 2, function: 3) == 0xB010_0000 + (2 << 15) + (3 << 12))
        #expect(regions[0].address(bus: 0, device: 32, function: 0) == nil)
        #expect(try tables.madt()?.enabledProcessors.count == 4)
        let fadt = try #require(try tables.fadt())
        #expect(fadt.revision == 3)
        #expect(fadt.extendedPMTimerBlock == GenericAddress(addressSpaceID: 1, registerBitWidth: 32, registerBitOffset: 0, accessSize: 0, address: 0x608))
        #expect(fadt.has8042 && !fadt.vgaNotPresent && !fadt.msiNotSupported)
    }

    @Test(arguments: [1, 2, 4, 8])
    func qemuMicrovmTables(cpus: Int) throws {
        let fixture = try MemoryFixture("qemu-7.2-microvm-smp\(cpus)")
        let tables = try ACPITables(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress)
        #expect(tables.rsdp.revision == 2)
        #expect(tables.root.signature == .xsdt)
        #expect(tables.signatures == [.fadt, .madt])
        let madt = try #require(try tables.madt())
        #expect(madt.enabledProcessors.map(\.apicID) == (0..<cpus).map(UInt32.init))
        #expect(madt.ioAPICs == [
            MADTIOAPIC(ioAPICID: 0, address: 0xFEC0_0000, globalSystemInterruptBase: 0),
            MADTIOAPIC(ioAPICID: 1, address: 0xFEC1_0000, globalSystemInterruptBase: 24),
        ])
        #expect(madt.overrides.isEmpty)
        #expect(madt.ioAPIC(forGlobalSystemInterrupt: 30)?.1 == 6)
        let fadt = try #require(try tables.fadt())
        #expect(fadt.isHardwareReduced)
        #expect(fadt.pmTimerBlock == 0 && fadt.extendedPMTimerBlock == nil)
        #expect(try tables.hpet() == nil)
    }

    @Test func badChecksumsAndTruncationAreReported() throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp2")
        let good = try ACPITables(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress)
        let madtAddress = try #require(try good.header(.madt)).address

        var corrupt = fixture.memory
        corrupt.poke(madtAddress + 50, 0x77)
        let tables = try ACPITables(memory: corrupt, rsdpAddress: fixture.rsdpAddress)
        #expect(throws: FirmwareTableError.self) { try tables.madt() }
        do {
            _ = try tables.madt()
        } catch {
            guard case .badChecksum(let signature, let address, _) = error else { throw error }
            #expect(signature == TableSignature.madt.rawValue && address == madtAddress)
        }

        var badRSDP = fixture.memory
        badRSDP.poke(fixture.rsdpAddress + 12, 0)
        #expect(ACPITables.findRSDP(memory: badRSDP) == nil)
        #expect(throws: FirmwareTableError.self) { try ACPITables(memory: badRSDP, rsdpAddress: fixture.rsdpAddress) }

        // A table whose length runs past readable memory.
        var truncated = SparseMemory()
        let table = acpiTable("APIC", body: littleEndian(UInt32(0xFEE0_0000)) + littleEndian(UInt32(1)) + [0, 8, 0, 0, 1, 0, 0, 0])
        truncated.write(0x2000, Array(table.prefix(40)))
        truncated.write(0x1000, rsdp(xsdt: 0x3000))
        truncated.write(0x3000, acpiTable("XSDT", body: littleEndian(UInt64(0x2000))))
        let view = try ACPITables(memory: truncated, rsdpAddress: 0x1000)
        #expect(throws: FirmwareTableError.unreadable(address: 0x2028)) { try view.madt() }
        #expect(throws: FirmwareTableError.badSignature(expected: TableSignature.rsdt.rawValue,
            found: TableSignature.xsdt.rawValue, address: 0x3000)) {
            var memory = truncated
            memory.write(0x1000, Array("RSD PTR ".utf8) + [0] + Array("BMKOEM".utf8) + [0] + littleEndian(UInt32(0x3000)))
            memory.poke(0x1008, 0 &- memory.chunks[0].1.reduce(0, &+))
            _ = try ACPITables(memory: memory, rsdpAddress: 0x1000)
        }
    }

    /// A MADT with every entry type the parser knows, built by hand.
    func syntheticMADT(entries: [UInt8]) throws -> ACPITables<SparseMemory> {
        var memory = SparseMemory()
        memory.write(0x1000, rsdp(xsdt: 0x3000))
        memory.write(0x3000, acpiTable("XSDT", body: littleEndian(UInt64(0x4000))))
        memory.write(0x4000, acpiTable("APIC", revision: 5, body: littleEndian(UInt32(0xFEE0_0000)) + littleEndian(UInt32(0)) + entries))
        return try ACPITables(memory: memory, rsdpAddress: 0x1000)
    }

    @Test func x2APICEntriesOverridesAndNMIs() throws {
        var entries: [UInt8] = []
        entries += [0, 8, 0, 0] + littleEndian(UInt32(1))  // local APIC 0, enabled
        entries += [0, 8, 1, 1] + littleEndian(UInt32(2))  // local APIC 1, disabled but online-capable
        entries += [9, 16, 0, 0] + littleEndian(UInt32(300)) + littleEndian(UInt32(1)) + littleEndian(UInt32(77))  // x2APIC 300
        entries += [5, 12, 0, 0] + littleEndian(UInt64(0xFEE1_0000))  // local APIC address override
        entries += [2, 10, 0, 9] + littleEndian(UInt32(20)) + littleEndian(UInt16(0xF))  // IRQ 9 -> GSI 20, level, low
        entries += [3, 8] + littleEndian(UInt16(0x5)) + littleEndian(UInt32(23))  // NMI source GSI 23, edge, high
        entries += [0xA, 12] + littleEndian(UInt16(0)) + littleEndian(UInt32(0xFFFF_FFFF)) + [1, 0, 0, 0]  // x2APIC NMI LINT1
        entries += [0x7F, 4, 0, 0]  // a type this parser does not know
        let madt = try #require(try syntheticMADT(entries: entries).madt())
        #expect(madt.localAPICAddress == 0xFEE1_0000)
        #expect(!madt.hasLegacyPICs)
        #expect(madt.processors == [
            MADTProcessor(processorUID: 0, apicID: 0, isEnabled: true, isOnlineCapable: false, isX2APIC: false),
            MADTProcessor(processorUID: 1, apicID: 1, isEnabled: false, isOnlineCapable: true, isX2APIC: false),
            MADTProcessor(processorUID: 77, apicID: 300, isEnabled: true, isOnlineCapable: false, isX2APIC: true),
        ])
        #expect(madt.route(isaIRQ: 9) == ISAInterruptRoute(globalSystemInterrupt: 20, activeLow: true, levelTriggered: true))
        #expect(madt.nmiSources == [MADTNMISource(globalSystemInterrupt: 23, polarity: .activeHigh, trigger: .edge)])
        #expect(madt.localNMIs == [MADTLocalNMI(processorUID: 0xFFFF_FFFF, polarity: .busDefault, trigger: .busDefault, localInterrupt: 1)])
        #expect(madt.localNMIs[0].appliesToAllProcessors)
        #expect(madt.otherEntryCount == 1)
    }

    @Test func malformedMADTEntriesAreRejected() throws {
        // Length 0 would loop forever; a short x2APIC entry; an entry past the end.
        let cases: [([UInt8], FirmwareTableError)] = [
            ([0, 0, 0, 0, 0, 0, 0, 0], .badEntry(signature: TableSignature.madt.rawValue, offset: 44, type: 0, length: 0)),
            ([9, 8, 0, 0, 0, 0, 0, 0], .badEntry(signature: TableSignature.madt.rawValue, offset: 44, type: 9, length: 8)),
            ([0, 8, 0, 0, 1, 0, 0, 0, 1, 12, 0, 0], .badEntry(signature: TableSignature.madt.rawValue, offset: 52, type: 1, length: 12)),
            ([0, 8, 0, 0, 1, 0, 0, 0, 1], .badEntry(signature: TableSignature.madt.rawValue, offset: 52, type: 1, length: 0)),
        ]
        for (entries, expected) in cases {
            let tables = try syntheticMADT(entries: entries)
            #expect(throws: expected) { try tables.madt() }
        }
    }
}

struct MPTableTests {
    @Test(arguments: [1, 2, 4, 8])
    func seaBIOSTable(cpus: Int) throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp\(cpus)")
        let address = try #require(MPTable.findFloatingPointer(memory: fixture.memory))
        #expect(address == 0xF_5BA0)
        let pointer = try MPTable.floatingPointer(memory: fixture.memory, address: address)
        #expect(pointer.specificationRevision == 4)
        #expect(pointer.defaultConfiguration == 0)
        let configuration = try #require(try MPTable.configuration(memory: fixture.memory, floatingPointer: pointer))
        #expect(configuration.localAPICAddress == 0xFEE0_0000)
        #expect(configuration.declaredEntryCount == 18)
        // SeaBIOS (QEMU 7.2) lists only the bootstrap processor here,
        // whatever -smp says: the MADT is the source for the others.
        #expect(configuration.processors.count == 1)
        #expect(configuration.processors[0].isBootstrapProcessor && configuration.processors[0].isEnabled)
        #expect(configuration.buses.map(\.busID) == [0, 1])
        #expect(configuration.buses[0].isPCI && configuration.buses[1].isISA)
        #expect(configuration.ioAPICs == [MPIOAPIC(ioAPICID: 0, version: 0x11, isEnabled: true, address: 0xFEC0_0000)])
        let timer = try #require(configuration.route(isaIRQ: 0))
        #expect(timer.destinationInput == 2)
        #expect(configuration.route(isaIRQ: 1)?.destinationInput == 1)
        #expect(configuration.processors.count + configuration.buses.count + configuration.ioAPICs.count
            + configuration.ioInterrupts.count + configuration.localInterrupts.count == 18)
        #expect(configuration.localInterrupts.count == 2)
    }

    @Test(arguments: [1, 2, 4, 8])
    func qbootTable(cpus: Int) throws {
        let fixture = try MemoryFixture("qemu-7.2-microvm-smp\(cpus)")
        // qboot puts it at the top of base memory (0x9FC00), not in the BIOS area.
        let address = try #require(MPTable.findFloatingPointer(memory: fixture.memory))
        #expect(address == 0x9_FC00)
        let pointer = try MPTable.floatingPointer(memory: fixture.memory, address: address)
        let configuration = try #require(try MPTable.configuration(memory: fixture.memory, floatingPointer: pointer))
        #expect(configuration.declaredEntryCount == 0)  // qboot's quirk; entries are walked by length
        #expect(configuration.processors.map(\.localAPICID) == (0..<cpus).map(UInt8.init))
        #expect(configuration.processors.filter(\.isBootstrapProcessor).map(\.localAPICID) == [0])
        #expect(configuration.processors.allSatisfy { $0.isEnabled })
        #expect(configuration.buses.count == 1 && configuration.buses[0].isISA)
    }

    @Test func malformedMPTablesAreRejected() throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp1")
        var memory = fixture.memory
        memory.poke(0xF_5BA0 + 10, 0x55)  // checksum byte
        #expect(MPTable.findFloatingPointer(memory: memory) == nil)
        #expect(throws: FirmwareTableError.self) { try MPTable.floatingPointer(memory: memory, address: 0xF_5BA0) }
        var table = fixture.memory
        let pointer = try MPTable.floatingPointer(memory: table, address: 0xF_5BA0)
        table.poke(UInt64(pointer.configurationTableAddress) + 60, 0x99)
        #expect(throws: FirmwareTableError.self) { try MPTable.configuration(memory: table, floatingPointer: pointer) }
        // An unknown entry type.
        var unknown = fixture.memory
        let base = UInt64(pointer.configurationTableAddress)
        unknown.poke(base + 44, 7)
        unknown.poke(base + 7, unknown.loadByte(at: base + 7)! &- 7)
        #expect(throws: FirmwareTableError.badEntry(signature: 0x504D_4350, offset: 44, type: 7, length: 8)) {
            try MPTable.configuration(memory: unknown, floatingPointer: pointer)
        }
    }
}
