// MADT: the Multiple APIC Description Table (ACPI 6.5 §5.2.12): local APICs
// and x2APICs (enabled, online-capable or disabled), I/O APICs, interrupt
// source overrides (§5.2.12.5, MPS INTI flags Table 5.26), NMI sources and
// local APIC NMI inputs, and the local APIC address override.

/// Polarity of an interrupt input (MPS INTI flags bits 1:0).
public enum InterruptPolarity: UInt8, Sendable {
    /// Conforms to the bus: active high for ISA.
    case busDefault = 0
    case activeHigh = 1
    case reserved = 2
    case activeLow = 3
}

/// Trigger mode of an interrupt input (MPS INTI flags bits 3:2).
public enum InterruptTrigger: UInt8, Sendable {
    /// Conforms to the bus: edge for ISA.
    case busDefault = 0
    case edge = 1
    case reserved = 2
    case level = 3
}

/// A processor's local APIC (type 0) or local x2APIC (type 9).
public struct MADTProcessor: Equatable, Sendable {
    /// ACPI processor UID (8 bits for type 0, 32 for type 9).
    public var processorUID: UInt32
    /// APIC ID (8 bits for type 0, 32 for type 9).
    public var apicID: UInt32
    /// Flags bit 0: the processor is usable now.
    public var isEnabled: Bool
    /// Flags bit 1 (ACPI 6.3+): a disabled processor can be brought online.
    public var isOnlineCapable: Bool
    /// Listed as a local x2APIC (type 9).
    public var isX2APIC: Bool
}

/// An I/O APIC (type 1).
public struct MADTIOAPIC: Equatable, Sendable {
    public var ioAPICID: UInt8
    public var address: UInt32
    /// The first global system interrupt this I/O APIC handles.
    public var globalSystemInterruptBase: UInt32
}

/// An interrupt source override (type 2): ISA IRQ `source` is GSI `globalSystemInterrupt`.
public struct MADTInterruptOverride: Equatable, Sendable {
    public var bus: UInt8
    public var source: UInt8
    public var globalSystemInterrupt: UInt32
    public var polarity: InterruptPolarity
    public var trigger: InterruptTrigger
}

/// A GSI wired to NMI (type 3).
public struct MADTNMISource: Equatable, Sendable {
    public var globalSystemInterrupt: UInt32
    public var polarity: InterruptPolarity
    public var trigger: InterruptTrigger
}

/// A local APIC LINT input wired to NMI (type 4, or type 0xA for x2APIC).
public struct MADTLocalNMI: Equatable, Sendable {
    /// 0xFF (type 4) or 0xFFFFFFFF (type 0xA) means every processor.
    public var processorUID: UInt32
    public var polarity: InterruptPolarity
    public var trigger: InterruptTrigger
    /// LINT0 or LINT1.
    public var localInterrupt: UInt8

    public var appliesToAllProcessors: Bool { processorUID == 0xFF || processorUID == 0xFFFF_FFFF }
}

/// Where an ISA IRQ arrives after overrides.
public struct ISAInterruptRoute: Equatable, Sendable {
    public var globalSystemInterrupt: UInt32
    public var activeLow: Bool
    public var levelTriggered: Bool
}

/// The parsed MADT.
public struct MultipleAPICDescriptionTable: Sendable {
    /// The local APIC base, after a type-5 override.
    public var localAPICAddress: UInt64
    /// Flags bit 0 PCAT_COMPAT: dual 8259 PICs present (mask them).
    public var hasLegacyPICs: Bool
    public var processors: [MADTProcessor] = []
    public var ioAPICs: [MADTIOAPIC] = []
    public var overrides: [MADTInterruptOverride] = []
    public var nmiSources: [MADTNMISource] = []
    public var localNMIs: [MADTLocalNMI] = []
    /// Entries of types this parser does not interpret (GIC, RINTC, ...).
    public var otherEntryCount = 0

    /// Processors usable at boot.
    public var enabledProcessors: [MADTProcessor] { processors.filter { $0.isEnabled } }

    /// The GSI, polarity and trigger of ISA IRQ `irq`: identity-mapped,
    /// edge-triggered active-high unless an override says otherwise.
    public func route(isaIRQ irq: UInt8) -> ISAInterruptRoute {
        for entry in overrides where entry.bus == 0 && entry.source == irq {
            return ISAInterruptRoute(
                globalSystemInterrupt: entry.globalSystemInterrupt, activeLow: entry.polarity == .activeLow,
                levelTriggered: entry.trigger == .level)
        }
        return ISAInterruptRoute(globalSystemInterrupt: UInt32(irq), activeLow: false, levelTriggered: false)
    }

    /// The I/O APIC that handles `gsi`, and its input pin.
    public func ioAPIC(forGlobalSystemInterrupt gsi: UInt32, pinCounts: (MADTIOAPIC) -> UInt32 = { _ in 24 })
        -> (MADTIOAPIC, UInt32)?
    {
        for entry in ioAPICs where gsi >= entry.globalSystemInterruptBase
            && gsi - entry.globalSystemInterruptBase < pinCounts(entry)
        {
            return (entry, gsi - entry.globalSystemInterruptBase)
        }
        return nil
    }
}

extension ACPITables {
    /// The MADT, or nil when the root lists none.
    public func madt() throws(FirmwareTableError) -> MultipleAPICDescriptionTable? {
        guard let header = try header(.madt) else { return nil }
        let base = header.address
        let signature = TableSignature.madt.rawValue
        guard header.length >= 44 else {
            throw .tooShort(signature: signature, address: base, length: header.length, minimum: 44)
        }
        var table = MultipleAPICDescriptionTable(
            localAPICAddress: UInt64(try reader.u32(base + 36)), hasLegacyPICs: try reader.u32(base + 40) & 1 != 0)
        var offset: UInt32 = 44
        while offset < header.length {
            let entry = base + UInt64(offset)
            guard offset + 2 <= header.length else {
                throw .badEntry(signature: signature, offset: offset, type: try reader.u8(entry), length: 0)
            }
            let type = try reader.u8(entry)
            let length = try reader.u8(entry + 1)
            func need(_ minimum: UInt8) throws(FirmwareTableError) {
                guard length >= minimum, offset + UInt32(length) <= header.length else {
                    throw .badEntry(signature: signature, offset: offset, type: type, length: length)
                }
            }
            try need(2)
            switch type {
            case 0:
                try need(8)
                let flags = try reader.u32(entry + 4)
                table.processors.append(MADTProcessor(
                    processorUID: UInt32(try reader.u8(entry + 2)), apicID: UInt32(try reader.u8(entry + 3)),
                    isEnabled: flags & 1 != 0, isOnlineCapable: flags & 2 != 0, isX2APIC: false))
            case 1:
                try need(12)
                table.ioAPICs.append(MADTIOAPIC(
                    ioAPICID: try reader.u8(entry + 2), address: try reader.u32(entry + 4),
                    globalSystemInterruptBase: try reader.u32(entry + 8)))
            case 2:
                try need(10)
                let flags = try reader.u16(entry + 8)
                table.overrides.append(MADTInterruptOverride(
                    bus: try reader.u8(entry + 2), source: try reader.u8(entry + 3),
                    globalSystemInterrupt: try reader.u32(entry + 4),
                    polarity: InterruptPolarity(rawValue: UInt8(flags & 3))!,
                    trigger: InterruptTrigger(rawValue: UInt8((flags >> 2) & 3))!))
            case 3:
                try need(8)
                let flags = try reader.u16(entry + 2)
                table.nmiSources.append(MADTNMISource(
                    globalSystemInterrupt: try reader.u32(entry + 4),
                    polarity: InterruptPolarity(rawValue: UInt8(flags & 3))!,
                    trigger: InterruptTrigger(rawValue: UInt8((flags >> 2) & 3))!))
            case 4:
                try need(6)
                let flags = try reader.u16(entry + 3)
                table.localNMIs.append(MADTLocalNMI(
                    processorUID: UInt32(try reader.u8(entry + 2)),
                    polarity: InterruptPolarity(rawValue: UInt8(flags & 3))!,
                    trigger: InterruptTrigger(rawValue: UInt8((flags >> 2) & 3))!,
                    localInterrupt: try reader.u8(entry + 5)))
            case 5:
                try need(12)
                table.localAPICAddress = try reader.u64(entry + 4)
            case 9:
                try need(16)
                let flags = try reader.u32(entry + 8)
                table.processors.append(MADTProcessor(
                    processorUID: try reader.u32(entry + 12), apicID: try reader.u32(entry + 4),
                    isEnabled: flags & 1 != 0, isOnlineCapable: flags & 2 != 0, isX2APIC: true))
            case 0xA:
                try need(12)
                let flags = try reader.u16(entry + 2)
                table.localNMIs.append(MADTLocalNMI(
                    processorUID: try reader.u32(entry + 4),
                    polarity: InterruptPolarity(rawValue: UInt8(flags & 3))!,
                    trigger: InterruptTrigger(rawValue: UInt8((flags >> 2) & 3))!,
                    localInterrupt: try reader.u8(entry + 8)))
            default:
                table.otherEntryCount += 1
            }
            offset += UInt32(length)
        }
        return table
    }
}
