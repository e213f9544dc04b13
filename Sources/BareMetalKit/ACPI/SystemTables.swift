// SystemTables: the HPET description table (IA-PC HPET Specification 1.0a
// §3.2.4), the PCI Express MCFG table (PCI Firmware Specification 3.0
// §4.1.2) and the parts of the FADT (ACPI 6.5 §5.2.9) the platform uses.

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2).
public struct GenericAddress: Equatable, Sendable {
    /// 0 system memory, 1 system I/O, 2 PCI configuration space, ...
    public var addressSpaceID: UInt8
    public var registerBitWidth: UInt8
    public var registerBitOffset: UInt8
    public var accessSize: UInt8
    public var address: UInt64

    public static var systemMemory: UInt8 { 0 }
    public static var systemIO: UInt8 { 1 }
}

/// The HPET table: where the event timer block is and what it offers.
public struct HPETDescription: Equatable, Sendable {
    /// Event Timer Block ID: hardware revision (7:0), comparator count − 1
    /// (12:8), 64-bit counter (13), legacy replacement capable (15), PCI
    /// vendor ID (31:16).
    public var eventTimerBlockID: UInt32
    public var baseAddress: GenericAddress
    public var hpetNumber: UInt8
    /// Minimum clock ticks for periodic mode without lost interrupts.
    public var minimumClockTick: UInt16
    public var pageProtection: UInt8

    public var comparatorCount: Int { Int((eventTimerBlockID >> 8) & 0x1F) + 1 }
    public var hasSixtyFourBitCounter: Bool { eventTimerBlockID & (1 << 13) != 0 }
    public var isLegacyReplacementCapable: Bool { eventTimerBlockID & (1 << 15) != 0 }
    public var pciVendorID: UInt16 { UInt16(eventTimerBlockID >> 16) }
}

/// One MCFG allocation: ECAM space for a PCI segment's bus range.
public struct PCIConfigurationRegion: Equatable, Sendable {
    /// ECAM base address (bus 0 of the segment, even if `startBus` > 0).
    public var baseAddress: UInt64
    public var segmentGroup: UInt16
    public var startBus: UInt8
    public var endBus: UInt8

    /// The configuration-space address of bus/device/function (ECAM: 4 KiB each).
    public func address(bus: UInt8, device: UInt8, function: UInt8) -> UInt64? {
        guard bus >= startBus, bus <= endBus, device < 32, function < 8 else { return nil }
        return baseAddress + (UInt64(bus) << 20 | UInt64(device) << 15 | UInt64(function) << 12)
    }
}

/// What the platform needs from the FADT.
public struct FixedACPIDescription: Equatable, Sendable {
    public var revision: UInt8
    /// SCI_INT: the SCI's interrupt (an ISA IRQ on PC systems).
    public var sciInterrupt: UInt16
    /// PM_TMR_BLK: port of the 3.579545 MHz ACPI PM timer (0: none).
    public var pmTimerBlock: UInt32
    /// X_PM_TMR_BLK (FADT revision 3+), when present and non-zero.
    public var extendedPMTimerBlock: GenericAddress?
    /// CENTURY: CMOS RTC index of the century (0: none).
    public var century: UInt8
    /// IAPC_BOOT_ARCH flags (ACPI 2.0+; 0 for 1.0 tables).
    public var bootArchitectureFlags: UInt16
    /// Fixed feature flags.
    public var flags: UInt32

    /// The PM timer counts 32 bits (TMR_VAL_EXT, flags bit 8), else 24.
    public var pmTimerIs32Bit: Bool { flags & (1 << 8) != 0 }
    /// HW_REDUCED_ACPI (flags bit 20): no fixed hardware (no PM timer).
    public var isHardwareReduced: Bool { flags & (1 << 20) != 0 }
    /// IAPC_BOOT_ARCH bit 5: the CMOS RTC is absent.
    public var cmosRTCNotPresent: Bool { bootArchitectureFlags & (1 << 5) != 0 }
    /// IAPC_BOOT_ARCH bit 1: an 8042 keyboard controller is present.
    public var has8042: Bool { bootArchitectureFlags & (1 << 1) != 0 }
    /// IAPC_BOOT_ARCH bit 2: VGA is not present.
    public var vgaNotPresent: Bool { bootArchitectureFlags & (1 << 2) != 0 }
    /// IAPC_BOOT_ARCH bit 3: MSI must not be enabled.
    public var msiNotSupported: Bool { bootArchitectureFlags & (1 << 3) != 0 }
}

extension ACPITables {
    func genericAddress(_ address: UInt64) throws(FirmwareTableError) -> GenericAddress {
        GenericAddress(
            addressSpaceID: try reader.u8(address), registerBitWidth: try reader.u8(address + 1),
            registerBitOffset: try reader.u8(address + 2), accessSize: try reader.u8(address + 3),
            address: try reader.u64(address + 4))
    }

    /// The HPET table, or nil when the root lists none.
    public func hpet() throws(FirmwareTableError) -> HPETDescription? {
        guard let header = try header(.hpet) else { return nil }
        guard header.length >= 56 else {
            throw .tooShort(signature: TableSignature.hpet.rawValue, address: header.address, length: header.length, minimum: 56)
        }
        let base = header.address
        return HPETDescription(
            eventTimerBlockID: try reader.u32(base + 36), baseAddress: try genericAddress(base + 40),
            hpetNumber: try reader.u8(base + 52), minimumClockTick: try reader.u16(base + 53),
            pageProtection: try reader.u8(base + 55))
    }

    /// The MCFG allocations; nil when the root lists no MCFG.
    public func pciConfigurationRegions() throws(FirmwareTableError) -> [PCIConfigurationRegion]? {
        guard let header = try header(.mcfg) else { return nil }
        guard header.length >= 44 else {
            throw .tooShort(signature: TableSignature.mcfg.rawValue, address: header.address, length: header.length, minimum: 44)
        }
        var regions: [PCIConfigurationRegion] = []
        var offset: UInt32 = 44
        while offset + 16 <= header.length {
            let entry = header.address + UInt64(offset)
            regions.append(PCIConfigurationRegion(
                baseAddress: try reader.u64(entry), segmentGroup: try reader.u16(entry + 8),
                startBus: try reader.u8(entry + 10), endBus: try reader.u8(entry + 11)))
            offset += 16
        }
        guard offset == header.length else {
            throw .badEntry(signature: TableSignature.mcfg.rawValue, offset: offset, type: 0, length: UInt8(header.length - offset))
        }
        return regions
    }

    /// The FADT's platform fields, or nil when the root lists no FADT.
    public func fadt() throws(FirmwareTableError) -> FixedACPIDescription? {
        guard let header = try header(.fadt) else { return nil }
        let base = header.address
        // ACPI 1.0 FADTs are 116 bytes; everything used here lies within.
        guard header.length >= 116 else {
            throw .tooShort(signature: TableSignature.fadt.rawValue, address: base, length: header.length, minimum: 116)
        }
        var result = FixedACPIDescription(
            revision: header.revision, sciInterrupt: try reader.u16(base + 46), pmTimerBlock: try reader.u32(base + 76),
            extendedPMTimerBlock: nil, century: try reader.u8(base + 108),
            bootArchitectureFlags: header.revision >= 2 ? try reader.u16(base + 109) : 0,
            flags: try reader.u32(base + 112))
        if header.length >= 220 {
            let extended = try genericAddress(base + 208)
            if extended.address != 0 { result.extendedPMTimerBlock = extended }
        }
        return result
    }
}
