// RecordLog: kvstore's on-disk format, an append-only log of checksummed
// records in whole sectors, and its recovery scan. Plain Swift (no platform
// imports), so host unit tests run it on an in-memory disk
// (Tests/KVStoreTests links this file).
//
// Sector 0 holds the superblock; records follow from sector 1, each one
// starting on a sector boundary:
//
//   0  magic "KVR1" (u32 LE 0x3152564B)   4  kind (1 put, 2 delete)
//   5  reserved 0                          6  key length (u16 LE)
//   8  value length (u32 LE)              12  sequence number (u64 LE)
//  20  CRC-32 of key + value              24  CRC-32 of bytes 0..<24
//  28  reserved 0                         32  key, value, zero padding
//
// Recovery reads the whole disk: a record whose header checks out is applied
// (latest sequence wins) or, when its payload checksum fails, reported and
// skipped by its length; sectors that start no valid record are reported as
// damaged when they are not all zeros. New records go after the last record
// whose header checked out, so nothing recoverable is ever overwritten.

/// Why a store operation failed.
enum KVStoreError: Error, Equatable {
    /// The disk failed (description from the platform).
    case disk(String)
    /// Sector 0 holds something that is not a kvstore superblock.
    case notAStore
    /// The disk's sectors are too small or too large for this format.
    case unsupportedSectorSize(Int)
    /// No room left on the disk for the record.
    case full(needed: Int, available: UInt64)
    case emptyKey
    case keyTooLong(Int)
    case valueTooLarge(Int)
    /// A record failed its checksum when read back.
    case corrupt(sector: UInt64)
}

/// Sector-granular storage under the log (a StorageDevice in the guest, an
/// array in tests).
protocol SectorStore {
    var sectorSize: Int { get }
    var sectorCount: UInt64 { get }
    func read(sector: UInt64, count: Int) throws(KVStoreError) -> [UInt8]
    func write(sector: UInt64, _ bytes: [UInt8]) throws(KVStoreError)
    func flush() throws(KVStoreError)
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0xEDB8_8320 : value >> 1 }
        return value
    }

    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var value = ~crc
        table.withUnsafeBufferPointer { table in
            for byte in bytes { value = table[Int((value ^ UInt32(byte)) & 0xFF)] ^ (value >> 8) }
        }
        return ~value
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { update(0, $0) } }

    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 { bytes.withUnsafeBytes { update(0, $0) } }
}

/// One record of the log.
struct Record: Equatable {
    enum Kind: UInt8 {
        case put = 1
        case delete = 2
    }

    static var magic: UInt32 { 0x3152_564B }
    static var headerSize: Int { 32 }
    static var maximumKeyLength: Int { 250 }
    static var maximumValueLength: Int { 1 << 20 }

    var kind: Kind
    var sequence: UInt64
    var key: [UInt8]
    var value: [UInt8]

    /// The record in whole sectors of `sectorSize` bytes.
    func encoded(sectorSize: Int) -> [UInt8] {
        let length = Self.headerSize + key.count + value.count
        var bytes = [UInt8](repeating: 0, count: (length + sectorSize - 1) / sectorSize * sectorSize)
        Self.store32(Self.magic, at: 0, in: &bytes)
        bytes[4] = kind.rawValue
        bytes[6] = UInt8(truncatingIfNeeded: key.count)
        bytes[7] = UInt8(truncatingIfNeeded: key.count >> 8)
        Self.store32(UInt32(value.count), at: 8, in: &bytes)
        Self.store32(UInt32(truncatingIfNeeded: sequence), at: 12, in: &bytes)
        Self.store32(UInt32(truncatingIfNeeded: sequence >> 32), at: 16, in: &bytes)
        for index in 0..<key.count { bytes[Self.headerSize + index] = key[index] }
        for index in 0..<value.count { bytes[Self.headerSize + key.count + index] = value[index] }
        Self.store32(CRC32.checksum(bytes[Self.headerSize..<length]), at: 20, in: &bytes)
        Self.store32(CRC32.checksum(bytes[0..<24]), at: 24, in: &bytes)
        return bytes
    }

    /// What a sector's first bytes say about the record starting there.
    struct Header: Equatable {
        var kind: Kind
        var keyLength: Int
        var valueLength: Int
        var sequence: UInt64
        var payloadChecksum: UInt32

        var length: Int { Record.headerSize + keyLength + valueLength }
        func sectors(_ sectorSize: Int) -> Int { (length + sectorSize - 1) / sectorSize }
    }

    /// The header at the start of `bytes` (at least 32 bytes), or nil when
    /// the magic, the header checksum, the kind or a length is wrong.
    static func header(_ bytes: ArraySlice<UInt8>) -> Header? {
        guard bytes.count >= headerSize else { return nil }
        let base = bytes.startIndex
        guard load32(bytes, base) == magic else { return nil }
        guard load32(bytes, base + 24) == CRC32.checksum(bytes[base..<(base + 24)]) else { return nil }
        guard let kind = Kind(rawValue: bytes[base + 4]) else { return nil }
        let keyLength = Int(bytes[base + 6]) | Int(bytes[base + 7]) << 8
        let valueLength = Int(load32(bytes, base + 8))
        guard keyLength >= 1, keyLength <= maximumKeyLength, valueLength <= maximumValueLength else { return nil }
        let sequence = UInt64(load32(bytes, base + 12)) | UInt64(load32(bytes, base + 16)) << 32
        return Header(kind: kind, keyLength: keyLength, valueLength: valueLength, sequence: sequence, payloadChecksum: load32(bytes, base + 20))
    }

    /// The record in `bytes` (its whole sectors) when the payload checksum
    /// matches the header's.
    static func decode(_ header: Header, _ bytes: ArraySlice<UInt8>) -> Record? {
        let base = bytes.startIndex
        guard bytes.count >= header.length else { return nil }
        let payload = bytes[(base + headerSize)..<(base + header.length)]
        guard CRC32.checksum(payload) == header.payloadChecksum else { return nil }
        let key = Array(payload.prefix(header.keyLength))
        let value = Array(payload.dropFirst(header.keyLength))
        return Record(kind: header.kind, sequence: header.sequence, key: key, value: value)
    }

    static func store32(_ value: UInt32, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
    }

    static func load32(_ bytes: ArraySlice<UInt8>, _ offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<4 { value |= UInt32(bytes[offset + index]) << (8 * UInt32(index)) }
        return value
    }
}

/// What recovery found.
struct RecoveryReport: Equatable {
    enum Damage: Equatable {
        /// A record whose header is intact but whose key/value failed the checksum.
        case payloadChecksum(sector: UInt64, sectors: Int, key: [UInt8])
        /// Sectors that start no valid record and are not all zeros.
        case unreadableSectors(first: UInt64, count: UInt64)
    }

    var records = 0
    var damage: [Damage] = []
    /// Where the next record goes.
    var appendSector: UInt64 = 1
    /// Whether the superblock was written now (a blank disk).
    var formatted = false
}

/// The key-value log on a SectorStore. Not thread-safe: callers serialize.
final class RecordLog<Store: SectorStore> {
    struct Entry {
        var sector: UInt64
        var sectors: Int
        var sequence: UInt64
        var valueLength: Int
    }

    static var superblockMagic: [UInt8] { Array("KVSTORE1".utf8) }
    /// Bytes read per request during recovery.
    static var scanChunk: Int { 64 * 1024 }

    let store: Store
    var index: [[UInt8]: Entry] = [:]
    var nextSequence: UInt64 = 1
    var appendSector: UInt64 = 1
    var report = RecoveryReport()

    init(store: Store) { self.store = store }

    var keyCount: Int { index.count }
    var freeBytes: UInt64 { (store.sectorCount - appendSector) * UInt64(store.sectorSize) }

    /// Checks or writes the superblock, then rebuilds the index from the log.
    func recover() throws(KVStoreError) -> RecoveryReport {
        let sectorSize = store.sectorSize
        guard sectorSize >= 64, sectorSize <= 65536, store.sectorCount >= 2 else { throw .unsupportedSectorSize(sectorSize) }
        var report = RecoveryReport()
        let superblock = try store.read(sector: 0, count: 1)
        if superblock.allSatisfy({ $0 == 0 }) {
            try store.write(sector: 0, Self.superblock(sectorSize: sectorSize))
            try store.flush()
            report.formatted = true
        } else if !superblock.starts(with: Self.superblockMagic) {
            throw .notAStore
        }
        index = [:]
        nextSequence = 1
        var sector: UInt64 = 1
        var damagedStart: UInt64? = nil
        var logEnd: UInt64 = 1
        var window = SectorWindow(store: store, chunkSectors: Self.scanChunk / sectorSize)
        func closeDamage(at end: UInt64) {
            if let start = damagedStart { report.damage.append(.unreadableSectors(first: start, count: end - start)) }
            damagedStart = nil
        }
        while sector < store.sectorCount {
            let first = try window.sectors(sector, count: 1)
            if let header = Record.header(first) {
                let count = header.sectors(sectorSize)
                if sector + UInt64(count) <= store.sectorCount {
                    closeDamage(at: sector)
                    let bytes = try window.sectors(sector, count: count)
                    if let record = Record.decode(header, bytes) {
                        apply(record, sector: sector, sectors: count)
                        report.records += 1
                    } else {
                        let key = Array(bytes[(bytes.startIndex + Record.headerSize)..<(bytes.startIndex + Record.headerSize + header.keyLength)])
                        report.damage.append(.payloadChecksum(sector: sector, sectors: count, key: key))
                        nextSequence = max(nextSequence, header.sequence + 1)
                    }
                    sector += UInt64(count)
                    logEnd = sector
                    continue
                }
            }
            if first.allSatisfy({ $0 == 0 }) {
                closeDamage(at: sector)
            } else if damagedStart == nil {
                damagedStart = sector
            }
            sector += 1
        }
        closeDamage(at: sector)
        // Damaged sectors past the last record may be a record whose header
        // broke: leave them alone and append after them.
        for damage in report.damage {
            if case .unreadableSectors(let start, let count) = damage { logEnd = max(logEnd, start + count) }
        }
        appendSector = logEnd
        report.appendSector = logEnd
        self.report = report
        return report
    }

    func apply(_ record: Record, sector: UInt64, sectors: Int) {
        nextSequence = max(nextSequence, record.sequence + 1)
        if let existing = index[record.key], existing.sequence > record.sequence { return }
        switch record.kind {
        case .put:
            index[record.key] = Entry(sector: sector, sectors: sectors, sequence: record.sequence, valueLength: record.value.count)
        case .delete:
            index.removeValue(forKey: record.key)
        }
    }

    static func superblock(sectorSize: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: sectorSize)
        for (offset, byte) in superblockMagic.enumerated() { bytes[offset] = byte }
        Record.store32(1, at: 8, in: &bytes)
        Record.store32(UInt32(sectorSize), at: 12, in: &bytes)
        Record.store32(CRC32.checksum(bytes[0..<16]), at: 16, in: &bytes)
        return bytes
    }

    static func validate(key: [UInt8]) throws(KVStoreError) {
        if key.isEmpty { throw .emptyKey }
        if key.count > Record.maximumKeyLength { throw .keyTooLong(key.count) }
    }

    /// Appends a record (write, then flush: durable when this returns).
    func append(_ record: Record) throws(KVStoreError) -> (sector: UInt64, sectors: Int) {
        let bytes = record.encoded(sectorSize: store.sectorSize)
        let sectors = bytes.count / store.sectorSize
        guard appendSector + UInt64(sectors) <= store.sectorCount else { throw .full(needed: bytes.count, available: freeBytes) }
        let sector = appendSector
        try store.write(sector: sector, bytes)
        try store.flush()
        appendSector += UInt64(sectors)
        nextSequence += 1
        return (sector, sectors)
    }

    /// Stores `value` under `key`; true when the key is new.
    @discardableResult
    func put(_ key: [UInt8], _ value: [UInt8]) throws(KVStoreError) -> Bool {
        try Self.validate(key: key)
        if value.count > Record.maximumValueLength { throw .valueTooLarge(value.count) }
        let record = Record(kind: .put, sequence: nextSequence, key: key, value: value)
        let place = try append(record)
        let isNew = index[key] == nil
        index[key] = Entry(sector: place.sector, sectors: place.sectors, sequence: record.sequence, valueLength: value.count)
        return isNew
    }

    /// Removes `key`; false when it was not there (nothing is written).
    func delete(_ key: [UInt8]) throws(KVStoreError) -> Bool {
        try Self.validate(key: key)
        guard index[key] != nil else { return false }
        _ = try append(Record(kind: .delete, sequence: nextSequence, key: key, value: []))
        index.removeValue(forKey: key)
        return true
    }

    /// The value of `key` read back from the disk and checked; nil when absent.
    func get(_ key: [UInt8]) throws(KVStoreError) -> [UInt8]? {
        guard let entry = index[key] else { return nil }
        let bytes = try store.read(sector: entry.sector, count: entry.sectors)
        guard let header = Record.header(bytes[...]), let record = Record.decode(header, bytes[...]), record.key == key else {
            throw .corrupt(sector: entry.sector)
        }
        return record.value
    }
}

/// Reads a store in large chunks and hands out sector ranges from them.
struct SectorWindow<Store: SectorStore> {
    let store: Store
    let chunkSectors: Int
    var start: UInt64 = 0
    var bytes: [UInt8] = []

    init(store: Store, chunkSectors: Int) {
        self.store = store
        self.chunkSectors = max(1, chunkSectors)
    }

    /// `count` sectors from `sector` (inside the store).
    mutating func sectors(_ sector: UInt64, count: Int) throws(KVStoreError) -> ArraySlice<UInt8> {
        let size = store.sectorSize
        let loaded = UInt64(bytes.count / size)
        if sector < start || sector + UInt64(count) > start + loaded {
            let available = store.sectorCount - sector
            let wanted = UInt64(max(count, chunkSectors))
            let read = Int(min(wanted, available))
            bytes = try store.read(sector: sector, count: read)
            start = sector
        }
        let offset = Int(sector - start) * size
        return bytes[offset..<(offset + count * size)]
    }
}
