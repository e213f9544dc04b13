// IPv4 fragment reassembly: ordering, overlaps, limits and timeout (RFC 791 §3.2, RFC 815).
import Testing
@testable import NetStack

func fragmentHeader(id: UInt16 = 1, offset: Int, more: Bool) -> IPv4Header {
    var header = IPv4Header(protocol: .udp, source: IPv4Address(10, 0, 0, 2), destination: IPv4Address(10, 0, 0, 1))
    header.identification = id
    header.fragmentOffset = UInt16(offset / 8)
    header.moreFragments = more
    return header
}

@Test func fragmentsInAnyOrderReassemble() throws {
    var reassembler = IPv4Reassembler()
    let data = (0..<40).map { UInt8($0) }
    #expect(try reassembler.add(header: fragmentHeader(offset: 32, more: false), payload: data[32...], now: 0) == nil)
    #expect(try reassembler.add(header: fragmentHeader(offset: 0, more: true), payload: data[0..<16], now: 0) == nil)
    // An exact duplicate is ignored.
    #expect(try reassembler.add(header: fragmentHeader(offset: 0, more: true), payload: data[0..<16], now: 0) == nil)
    let whole = try #require(try reassembler.add(header: fragmentHeader(offset: 16, more: true), payload: data[16..<32], now: 0))
    #expect(whole.payload == data)
    #expect(!whole.header.isFragment && Int(whole.header.totalLength) == 20 + 40)
    #expect(reassembler.heldBytes == 0 && reassembler.datagramsInProgress == 0)
}

@Test func overlappingFragmentsDiscardTheDatagram() throws {
    var reassembler = IPv4Reassembler()
    let data = [UInt8](repeating: 1, count: 32)
    _ = try reassembler.add(header: fragmentHeader(offset: 0, more: true), payload: data[0..<16], now: 0)
    #expect(throws: ReassemblyDrop.overlap) { try reassembler.add(header: fragmentHeader(offset: 8, more: true), payload: data[0..<16], now: 0) }
    #expect(reassembler.datagramsInProgress == 0 && reassembler.heldBytes == 0)
    // The rest of that datagram cannot complete it any more.
    #expect(try reassembler.add(header: fragmentHeader(offset: 16, more: false), payload: data[0..<16], now: 0) == nil)
}

@Test func malformedFragmentsAreRejected() {
    var reassembler = IPv4Reassembler()
    let data = [UInt8](repeating: 1, count: 64)
    // A non-final fragment must carry a multiple of 8 bytes.
    #expect(throws: ReassemblyDrop.tooLarge) { try reassembler.add(header: fragmentHeader(offset: 0, more: true), payload: data[0..<12], now: 0) }
    // Beyond 65535 bytes in total (offset 8184*8 + 64).
    #expect(throws: ReassemblyDrop.tooLarge) { try reassembler.add(header: fragmentHeader(offset: 8184 * 8, more: false), payload: data[...], now: 0) }
    // Two different ends.
    _ = try? reassembler.add(header: fragmentHeader(id: 2, offset: 16, more: false), payload: data[0..<8], now: 0)
    #expect(throws: ReassemblyDrop.inconsistent) { try reassembler.add(header: fragmentHeader(id: 2, offset: 32, more: false), payload: data[0..<8], now: 0) }
    // Data past a known end.
    _ = try? reassembler.add(header: fragmentHeader(id: 3, offset: 16, more: false), payload: data[0..<8], now: 0)
    #expect(throws: ReassemblyDrop.inconsistent) { try reassembler.add(header: fragmentHeader(id: 3, offset: 24, more: true), payload: data[0..<8], now: 0) }
}

@Test func reassemblyMemoryIsBoundedAndTimesOut() throws {
    var configuration = ReassemblyConfiguration()
    configuration.maximumDatagrams = 4
    configuration.maximumBytes = 1000
    configuration.timeout = 30
    var reassembler = IPv4Reassembler(configuration: configuration)
    let data = [UInt8](repeating: 1, count: 200)
    // A flood of first fragments that never complete.
    var refused = 0
    for id in 0..<100 {
        do {
            _ = try reassembler.add(header: fragmentHeader(id: UInt16(id), offset: 0, more: true), payload: data[...], now: UInt64(id % 10))
        } catch {
            refused += 1
        }
        #expect(reassembler.datagramsInProgress <= 4 && reassembler.heldBytes <= 1000)
    }
    #expect(refused == 96)
    #expect(reassembler.nextDeadline == 30)
    reassembler.expire(now: 39)
    #expect(reassembler.datagramsInProgress == 0 && reassembler.heldBytes == 0)
}
