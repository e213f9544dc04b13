// ACPITables: finding and checking the ACPI root tables (ACPI 6.5 §5.2.5
// RSDP, §5.2.6 system description table header, §5.2.7 RSDT, §5.2.8 XSDT)
// through a bounded reader of physical memory.

/// Why a firmware table (ACPI or Intel MP) was rejected.
public enum FirmwareTableError: Error, Equatable {
    /// The reader refused this address.
    case unreadable(address: UInt64)
    /// The bytes at `address` do not start with the expected signature.
    case badSignature(expected: UInt32, found: UInt32, address: UInt64)
    /// The bytes of the structure do not sum to zero (mod 256).
    case badChecksum(signature: UInt32, address: UInt64, sum: UInt8)
    /// The length field is below the structure's minimum size.
    case tooShort(signature: UInt32, address: UInt64, length: UInt32, minimum: UInt32)
    /// The length field exceeds what the parser accepts.
    case tooLong(signature: UInt32, address: UInt64, length: UInt32, limit: UInt32)
    /// An entry's length is too small for its type or runs past the table.
    case badEntry(signature: UInt32, offset: UInt32, type: UInt8, length: UInt8)
}

/// A four-character table signature as the little-endian number it is in memory.
public struct TableSignature: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `text` must be four ASCII characters.
    public init(_ text: StaticString) {
        precondition(text.utf8CodeUnitCount == 4, "a table signature has four characters")
        let bytes = text.utf8Start
        rawValue = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
    }

    public static var rsdt: Self { Self(rawValue: 0x5444_5352) }  // "RSDT"
    public static var xsdt: Self { Self(rawValue: 0x5444_5358) }  // "XSDT"
    public static var madt: Self { Self(rawValue: 0x4349_5041) }  // "APIC"
    public static var fadt: Self { Self(rawValue: 0x5043_4146) }  // "FACP"
    public static var hpet: Self { Self(rawValue: 0x5445_5048) }  // "HPET"
    public static var mcfg: Self { Self(rawValue: 0x4746_434D) }  // "MCFG"
}

/// Little-endian, bounds-checked reads through a `PhysicalMemoryReader`.
struct FirmwareReader<Memory: PhysicalMemoryReader> {
    let memory: Memory

    func u8(_ address: UInt64) throws(FirmwareTableError) -> UInt8 {
        guard let byte = memory.loadByte(at: address) else { throw .unreadable(address: address) }
        return byte
    }

    func u16(_ address: UInt64) throws(FirmwareTableError) -> UInt16 {
        UInt16(try u8(address)) | UInt16(try u8(address &+ 1)) << 8
    }

    func u32(_ address: UInt64) throws(FirmwareTableError) -> UInt32 {
        UInt32(try u16(address)) | UInt32(try u16(address &+ 2)) << 16
    }

    func u64(_ address: UInt64) throws(FirmwareTableError) -> UInt64 {
        UInt64(try u32(address)) | UInt64(try u32(address &+ 4)) << 32
    }

    /// The 8-bit sum of `length` bytes.
    func sum(_ address: UInt64, _ length: UInt32) throws(FirmwareTableError) -> UInt8 {
        var total: UInt8 = 0
        var offset: UInt64 = 0
        while offset < UInt64(length) {
            total &+= try u8(address &+ offset)
            offset += 1
        }
        return total
    }

    /// Whether the reader has `count` bytes at `address` spelling `text`
    /// (unreadable bytes are a mismatch).
    func matches(_ address: UInt64, _ text: StaticString) -> Bool {
        for index in 0..<text.utf8CodeUnitCount {
            guard memory.loadByte(at: address &+ UInt64(index)) == text.utf8Start[index] else { return false }
        }
        return true
    }
}

/// The Root System Description Pointer (ACPI 6.5 §5.2.5.3).
public struct RootSystemDescriptionPointer: Equatable, Sendable {
    public var address: UInt64
    /// 0 for ACPI 1.0 (20-byte structure), 2 for ACPI 2.0 and later.
    public var revision: UInt8
    public var oemID: InlineArray<6, UInt8>
    public var rsdtAddress: UInt32
    /// Revision 2 and later: the XSDT, when non-zero.
    public var xsdtAddress: UInt64?

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.address == rhs.address && lhs.revision == rhs.revision && lhs.rsdtAddress == rhs.rsdtAddress
            && lhs.xsdtAddress == rhs.xsdtAddress
    }
}

/// The 36-byte header every system description table starts with (§5.2.6).
public struct SystemDescriptionTableHeader: Sendable {
    public var address: UInt64
    public var signature: TableSignature
    /// Length of the whole table, header included.
    public var length: UInt32
    public var revision: UInt8
    public var oemID: InlineArray<6, UInt8>
    public var oemTableID: InlineArray<8, UInt8>
    public var oemRevision: UInt32
    public var creatorID: UInt32
    public var creatorRevision: UInt32

    public static var byteCount: UInt32 { 36 }
}

/// The ACPI tables reachable from one RSDP.
public struct ACPITables<Memory: PhysicalMemoryReader> {
    /// Largest table accepted (a DSDT may be big; the ones parsed here are small).
    public static var tableLengthLimit: UInt32 { 1 << 20 }

    let reader: FirmwareReader<Memory>
    public let rsdp: RootSystemDescriptionPointer
    /// The root table used: the XSDT when present, else the RSDT.
    public let root: SystemDescriptionTableHeader
    /// Physical addresses of the tables the root lists, in order.
    public let tableAddresses: [UInt64]

    /// Reads and checks the RSDP at `rsdpAddress` and the root table.
    public init(memory: Memory, rsdpAddress: UInt64) throws(FirmwareTableError) {
        reader = FirmwareReader(memory: memory)
        let rsdp = try Self.readRSDP(reader, rsdpAddress)
        self.rsdp = rsdp
        let rootAddress = rsdp.xsdtAddress ?? UInt64(rsdp.rsdtAddress)
        let expected: TableSignature = rsdp.xsdtAddress == nil ? .rsdt : .xsdt
        let root = try Self.readHeader(reader, rootAddress, expecting: expected)
        self.root = root
        let width: UInt32 = expected == .xsdt ? 8 : 4
        var addresses: [UInt64] = []
        var offset = SystemDescriptionTableHeader.byteCount
        while offset + width <= root.length {
            let entry = rootAddress + UInt64(offset)
            addresses.append(width == 8 ? try reader.u64(entry) : UInt64(try reader.u32(entry)))
            offset += width
        }
        tableAddresses = addresses
    }

    /// Looks for the RSDP where BIOS firmware puts it (§5.2.5.1): the first
    /// KiB of the EBDA (segment at 0x40E), then 0xE0000–0xFFFFF, on 16-byte
    /// boundaries; the first with a valid checksum wins.
    public static func findRSDP(memory: Memory) -> UInt64? {
        let reader = FirmwareReader(memory: memory)
        var areas: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0xE_0000, 0x10_0000)
        if let segment = try? reader.u16(0x40E), segment != 0 {
            areas.0 = UInt64(segment) << 4
            areas.1 = areas.0 + 1024
        }
        for (start, end) in [(areas.0, areas.1), (areas.2, areas.3)] where end > start {
            var address = start
            while address < end {
                if reader.matches(address, "RSD PTR "), (try? readRSDP(reader, address)) != nil { return address }
                address += 16
            }
        }
        return nil
    }

    static func readRSDP(_ reader: FirmwareReader<Memory>, _ address: UInt64) throws(FirmwareTableError) -> RootSystemDescriptionPointer {
        let signature = try reader.u32(address)
        guard reader.matches(address, "RSD PTR ") else {
            throw .badSignature(expected: 0x2044_5352, found: signature, address: address)
        }
        let sum = try reader.sum(address, 20)
        guard sum == 0 else { throw .badChecksum(signature: 0x2044_5352, address: address, sum: sum) }
        var oemID = InlineArray<6, UInt8>(repeating: 0)
        for index in 0..<6 { oemID[index] = try reader.u8(address + 9 + UInt64(index)) }
        let revision = try reader.u8(address + 15)
        var result = RootSystemDescriptionPointer(
            address: address, revision: revision, oemID: oemID, rsdtAddress: try reader.u32(address + 16), xsdtAddress: nil)
        if revision >= 2 {
            let length = try reader.u32(address + 20)
            guard length >= 36 else { throw .tooShort(signature: 0x2044_5352, address: address, length: length, minimum: 36) }
            guard length <= 4096 else { throw .tooLong(signature: 0x2044_5352, address: address, length: length, limit: 4096) }
            let extended = try reader.sum(address, length)
            guard extended == 0 else { throw .badChecksum(signature: 0x2044_5352, address: address, sum: extended) }
            let xsdt = try reader.u64(address + 24)
            result.xsdtAddress = xsdt == 0 ? nil : xsdt
        }
        return result
    }

    /// Reads a table header and checks signature, length and checksum.
    static func readHeader(
        _ reader: FirmwareReader<Memory>, _ address: UInt64, expecting expected: TableSignature?
    ) throws(FirmwareTableError) -> SystemDescriptionTableHeader {
        let signature = TableSignature(rawValue: try reader.u32(address))
        if let expected, signature != expected {
            throw .badSignature(expected: expected.rawValue, found: signature.rawValue, address: address)
        }
        let length = try reader.u32(address + 4)
        guard length >= SystemDescriptionTableHeader.byteCount else {
            throw .tooShort(signature: signature.rawValue, address: address, length: length,
                minimum: SystemDescriptionTableHeader.byteCount)
        }
        guard length <= tableLengthLimit else {
            throw .tooLong(signature: signature.rawValue, address: address, length: length, limit: tableLengthLimit)
        }
        let sum = try reader.sum(address, length)
        guard sum == 0 else { throw .badChecksum(signature: signature.rawValue, address: address, sum: sum) }
        var oemID = InlineArray<6, UInt8>(repeating: 0)
        for index in 0..<6 { oemID[index] = try reader.u8(address + 10 + UInt64(index)) }
        var oemTableID = InlineArray<8, UInt8>(repeating: 0)
        for index in 0..<8 { oemTableID[index] = try reader.u8(address + 16 + UInt64(index)) }
        return SystemDescriptionTableHeader(
            address: address, signature: signature, length: length, revision: try reader.u8(address + 8),
            oemID: oemID, oemTableID: oemTableID, oemRevision: try reader.u32(address + 24),
            creatorID: try reader.u32(address + 28), creatorRevision: try reader.u32(address + 32))
    }

    /// The checked header of the first listed table with `signature`, or
    /// nil when the root lists none. A listed table that fails its checks
    /// throws.
    public func header(_ signature: TableSignature) throws(FirmwareTableError) -> SystemDescriptionTableHeader? {
        for address in tableAddresses {
            guard let found = try? reader.u32(address) else { continue }
            if found == signature.rawValue { return try Self.readHeader(reader, address, expecting: signature) }
        }
        return nil
    }

    /// The signatures of all listed tables, in order (unreadable ones skipped).
    public var signatures: [TableSignature] {
        tableAddresses.compactMap { (try? reader.u32($0)).map { TableSignature(rawValue: $0) } }
    }
}
