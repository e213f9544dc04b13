// Host tests of Examples/kvstore's record log (on an in-memory disk with
// damage and failure injection) and its HTTP request parsing and routing.
import Testing

/// A disk in memory; writes at or after `failWritesFrom` fail.
final class MemoryDisk: SectorStore {
    let sectorSize: Int
    let sectorCount: UInt64
    var bytes: [UInt8]
    var failWritesFrom: UInt64? = nil
    var writes = 0
    var flushes = 0

    init(sectorSize: Int = 512, sectorCount: UInt64 = 256) {
        self.sectorSize = sectorSize
        self.sectorCount = sectorCount
        bytes = [UInt8](repeating: 0, count: sectorSize * Int(sectorCount))
    }

    func read(sector: UInt64, count: Int) throws(KVStoreError) -> [UInt8] {
        guard sector + UInt64(count) <= sectorCount else { throw .disk("read past the end") }
        let start = Int(sector) * sectorSize
        return Array(bytes[start..<(start + count * sectorSize)])
    }

    func write(sector: UInt64, _ data: [UInt8]) throws(KVStoreError) {
        guard data.count % sectorSize == 0, sector + UInt64(data.count / sectorSize) <= sectorCount else { throw .disk("bad write") }
        if let limit = failWritesFrom, sector + UInt64(data.count / sectorSize) > limit { throw .disk("injected write failure") }
        let start = Int(sector) * sectorSize
        bytes.replaceSubrange(start..<(start + data.count), with: data)
        writes += 1
    }

    func flush() throws(KVStoreError) { flushes += 1 }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite struct RecordFormatTests {
    @Test func crc32MatchesTheStandardCheckValue() {
        #expect(CRC32.checksum(bytes("123456789")) == 0xCBF4_3926)
        #expect(CRC32.checksum([]) == 0)
    }

    @Test func aRecordRoundTripsInWholeSectors() throws {
        let record = Record(kind: .put, sequence: 0x1_0000_0002, key: bytes("alpha"), value: [UInt8](repeating: 7, count: 600))
        let encoded = record.encoded(sectorSize: 512)
        #expect(encoded.count == 1024)
        let header = try #require(Record.header(encoded[...]))
        #expect(header.keyLength == 5 && header.valueLength == 600 && header.sequence == 0x1_0000_0002)
        #expect(header.sectors(512) == 2)
        #expect(Record.decode(header, encoded[...]) == record)
    }

    @Test func damagedHeadersAndPayloadsAreRejected() throws {
        let encoded = Record(kind: .delete, sequence: 9, key: bytes("k"), value: []).encoded(sectorSize: 512)
        for offset in [0, 4, 6, 8, 12, 20, 24] {
            var damaged = encoded
            damaged[offset] ^= 0x40
            #expect(Record.header(damaged[...]) == nil, "byte \(offset)")
        }
        var payload = encoded
        payload[32] ^= 1
        let header = try #require(Record.header(payload[...]))
        #expect(Record.decode(header, payload[...]) == nil)
        #expect(Record.header([UInt8](repeating: 0, count: 512)[...]) == nil)
    }
}

@Suite struct RecordLogTests {
    @Test func aBlankDiskIsFormattedAndValuesSurviveRecovery() throws {
        let disk = MemoryDisk()
        let log = RecordLog(store: disk)
        let report = try log.recover()
        #expect(report.formatted && report.records == 0 && report.appendSector == 1)
        let big = (0..<1500).map { UInt8($0 % 251) }
        #expect(try log.put(bytes("a"), bytes("one")))
        #expect(try log.put(bytes("big"), big))
        #expect(try !log.put(bytes("a"), bytes("two")))
        #expect(try log.put(bytes("gone"), bytes("x")))
        #expect(try log.delete(bytes("gone")))
        #expect(try !log.delete(bytes("never")))
        #expect(try log.get(bytes("a")) == bytes("two"))
        #expect(try log.get(bytes("big")) == big)
        #expect(disk.flushes >= 6)

        let again = RecordLog(store: disk)
        let second = try again.recover()
        #expect(!second.formatted && second.damage.isEmpty && second.records == 5)
        #expect(second.appendSector == log.appendSector)
        #expect(try again.get(bytes("a")) == bytes("two"))
        #expect(try again.get(bytes("big")) == big)
        #expect(try again.get(bytes("gone")) == nil)
        #expect(again.keyCount == 2)
        // Sequence numbers continue after the recovered ones.
        #expect(try again.put(bytes("c"), bytes("3")))
        #expect(try RecordLog(store: disk).recover().records == 6)
    }

    @Test func aDamagedPayloadIsReportedAndNotServed() throws {
        let disk = MemoryDisk()
        let log = RecordLog(store: disk)
        _ = try log.recover()
        try log.put(bytes("keep"), bytes("safe"))
        try log.put(bytes("bad"), bytes("original"))
        try log.put(bytes("bad"), bytes("newer value"))
        try log.put(bytes("after"), bytes("still here"))
        let damagedSector = try #require(log.index[bytes("bad")]).sector
        disk.bytes[Int(damagedSector) * 512 + 32 + 3 + 2] ^= 0xFF  // inside the value

        let again = RecordLog(store: disk)
        let report = try again.recover()
        #expect(report.damage == [.payloadChecksum(sector: damagedSector, sectors: 1, key: bytes("bad"))])
        #expect(report.records == 3)
        #expect(try again.get(bytes("bad")) == bytes("original"), "the damaged newer record is skipped")
        #expect(try again.get(bytes("keep")) == bytes("safe"))
        #expect(try again.get(bytes("after")) == bytes("still here"))
        // New records go after everything, damaged ones included.
        #expect(report.appendSector == log.appendSector)
    }

    @Test func aDamagedHeaderLosesOnlyItsRecord() throws {
        let disk = MemoryDisk()
        let log = RecordLog(store: disk)
        _ = try log.recover()
        try log.put(bytes("first"), [UInt8](repeating: 1, count: 1000))
        try log.put(bytes("second"), [UInt8](repeating: 2, count: 1000))
        try log.put(bytes("third"), bytes("3"))
        let second = try #require(log.index[bytes("second")])
        disk.bytes[Int(second.sector) * 512] ^= 0xFF  // the magic

        let again = RecordLog(store: disk)
        let report = try again.recover()
        #expect(report.damage == [.unreadableSectors(first: second.sector, count: 3)])
        #expect(try again.get(bytes("second")) == nil)
        #expect(try again.get(bytes("first")) == [UInt8](repeating: 1, count: 1000))
        #expect(try again.get(bytes("third")) == bytes("3"))
        #expect(report.appendSector == log.appendSector)

        // A damaged last record: appends go after it, never over it.
        let tail = MemoryDisk()
        let tailLog = RecordLog(store: tail)
        _ = try tailLog.recover()
        try tailLog.put(bytes("x"), [UInt8](repeating: 9, count: 700))
        let end = tailLog.appendSector
        tail.bytes[512 + 24] ^= 1  // header checksum
        let recovered = RecordLog(store: tail)
        #expect(try recovered.recover().appendSector == end)
    }

    @Test func foreignDisksAndBadSizesAreRefused() {
        let disk = MemoryDisk()
        disk.bytes[0] = 0x7F
        #expect(throws: KVStoreError.notAStore) { try RecordLog(store: disk).recover() }
        #expect(throws: KVStoreError.unsupportedSectorSize(512)) { try RecordLog(store: MemoryDisk(sectorCount: 1)).recover() }
    }

    @Test func aFullDiskOrAFailedWriteChangesNothing() throws {
        let disk = MemoryDisk(sectorCount: 4)
        let log = RecordLog(store: disk)
        _ = try log.recover()
        try log.put(bytes("k"), bytes("v1"))
        #expect(throws: KVStoreError.full(needed: 1536, available: 1024)) { try log.put(bytes("k"), [UInt8](repeating: 0, count: 1200)) }
        #expect(try log.get(bytes("k")) == bytes("v1"))

        disk.failWritesFrom = 2
        #expect(throws: KVStoreError.disk("injected write failure")) { try log.put(bytes("k"), bytes("v2")) }
        #expect(try log.get(bytes("k")) == bytes("v1"))
        #expect(log.appendSector == 2)
        disk.failWritesFrom = nil
        try log.put(bytes("k"), bytes("v3"))
        #expect(try RecordLog(store: disk).recover().records == 2)
    }

    @Test func keysAndValuesAreBounded() {
        let log = RecordLog(store: MemoryDisk())
        #expect(throws: KVStoreError.emptyKey) { try log.put([], bytes("v")) }
        #expect(throws: KVStoreError.keyTooLong(251)) { try log.put([UInt8](repeating: 65, count: 251), bytes("v")) }
        #expect(throws: KVStoreError.valueTooLarge((1 << 20) + 1)) { try log.put(bytes("k"), [UInt8](repeating: 0, count: (1 << 20) + 1)) }
    }

    @Test func aReadBackThatFailsItsChecksumIsAnError() throws {
        let disk = MemoryDisk()
        let log = RecordLog(store: disk)
        _ = try log.recover()
        try log.put(bytes("k"), bytes("value"))
        disk.bytes[512 + 33] ^= 1
        #expect(throws: KVStoreError.corrupt(sector: 1)) { try log.get(bytes("k")) }
    }
}

@Suite struct HTTPParserTests {
    func request(_ text: String, maximumBody: Int = 1024) -> (HTTPRequest, Int)? {
        if case .request(let request, let consumed) = HTTPParser.parse(bytes(text), maximumBody: maximumBody) { return (request, consumed) }
        return nil
    }

    func status(_ text: String, maximumBody: Int = 1024) -> Int? {
        if case .invalid(let status, _) = HTTPParser.parse(bytes(text), maximumBody: maximumBody) { return status }
        return nil
    }

    @Test func aGetIsParsed() throws {
        let (parsed, consumed) = try #require(request("GET /k/a HTTP/1.1\r\nHost: x\r\nUser-Agent:  curl \r\n\r\nextra"))
        #expect(parsed.method == bytes("GET") && parsed.target == bytes("/k/a") && parsed.minorVersion == 1)
        #expect(parsed.field(bytes("user-agent")) == bytes("curl"))
        #expect(parsed.keepAlive)
        #expect(consumed == 50)
    }

    @Test func bodiesFollowContentLength() throws {
        let text = "PUT /k/b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\n\r\n"
        let (parsed, consumed) = try #require(request(text))
        #expect(parsed.body == bytes("hello"))
        let rest = Array(bytes(text)[consumed...])
        guard case .request(let next, _) = HTTPParser.parse(rest, maximumBody: 10) else {
            Issue.record("pipelined request not parsed")
            return
        }
        #expect(next.target == bytes("/") && !next.keepAlive)
        guard case .incomplete(false) = HTTPParser.parse(bytes("PUT /k/b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"), maximumBody: 10) else {
            Issue.record("partial body not incomplete")
            return
        }
        guard case .incomplete(false) = HTTPParser.parse(bytes("GET /k/b HTTP/1.1\r\nHost"), maximumBody: 10) else {
            Issue.record("partial header not incomplete")
            return
        }
    }

    @Test func expectContinueIsReported() {
        guard case .incomplete(true) = HTTPParser.parse(bytes("PUT /k/b HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n"), maximumBody: 10) else {
            Issue.record("expected a continue request")
            return
        }
    }

    @Test func badRequestsGetTheirStatus() {
        #expect(status("GET /\r\n\r\n") == 400)
        #expect(status("GET / HTTP/2.0\r\n\r\n") == 505)
        #expect(status("PUT /k/a HTTP/1.1\r\nContent-Length: 2000\r\n\r\n") == 413)
        #expect(status("PUT /k/a HTTP/1.1\r\nContent-Length: x\r\n\r\n") == 400)
        #expect(status("PUT /k/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab") == 400)
        #expect(status("PUT /k/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 501)
        #expect(status("GET / HTTP/1.1\r\nno colon here\r\n\r\n") == 400)
        #expect(status("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000)) == 431)
    }

    @Test func connectionFieldDecidesKeepAlive() throws {
        #expect(try #require(request("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")).0.keepAlive == false)
        #expect(try #require(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")).0.keepAlive)
    }

    @Test func routes() {
        #expect(Route.of(method: bytes("GET"), target: bytes("/k/abc-1.2_3~")).matches(.get(key: bytes("abc-1.2_3~"))))
        #expect(Route.of(method: bytes("PUT"), target: bytes("/k/a")).matches(.put(key: bytes("a"))))
        #expect(Route.of(method: bytes("DELETE"), target: bytes("/k/a")).matches(.delete(key: bytes("a"))))
        #expect(Route.of(method: bytes("PATCH"), target: bytes("/k/a")).matches(.methodNotAllowed(allowed: "GET, HEAD, PUT, POST, DELETE")))
        #expect(Route.of(method: bytes("GET"), target: bytes("/k/")).matches(.badKey))
        #expect(Route.of(method: bytes("GET"), target: bytes("/k/a/b")).matches(.badKey))
        #expect(Route.of(method: bytes("GET"), target: bytes("/k/" + String(repeating: "x", count: 251))).matches(.badKey))
        #expect(Route.of(method: bytes("GET"), target: bytes("/quit")).matches(.quit))
        #expect(Route.of(method: bytes("GET"), target: bytes("/stats")).matches(.stats))
        #expect(Route.of(method: bytes("GET"), target: bytes("/")).matches(.notFound))
        #expect(!Route.of(method: bytes("GET"), target: bytes("/k/a")).matches(.get(key: bytes("b"))))
    }
}
