// PCIBAR: Base Address Register decoding and sizing (PCI Local Bus 3.0
// §6.2.5.1): I/O, 32-bit and 64-bit memory, prefetchable.

/// One decoded Base Address Register.
public enum PCIBAR: Equatable, Sendable {
    /// An I/O-space window of `size` ports at `port`.
    case io(port: UInt32, size: UInt32)
    /// A memory-space window of `size` bytes at `address`. A 64-bit BAR uses
    /// the next slot as its upper half.
    case memory(address: UInt64, size: UInt64, is64Bit: Bool, isPrefetchable: Bool)

    /// Base address (port number for I/O).
    public var address: UInt64 {
        switch self {
        case .io(let port, _): UInt64(port)
        case .memory(let address, _, _, _): address
        }
    }

    /// Window size in bytes (ports for I/O).
    public var size: UInt64 {
        switch self {
        case .io(_, let size): UInt64(size)
        case .memory(_, let size, _, _): size
        }
    }

    public var isIO: Bool {
        if case .io = self { return true }
        return false
    }

    /// Reads and sizes BAR `index` (0...5) of a type 0 function: saves the
    /// register, disables I/O and memory decoding in the command register
    /// while all ones are written and read back, then restores both. Returns
    /// nil for an unimplemented BAR.
    public static func read<Access: PCIConfigurationAccess>(
        _ function: PCIAddress, index: Int, access: Access
    ) throws(PCIError) -> PCIBAR? {
        guard index >= 0, index < 6 else { throw .invalidBARIndex(function: function, index: index) }
        let offset = PCIHeader.bar0 + 4 * index
        let original = access.read32(function, offset: offset)
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(
            function, offset: PCIHeader.command,
            command & ~(PCIHeader.commandIOSpace | PCIHeader.commandMemorySpace))
        defer { access.write16(function, offset: PCIHeader.command, command) }

        access.write32(function, offset: offset, 0xFFFF_FFFF)
        let lowMask = access.read32(function, offset: offset)
        access.write32(function, offset: offset, original)
        if lowMask == 0 { return nil }

        if original & 1 == 1 {
            // I/O: bits 31:2 are the address; devices decoding 16 bits of
            // port address may read the upper half as zero.
            var mask = lowMask & ~0x3
            if mask & 0xFFFF_0000 == 0 { mask |= 0xFFFF_0000 }
            return .io(port: original & ~0x3, size: ~mask &+ 1)
        }
        let type = (original >> 1) & 0x3
        let prefetchable = original & 0x8 != 0
        switch type {
        case 0b00:
            let mask = lowMask & ~0xF
            return .memory(address: UInt64(original & ~0xF), size: UInt64(~mask &+ 1), is64Bit: false, isPrefetchable: prefetchable)
        case 0b10:
            guard index < 5 else { throw .truncatedSixtyFourBitBAR(function: function, index: index) }
            let originalHigh = access.read32(function, offset: offset + 4)
            access.write32(function, offset: offset + 4, 0xFFFF_FFFF)
            let highMask = access.read32(function, offset: offset + 4)
            access.write32(function, offset: offset + 4, originalHigh)
            let mask = UInt64(highMask) << 32 | UInt64(lowMask & ~0xF)
            return .memory(
                address: UInt64(originalHigh) << 32 | UInt64(original & ~0xF), size: ~mask &+ 1,
                is64Bit: true, isPrefetchable: prefetchable)
        default:
            throw .reservedBARType(function: function, index: index, value: original)
        }
    }

    /// All six BARs of a type 0 function; the slot holding the upper half of
    /// a 64-bit BAR is nil.
    public static func readAll<Access: PCIConfigurationAccess>(
        _ function: PCIAddress, access: Access
    ) throws(PCIError) -> [PCIBAR?] {
        var bars: [PCIBAR?] = []
        var index = 0
        while index < 6 {
            let bar = try read(function, index: index, access: access)
            bars.append(bar)
            index += 1
            if case .memory(_, _, true, _)? = bar {
                bars.append(nil)
                index += 1
            }
        }
        return bars
    }
}
