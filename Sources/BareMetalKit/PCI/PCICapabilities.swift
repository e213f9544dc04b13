// PCICapabilities: the capability list (PCI Local Bus 3.0 §6.7), MSI
// (§6.8.1) and MSI-X (§6.8.2) decoding, vector programming and masking.

/// One entry of a function's capability list.
public struct PCICapability: Equatable, Sendable {
    /// Capability ID (0x05 MSI, 0x09 vendor-specific, 0x10 PCI Express, 0x11 MSI-X).
    public var id: UInt8
    /// Offset of the capability in configuration space.
    public var offset: Int

    public static var msiID: UInt8 { 0x05 }
    public static var vendorSpecificID: UInt8 { 0x09 }
    public static var msixID: UInt8 { 0x11 }

    /// The capability list of `function`, validated: every pointer lies in
    /// 0x40...0xFC (its low two bits are reserved and ignored) and none is
    /// visited twice.
    public static func list<Access: PCIConfigurationAccess>(
        _ function: PCIAddress, access: Access
    ) throws(PCIError) -> [PCICapability] {
        let status = access.read16(function, offset: PCIHeader.status)
        if status == 0xFFFF { throw .noFunction(function) }
        guard status & PCIHeader.statusCapabilitiesList != 0 else { return [] }
        var visited: UInt64 = 0  // one bit per dword slot 0x40...0xFC
        var capabilities: [PCICapability] = []
        var pointer = access.read8(function, offset: PCIHeader.capabilitiesPointer) & 0xFC
        while pointer != 0 {
            guard pointer >= 0x40 else { throw .capabilityPointerOutOfRange(function: function, pointer: pointer) }
            let slot = UInt64(1) << UInt64((pointer - 0x40) >> 2)
            guard visited & slot == 0 else { throw .capabilityLoop(function: function, pointer: pointer) }
            visited |= slot
            let header = access.read16(function, offset: Int(pointer))
            capabilities.append(PCICapability(id: UInt8(truncatingIfNeeded: header), offset: Int(pointer)))
            pointer = UInt8(truncatingIfNeeded: header >> 8) & 0xFC
        }
        return capabilities
    }
}

/// A function's MSI capability (§6.8.1).
public struct MSICapability: Equatable, Sendable {
    public let function: PCIAddress
    public let offset: Int
    /// Message Control as found.
    public let control: UInt16

    /// Message Control bit 7: 64-bit Address Capable.
    public var is64Bit: Bool { control & 0x80 != 0 }
    /// Message Control bit 8: Per-Vector Masking Capable.
    public var hasPerVectorMasking: Bool { control & 0x100 != 0 }
    /// Vectors requested (Multiple Message Capable, bits 3:1, as a count).
    public var vectorCount: Int { 1 << Int((control >> 1) & 0x7) }

    /// 0x04 Message Address; 0x08 Message Upper Address (64-bit only).
    var dataOffset: Int { offset + (is64Bit ? 0x0C : 0x08) }
    var maskOffset: Int { offset + (is64Bit ? 0x10 : 0x0C) }
    var pendingOffset: Int { offset + (is64Bit ? 0x14 : 0x10) }

    /// The MSI capability of `function`, or nil when it has none.
    public static func find<Access: PCIConfigurationAccess>(
        _ function: PCIAddress, access: Access
    ) throws(PCIError) -> MSICapability? {
        for capability in try PCICapability.list(function, access: access) where capability.id == PCICapability.msiID {
            return MSICapability(function: function, offset: capability.offset, control: access.read16(function, offset: capability.offset + 2))
        }
        return nil
    }

    /// Writes the message address and data and asks for `vectorCount`
    /// vectors (a power of two up to `self.vectorCount`; vector i sends
    /// `data | i`, so the low bits of `data` must be clear). Leaves the
    /// enable bit alone. A 32-bit-only function needs an address below 4 GiB.
    public func program<Access: PCIConfigurationAccess>(
        address: UInt64, data: UInt16, vectorCount requested: Int = 1, access: Access
    ) throws(PCIError) {
        guard requested >= 1, requested <= vectorCount, requested & (requested - 1) == 0 else {
            throw .vectorOutOfRange(index: requested, count: vectorCount)
        }
        guard is64Bit || address >> 32 == 0 else { throw .vectorOutOfRange(index: 0, count: 0) }
        access.write32(function, offset: offset + 4, UInt32(truncatingIfNeeded: address))
        if is64Bit { access.write32(function, offset: offset + 8, UInt32(truncatingIfNeeded: address >> 32)) }
        access.write16(function, offset: dataOffset, data)
        let enabled = UInt16(requested.trailingZeroBitCount) << 4
        let current = access.read16(function, offset: offset + 2)
        access.write16(function, offset: offset + 2, current & ~0x70 | enabled)
    }

    /// Programs one vector from an MSI message (single-message MSI).
    public func program<Access: PCIConfigurationAccess>(message: MSIMessage, access: Access) throws(PCIError) {
        try program(address: message.address, data: UInt16(truncatingIfNeeded: message.data), vectorCount: 1, access: access)
    }

    /// Sets Message Control bit 0 (MSI Enable). Enabling also sets the
    /// command register's Interrupt Disable so INTx# stays quiet.
    public func setEnabled<Access: PCIConfigurationAccess>(_ enabled: Bool, access: Access) {
        let current = access.read16(function, offset: offset + 2)
        access.write16(function, offset: offset + 2, enabled ? current | 1 : current & ~1)
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(
            function, offset: PCIHeader.command,
            enabled ? command | PCIHeader.commandInterruptDisable : command & ~PCIHeader.commandInterruptDisable)
    }

    /// Masks or unmasks one vector (needs per-vector masking).
    public func setMasked<Access: PCIConfigurationAccess>(vector: Int, _ masked: Bool, access: Access) throws(PCIError) {
        guard hasPerVectorMasking, vector >= 0, vector < vectorCount else {
            throw .vectorOutOfRange(index: vector, count: hasPerVectorMasking ? vectorCount : 0)
        }
        let bits = access.read32(function, offset: maskOffset)
        let bit = UInt32(1) << UInt32(vector)
        access.write32(function, offset: maskOffset, masked ? bits | bit : bits & ~bit)
    }

    /// Whether `vector` has a pending message (needs per-vector masking).
    public func isPending<Access: PCIConfigurationAccess>(vector: Int, access: Access) throws(PCIError) -> Bool {
        guard hasPerVectorMasking, vector >= 0, vector < vectorCount else {
            throw .vectorOutOfRange(index: vector, count: hasPerVectorMasking ? vectorCount : 0)
        }
        return access.read32(function, offset: pendingOffset) & (UInt32(1) << UInt32(vector)) != 0
    }
}

/// A function's MSI-X capability (§6.8.2).
public struct MSIXCapability: Equatable, Sendable {
    public let function: PCIAddress
    public let offset: Int
    /// Number of table entries (Table Size + 1).
    public let tableSize: Int
    /// Table BIR and offset into that BAR.
    public let tableBAR: Int
    public let tableOffset: UInt64
    /// PBA BIR and offset into that BAR.
    public let pendingBitArrayBAR: Int
    public let pendingBitArrayOffset: UInt64

    /// Message Control bit 15: MSI-X Enable.
    public static var enableBit: UInt16 { 0x8000 }
    /// Message Control bit 14: Function Mask.
    public static var functionMaskBit: UInt16 { 0x4000 }

    /// The MSI-X capability of `function`, or nil when it has none.
    public static func find<Access: PCIConfigurationAccess>(
        _ function: PCIAddress, access: Access
    ) throws(PCIError) -> MSIXCapability? {
        for capability in try PCICapability.list(function, access: access) where capability.id == PCICapability.msixID {
            let control = access.read16(function, offset: capability.offset + 2)
            let table = access.read32(function, offset: capability.offset + 4)
            let pba = access.read32(function, offset: capability.offset + 8)
            return MSIXCapability(
                function: function, offset: capability.offset, tableSize: Int(control & 0x7FF) + 1,
                tableBAR: Int(table & 7), tableOffset: UInt64(table & ~7),
                pendingBitArrayBAR: Int(pba & 7), pendingBitArrayOffset: UInt64(pba & ~7))
        }
        return nil
    }

    /// Sets MSI-X Enable and Function Mask. Enabling also sets the command
    /// register's Interrupt Disable.
    public func setControl<Access: PCIConfigurationAccess>(enabled: Bool, functionMasked: Bool, access: Access) {
        var control = access.read16(function, offset: offset + 2) & ~(Self.enableBit | Self.functionMaskBit)
        if enabled { control |= Self.enableBit }
        if functionMasked { control |= Self.functionMaskBit }
        access.write16(function, offset: offset + 2, control)
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(
            function, offset: PCIHeader.command,
            enabled ? command | PCIHeader.commandInterruptDisable : command & ~PCIHeader.commandInterruptDisable)
    }
}

/// The MSI-X table and pending bit array of a function, mapped from its
/// BARs. Entries are 16 bytes: 0x0 Message Address, 0x4 Message Upper
/// Address, 0x8 Message Data, 0xC Vector Control (bit 0 Mask Bit).
public struct MSIXTable<Registers: RegisterBlock> {
    public let capability: MSIXCapability
    let table: Registers
    let pendingBits: Registers

    /// Maps the table and the PBA. Throws when a structure lies outside its
    /// BAR or the BAR is not an assigned memory BAR. `bars` comes from
    /// `PCIBAR.readAll`.
    public init<Mapper: MemoryMappedIO>(
        capability: MSIXCapability, bars: [PCIBAR?], mapper: Mapper
    ) throws(PCIError) where Mapper.Registers == Registers {
        func region(bar index: Int, offset: UInt64, length: UInt64) throws(PCIError) -> Registers {
            guard index < bars.count, let bar = bars[index], !bar.isIO else {
                throw .invalidBARIndex(function: capability.function, index: index)
            }
            guard bar.address != 0 else { throw .unassignedBAR(function: capability.function, index: index) }
            guard offset <= bar.size, length <= bar.size - offset else {
                throw .regionOutsideBAR(function: capability.function, bar: index, offset: offset, length: length, barSize: bar.size)
            }
            return mapper.map(physicalAddress: bar.address + offset, length: length)
        }
        self.capability = capability
        table = try region(bar: capability.tableBAR, offset: capability.tableOffset, length: UInt64(capability.tableSize) * 16)
        pendingBits = try region(
            bar: capability.pendingBitArrayBAR, offset: capability.pendingBitArrayOffset,
            length: UInt64((capability.tableSize + 63) / 64 * 8))
    }

    func check(_ vector: Int) throws(PCIError) {
        guard vector >= 0, vector < capability.tableSize else {
            throw .vectorOutOfRange(index: vector, count: capability.tableSize)
        }
    }

    /// Writes an entry's address and data; the entry is masked while its
    /// fields change and stays masked (unmask with `setMasked`).
    public func program(vector: Int, address: UInt64, data: UInt32) throws(PCIError) {
        try check(vector)
        let entry = vector * 16
        table.write32(at: entry + 0xC, table.read32(at: entry + 0xC) | 1)
        table.write32(at: entry + 0x0, UInt32(truncatingIfNeeded: address))
        table.write32(at: entry + 0x4, UInt32(truncatingIfNeeded: address >> 32))
        table.write32(at: entry + 0x8, data)
    }

    /// Writes an entry from an MSI message (see `program(vector:address:data:)`).
    public func program(vector: Int, message: MSIMessage) throws(PCIError) {
        try program(vector: vector, address: message.address, data: message.data)
    }

    /// Sets or clears an entry's Mask Bit.
    public func setMasked(vector: Int, _ masked: Bool) throws(PCIError) {
        try check(vector)
        let control = table.read32(at: vector * 16 + 0xC)
        table.write32(at: vector * 16 + 0xC, masked ? control | 1 : control & ~1)
    }

    /// Whether an entry's Mask Bit is set.
    public func isMasked(vector: Int) throws(PCIError) -> Bool {
        try check(vector)
        return table.read32(at: vector * 16 + 0xC) & 1 != 0
    }

    /// Whether the entry's Pending Bit is set.
    public func isPending(vector: Int) throws(PCIError) -> Bool {
        try check(vector)
        return pendingBits.read32(at: vector / 32 * 4) & (UInt32(1) << UInt32(vector % 32)) != 0
    }

    /// Masks every entry.
    public func maskAll() {
        for vector in 0..<capability.tableSize {
            table.write32(at: vector * 16 + 0xC, table.read32(at: vector * 16 + 0xC) | 1)
        }
    }
}
