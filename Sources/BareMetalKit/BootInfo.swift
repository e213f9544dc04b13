// BootInfo: one platform-neutral description of what the loader handed over,
// read from multiboot 1 information (Multiboot Specification 0.6.96 §3.3) or
// from a PVH start info (Xen public/arch-x86/hvm/start_info.h, version 0/1).

/// How the image was entered.
public enum BootProtocol: UInt32, Sendable {
    case unknown = 0
    case multiboot = 1
    case pvh = 2
}

/// A physical memory range and what the loader says it holds.
public struct MemoryRegion: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case usable
        case reserved
        case acpiReclaimable
        case acpiNonVolatile
        case defective
        case other(UInt32)

        /// Multiboot and the PVH memory map both use the E820 type numbers.
        init(e820Type: UInt32) {
            switch e820Type {
            case 1: self = .usable
            case 2: self = .reserved
            case 3: self = .acpiReclaimable
            case 4: self = .acpiNonVolatile
            case 5: self = .defective
            default: self = .other(e820Type)
            }
        }
    }

    public var start: UInt64
    public var length: UInt64
    public var kind: Kind

    public init(start: UInt64, length: UInt64, kind: Kind) {
        self.start = start
        self.length = length
        self.kind = kind
    }

    public var end: UInt64 { start &+ length }
}

/// A file the loader placed in memory beside the image.
public struct BootModule: Equatable, Sendable {
    public var start: UInt64
    public var length: UInt64
    public var commandLine: [UInt8]
}

/// Everything the platform needs from the loader.
public struct BootInfo: Sendable {
    public var bootProtocol: BootProtocol
    public var commandLine: [UInt8]
    public var memoryRegions: [MemoryRegion]
    public var modules: [BootModule]
    /// ACPI RSDP address when the loader passed one (PVH only).
    public var rsdpAddress: UInt64?
}

/// Why boot information was rejected.
public enum BootInfoError: Error, Equatable {
    case unknownLoader(protocolNumber: UInt32)
    case badPVHMagic(found: UInt32)
    case unreadable(address: UInt64)
    case stringTooLong(address: UInt64, limit: Int)
    case noMemoryMap
    case tooManyEntries(what: StaticString, count: UInt64, limit: Int)
    case entrySizeTooSmall(size: UInt32)
    case regionOverflows(start: UInt64, length: UInt64)

    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case let (.unknownLoader(a), .unknownLoader(b)): return a == b
        case let (.badPVHMagic(a), .badPVHMagic(b)): return a == b
        case let (.unreadable(a), .unreadable(b)): return a == b
        case let (.stringTooLong(a, x), .stringTooLong(b, y)): return a == b && x == y
        case (.noMemoryMap, .noMemoryMap): return true
        case let (.tooManyEntries(_, a, x), .tooManyEntries(_, b, y)): return a == b && x == y
        case let (.entrySizeTooSmall(a), .entrySizeTooSmall(b)): return a == b
        case let (.regionOverflows(a, x), .regionOverflows(b, y)): return a == b && x == y
        default: return false
        }
    }
}

/// Byte-granular reads of physical memory that can refuse an address.
/// The guest reads identity-mapped memory; host tests read a byte array.
public protocol PhysicalMemoryReader {
    /// The byte at `address`, or nil when the address is not readable.
    func loadByte(at address: UInt64) -> UInt8?
}

extension PhysicalMemoryReader {
    func load32(_ address: UInt64) throws(BootInfoError) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<UInt64(4) {
            guard let byte = loadByte(at: address &+ index) else { throw .unreadable(address: address &+ index) }
            value |= UInt32(byte) << (8 * UInt32(index))
        }
        return value
    }

    func load64(_ address: UInt64) throws(BootInfoError) -> UInt64 {
        UInt64(try load32(address)) | UInt64(try load32(address &+ 4)) << 32
    }

    /// The length of a NUL-terminated string of at most `limit` bytes,
    /// without allocating.
    func stringLength(_ address: UInt64, limit: Int) throws(BootInfoError) -> Int {
        var length = 0
        while true {
            guard let byte = loadByte(at: address &+ UInt64(length)) else {
                throw .unreadable(address: address &+ UInt64(length))
            }
            if byte == 0 { return length }
            if length == limit { throw .stringTooLong(address: address, limit: limit) }
            length += 1
        }
    }

    /// A NUL-terminated string of at most `limit` bytes.
    func loadString(_ address: UInt64, limit: Int) throws(BootInfoError) -> [UInt8] {
        var bytes: [UInt8] = []
        var offset: UInt64 = 0
        while true {
            guard let byte = loadByte(at: address &+ offset) else { throw .unreadable(address: address &+ offset) }
            if byte == 0 { return bytes }
            if bytes.count == limit { throw .stringTooLong(address: address, limit: limit) }
            bytes.append(byte)
            offset += 1
        }
    }
}

/// Reads boot information handed over by a multiboot or PVH loader.
public struct BootInfoParser<Memory: PhysicalMemoryReader> {
    /// `hvm_start_info.magic` (XEN_HVM_START_MAGIC_VALUE).
    public static var pvhMagic: UInt32 { 0x336E_C578 }
    public static var commandLineLimit: Int { 4096 }
    public static var entryLimit: Int { 1024 }

    public let memory: Memory
    public let bootProtocol: BootProtocol
    public let infoAddress: UInt64

    public init(memory: Memory, protocolNumber: UInt32, infoAddress: UInt64) throws(BootInfoError) {
        guard let bootProtocol = BootProtocol(rawValue: protocolNumber), bootProtocol != .unknown else {
            throw .unknownLoader(protocolNumber: protocolNumber)
        }
        self.memory = memory
        self.bootProtocol = bootProtocol
        self.infoAddress = infoAddress
        if bootProtocol == .pvh {
            let magic = try memory.load32(infoAddress)
            guard magic == Self.pvhMagic else { throw .badPVHMagic(found: magic) }
        }
    }

    /// Calls `body` for every memory-map entry without allocating, so the
    /// platform can find its heap before anything else needs one.
    public func forEachMemoryRegion(_ body: (MemoryRegion) -> Void) throws(BootInfoError) {
        switch bootProtocol {
        case .multiboot: try multibootMemoryMap(body)
        case .pvh: try pvhMemoryMap(body)
        case .unknown: throw .unknownLoader(protocolNumber: 0)
        }
    }

    /// The highest physical address (exclusive) of any loader-provided
    /// structure, string or module; memory below it must not be reused early.
    /// Does not allocate.
    public func highestReferencedAddress() throws(BootInfoError) -> UInt64 {
        var highest: UInt64 = 0
        func note(_ start: UInt64, _ length: UInt64) { highest = max(highest, start &+ length) }
        switch bootProtocol {
        case .multiboot:
            let flags = try memory.load32(infoAddress)
            note(infoAddress, 116)
            if flags & (1 << 2) != 0 {
                let address = UInt64(try memory.load32(infoAddress + 16))
                note(address, UInt64(try memory.stringLength(address, limit: Self.commandLineLimit) + 1))
            }
            if flags & (1 << 3) != 0 {
                let count = UInt64(try memory.load32(infoAddress + 20))
                let address = UInt64(try memory.load32(infoAddress + 24))
                guard count <= UInt64(Self.entryLimit) else {
                    throw .tooManyEntries(what: "multiboot modules", count: count, limit: Self.entryLimit)
                }
                note(address, count * 16)
                for index in 0..<count {
                    let entry = address + index * 16
                    note(UInt64(try memory.load32(entry)), 0)
                    note(UInt64(try memory.load32(entry + 4)), 0)
                }
            }
            if flags & (1 << 6) != 0 {
                note(UInt64(try memory.load32(infoAddress + 48)), UInt64(try memory.load32(infoAddress + 44)))
            }
        case .pvh:
            note(infoAddress, 56)
            let cmdline = try memory.load64(infoAddress + 24)
            if cmdline != 0 {
                note(cmdline, UInt64(try memory.stringLength(cmdline, limit: Self.commandLineLimit) + 1))
            }
            let moduleCount = UInt64(try memory.load32(infoAddress + 12))
            let moduleList = try memory.load64(infoAddress + 16)
            guard moduleCount <= UInt64(Self.entryLimit) else {
                throw .tooManyEntries(what: "PVH modules", count: moduleCount, limit: Self.entryLimit)
            }
            note(moduleList, moduleCount * 32)
            for index in 0..<moduleCount {
                let entry = moduleList + index * 32
                note(try memory.load64(entry), try memory.load64(entry + 8))
            }
            if try memory.load32(infoAddress + 4) >= 1 {
                let count = UInt64(try memory.load32(infoAddress + 48))
                note(try memory.load64(infoAddress + 40), count * 24)
            }
        case .unknown:
            break
        }
        return highest
    }

    /// The whole description; allocates, so call it once a heap exists.
    public func parse() throws(BootInfoError) -> BootInfo {
        var regions: [MemoryRegion] = []
        try forEachMemoryRegion { regions.append($0) }
        var info = BootInfo(bootProtocol: bootProtocol, commandLine: [], memoryRegions: regions, modules: [], rsdpAddress: nil)
        switch bootProtocol {
        case .multiboot:
            let flags = try memory.load32(infoAddress)
            if flags & (1 << 2) != 0 {
                info.commandLine = try memory.loadString(UInt64(try memory.load32(infoAddress + 16)), limit: Self.commandLineLimit)
            }
            if flags & (1 << 3) != 0 {
                let count = UInt64(try memory.load32(infoAddress + 20))
                let address = UInt64(try memory.load32(infoAddress + 24))
                guard count <= UInt64(Self.entryLimit) else {
                    throw .tooManyEntries(what: "multiboot modules", count: count, limit: Self.entryLimit)
                }
                for index in 0..<count {
                    let entry = address + index * 16
                    let start = UInt64(try memory.load32(entry))
                    let end = UInt64(try memory.load32(entry + 4))
                    guard end >= start else { throw .regionOverflows(start: start, length: 0) }
                    let string = UInt64(try memory.load32(entry + 8))
                    let commandLine = string == 0 ? [] : try memory.loadString(string, limit: Self.commandLineLimit)
                    info.modules.append(BootModule(start: start, length: end - start, commandLine: commandLine))
                }
            }
        case .pvh:
            let cmdline = try memory.load64(infoAddress + 24)
            if cmdline != 0 { info.commandLine = try memory.loadString(cmdline, limit: Self.commandLineLimit) }
            let rsdp = try memory.load64(infoAddress + 32)
            info.rsdpAddress = rsdp == 0 ? nil : rsdp
            let count = UInt64(try memory.load32(infoAddress + 12))
            let list = try memory.load64(infoAddress + 16)
            guard count <= UInt64(Self.entryLimit) else {
                throw .tooManyEntries(what: "PVH modules", count: count, limit: Self.entryLimit)
            }
            for index in 0..<count {
                let entry = list + index * 32
                let start = try memory.load64(entry)
                let length = try memory.load64(entry + 8)
                guard start &+ length >= start else { throw .regionOverflows(start: start, length: length) }
                let string = try memory.load64(entry + 16)
                let commandLine = string == 0 ? [] : try memory.loadString(string, limit: Self.commandLineLimit)
                info.modules.append(BootModule(start: start, length: length, commandLine: commandLine))
            }
        case .unknown:
            break
        }
        return info
    }

    private func checked(_ region: MemoryRegion) throws(BootInfoError) -> MemoryRegion {
        guard region.start &+ region.length >= region.start else {
            throw .regionOverflows(start: region.start, length: region.length)
        }
        return region
    }

    private func multibootMemoryMap(_ body: (MemoryRegion) -> Void) throws(BootInfoError) {
        let flags = try memory.load32(infoAddress)
        if flags & (1 << 6) != 0 {
            let length = UInt64(try memory.load32(infoAddress + 44))
            let address = UInt64(try memory.load32(infoAddress + 48))
            var offset: UInt64 = 0
            var count = 0
            // Each entry: size (u32, excluding itself), base (u64), length (u64), type (u32).
            while offset < length {
                let size = try memory.load32(address + offset)
                guard size >= 20 else { throw .entrySizeTooSmall(size: size) }
                guard offset + 4 + UInt64(size) <= length else { throw .unreadable(address: address + offset + 4 + UInt64(size)) }
                count += 1
                guard count <= Self.entryLimit else {
                    throw .tooManyEntries(what: "multiboot memory map", count: UInt64(count), limit: Self.entryLimit)
                }
                let region = MemoryRegion(
                    start: try memory.load64(address + offset + 4),
                    length: try memory.load64(address + offset + 12),
                    kind: MemoryRegion.Kind(e820Type: try memory.load32(address + offset + 20)))
                body(try checked(region))
                offset += 4 + UInt64(size)
            }
        } else if flags & 1 != 0 {
            // Only mem_lower/mem_upper (KiB): conventional memory and memory above 1 MiB.
            let lower = UInt64(try memory.load32(infoAddress + 4))
            let upper = UInt64(try memory.load32(infoAddress + 8))
            body(MemoryRegion(start: 0, length: lower * 1024, kind: .usable))
            body(MemoryRegion(start: 0x10_0000, length: upper * 1024, kind: .usable))
        } else {
            throw .noMemoryMap
        }
    }

    private func pvhMemoryMap(_ body: (MemoryRegion) -> Void) throws(BootInfoError) {
        let version = try memory.load32(infoAddress + 4)
        guard version >= 1 else { throw .noMemoryMap }
        let count = UInt64(try memory.load32(infoAddress + 48))
        let address = try memory.load64(infoAddress + 40)
        guard count > 0, address != 0 else { throw .noMemoryMap }
        guard count <= UInt64(Self.entryLimit) else {
            throw .tooManyEntries(what: "PVH memory map", count: count, limit: Self.entryLimit)
        }
        // Each entry: addr (u64), size (u64), type (u32), reserved (u32).
        for index in 0..<count {
            let entry = address + index * 24
            let region = MemoryRegion(
                start: try memory.load64(entry),
                length: try memory.load64(entry + 8),
                kind: MemoryRegion.Kind(e820Type: try memory.load32(entry + 16)))
            body(try checked(region))
        }
    }
}
