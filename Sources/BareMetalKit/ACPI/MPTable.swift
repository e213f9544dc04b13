// MPTable: the Intel MultiProcessor Specification 1.4 tables, the fallback
// when there is no ACPI MADT: the floating pointer structure (§4.1) and the
// configuration table with its base entries (§4.2, §4.3: processor, bus,
// I/O APIC, I/O and local interrupt assignment).

/// The MP floating pointer structure ("_MP_", 16 bytes).
public struct MPFloatingPointer: Equatable, Sendable {
    public var address: UInt64
    /// Physical address of the configuration table (0: a default configuration).
    public var configurationTableAddress: UInt32
    /// 1 for version 1.1, 4 for version 1.4.
    public var specificationRevision: UInt8
    /// Feature byte 1: a default configuration number, 0 when a table exists.
    public var defaultConfiguration: UInt8
    /// Feature byte 2 bit 7: the IMCR is present (PIC mode at reset).
    public var imcrPresent: Bool
}

/// A processor entry (type 0).
public struct MPProcessor: Equatable, Sendable {
    public var localAPICID: UInt8
    public var localAPICVersion: UInt8
    /// CPU flags bit 0 EN.
    public var isEnabled: Bool
    /// CPU flags bit 1 BP: the bootstrap processor.
    public var isBootstrapProcessor: Bool
    public var signature: UInt32
    public var featureFlags: UInt32
}

/// A bus entry (type 1).
public struct MPBus: Equatable, Sendable {
    public var busID: UInt8
    /// Six-character type string padded with spaces: "ISA   ", "PCI   ".
    public var busType: InlineArray<6, UInt8>

    public var isISA: Bool { busType[0] == 0x49 && busType[1] == 0x53 && busType[2] == 0x41 && busType[3] == 0x20 }
    public var isPCI: Bool { busType[0] == 0x50 && busType[1] == 0x43 && busType[2] == 0x49 && busType[3] == 0x20 }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.busID == rhs.busID && (0..<6).allSatisfy { lhs.busType[$0] == rhs.busType[$0] }
    }
}

/// An I/O APIC entry (type 2).
public struct MPIOAPIC: Equatable, Sendable {
    public var ioAPICID: UInt8
    public var version: UInt8
    public var isEnabled: Bool
    public var address: UInt32
}

/// An I/O (type 3) or local (type 4) interrupt assignment.
public struct MPInterruptAssignment: Equatable, Sendable {
    /// 0 INT (vectored), 1 NMI, 2 SMI, 3 ExtINT.
    public var interruptType: UInt8
    public var polarity: InterruptPolarity
    public var trigger: InterruptTrigger
    public var sourceBusID: UInt8
    /// For ISA: the IRQ; for PCI: device << 2 | INT# (0 = INTA).
    public var sourceBusIRQ: UInt8
    /// I/O APIC ID (type 3) or local APIC ID, 0xFF for all (type 4).
    public var destinationID: UInt8
    /// INTIN# (type 3) or LINTIN# (type 4).
    public var destinationInput: UInt8
}

/// The parsed MP configuration table.
public struct MPConfiguration: Sendable {
    public var floatingPointer: MPFloatingPointer
    public var localAPICAddress: UInt32
    /// The header's entry count (informational; see `configuration`).
    public var declaredEntryCount: UInt16
    public var processors: [MPProcessor] = []
    public var buses: [MPBus] = []
    public var ioAPICs: [MPIOAPIC] = []
    public var ioInterrupts: [MPInterruptAssignment] = []
    public var localInterrupts: [MPInterruptAssignment] = []

    /// The I/O APIC input and its mode for ISA IRQ `irq` (INT type), if listed.
    public func route(isaIRQ irq: UInt8) -> MPInterruptAssignment? {
        let isaBuses = buses.filter { $0.isISA }.map { $0.busID }
        return ioInterrupts.first { $0.interruptType == 0 && isaBuses.contains($0.sourceBusID) && $0.sourceBusIRQ == irq }
    }
}

/// Finding and reading the MP tables.
public enum MPTable {
    static var floatingSignature: UInt32 { 0x5F50_4D5F }  // "_MP_"
    static var configurationSignature: UInt32 { 0x504D_4350 }  // "PCMP"
    /// Largest configuration table accepted (base plus extended).
    public static var lengthLimit: UInt32 { 65536 }

    /// Looks where the MP specification (§4) says the floating pointer is:
    /// the first KiB of the EBDA, the last KiB of base memory, then the BIOS
    /// ROM at 0xF0000–0xFFFFF, on 16-byte boundaries.
    public static func findFloatingPointer<Memory: PhysicalMemoryReader>(memory: Memory) -> UInt64? {
        let reader = FirmwareReader(memory: memory)
        var areas: [(UInt64, UInt64)] = []
        if let segment = try? reader.u16(0x40E), segment != 0 {
            areas.append((UInt64(segment) << 4, (UInt64(segment) << 4) + 1024))
        }
        if let kilobytes = try? reader.u16(0x413), kilobytes >= 1 {
            areas.append((UInt64(kilobytes) * 1024 - 1024, UInt64(kilobytes) * 1024))
        } else {
            areas.append((0x9_FC00, 0xA_0000))
        }
        areas.append((0xF_0000, 0x10_0000))
        for (start, end) in areas {
            var address = start
            while address < end {
                if reader.matches(address, "_MP_"), (try? readFloatingPointer(reader, address)) != nil { return address }
                address += 16
            }
        }
        return nil
    }

    /// Reads the floating pointer at `address`, checking signature,
    /// length (one 16-byte paragraph) and checksum.
    public static func floatingPointer<Memory: PhysicalMemoryReader>(
        memory: Memory, address: UInt64
    ) throws(FirmwareTableError) -> MPFloatingPointer {
        try readFloatingPointer(FirmwareReader(memory: memory), address)
    }

    static func readFloatingPointer<Memory: PhysicalMemoryReader>(
        _ reader: FirmwareReader<Memory>, _ address: UInt64
    ) throws(FirmwareTableError) -> MPFloatingPointer {
        let signature = try reader.u32(address)
        guard signature == floatingSignature else {
            throw .badSignature(expected: floatingSignature, found: signature, address: address)
        }
        let paragraphs = try reader.u8(address + 8)
        guard paragraphs == 1 else {
            throw .tooShort(signature: signature, address: address, length: UInt32(paragraphs) * 16, minimum: 16)
        }
        let sum = try reader.sum(address, 16)
        guard sum == 0 else { throw .badChecksum(signature: signature, address: address, sum: sum) }
        return MPFloatingPointer(
            address: address, configurationTableAddress: try reader.u32(address + 4),
            specificationRevision: try reader.u8(address + 9), defaultConfiguration: try reader.u8(address + 11),
            imcrPresent: try reader.u8(address + 12) & 0x80 != 0)
    }

    /// Reads the configuration table the floating pointer names. Returns
    /// nil for a default configuration (no table; MP spec chapter 5).
    public static func configuration<Memory: PhysicalMemoryReader>(
        memory: Memory, floatingPointer: MPFloatingPointer
    ) throws(FirmwareTableError) -> MPConfiguration? {
        let reader = FirmwareReader(memory: memory)
        guard floatingPointer.configurationTableAddress != 0 else { return nil }
        let base = UInt64(floatingPointer.configurationTableAddress)
        let signature = try reader.u32(base)
        guard signature == configurationSignature else {
            throw .badSignature(expected: configurationSignature, found: signature, address: base)
        }
        let length = UInt32(try reader.u16(base + 4))
        guard length >= 44 else { throw .tooShort(signature: signature, address: base, length: length, minimum: 44) }
        let sum = try reader.sum(base, length)
        guard sum == 0 else { throw .badChecksum(signature: signature, address: base, sum: sum) }
        let extendedLength = UInt32(try reader.u16(base + 40))
        if extendedLength > 0 {
            // The extended checksum makes the extended entries sum to zero with it.
            let extendedSum = try reader.sum(base + UInt64(length), extendedLength) &+ (try reader.u8(base + 42))
            guard extendedSum == 0 else {
                throw .badChecksum(signature: signature, address: base + UInt64(length), sum: extendedSum)
            }
        }
        var result = MPConfiguration(
            floatingPointer: floatingPointer, localAPICAddress: try reader.u32(base + 36),
            declaredEntryCount: try reader.u16(base + 34))
        // Entries are walked by the base table length, not the entry count:
        // qboot (QEMU's microvm firmware) leaves the count at 0.
        var offset: UInt32 = 44
        while offset < length {
            let entry = base + UInt64(offset)
            let type = try reader.u8(entry)
            let size: UInt32 = type == 0 ? 20 : 8
            guard type <= 4, offset + size <= length else {
                throw .badEntry(signature: signature, offset: offset, type: type, length: UInt8(truncatingIfNeeded: size))
            }
            switch type {
            case 0:
                let flags = try reader.u8(entry + 3)
                result.processors.append(MPProcessor(
                    localAPICID: try reader.u8(entry + 1), localAPICVersion: try reader.u8(entry + 2),
                    isEnabled: flags & 1 != 0, isBootstrapProcessor: flags & 2 != 0,
                    signature: try reader.u32(entry + 4), featureFlags: try reader.u32(entry + 8)))
            case 1:
                var name = InlineArray<6, UInt8>(repeating: 0)
                for index in 0..<6 { name[index] = try reader.u8(entry + 2 + UInt64(index)) }
                result.buses.append(MPBus(busID: try reader.u8(entry + 1), busType: name))
            case 2:
                result.ioAPICs.append(MPIOAPIC(
                    ioAPICID: try reader.u8(entry + 1), version: try reader.u8(entry + 2),
                    isEnabled: try reader.u8(entry + 3) & 1 != 0, address: try reader.u32(entry + 4)))
            default:
                let flags = try reader.u16(entry + 2)
                let assignment = MPInterruptAssignment(
                    interruptType: try reader.u8(entry + 1), polarity: InterruptPolarity(rawValue: UInt8(flags & 3))!,
                    trigger: InterruptTrigger(rawValue: UInt8((flags >> 2) & 3))!, sourceBusID: try reader.u8(entry + 4),
                    sourceBusIRQ: try reader.u8(entry + 5), destinationID: try reader.u8(entry + 6),
                    destinationInput: try reader.u8(entry + 7))
                if type == 3 { result.ioInterrupts.append(assignment) } else { result.localInterrupts.append(assignment) }
            }
            offset += size
        }
        return result
    }
}
