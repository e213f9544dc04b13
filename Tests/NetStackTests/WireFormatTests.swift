// Tests of the header parsers and builders against hand-computed vectors (RFC 1071, 791, 792, 768, 826, 9293, 7323).
import Testing
@testable import NetStack

/// Bytes from a hex string with optional spaces.
func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var high: UInt8? = nil
    for character in text.utf8 where character != UInt8(ascii: " ") {
        let digit: UInt8 = character <= UInt8(ascii: "9") ? character - UInt8(ascii: "0") : (character | 0x20) - UInt8(ascii: "a") + 10
        if let h = high {
            bytes.append(h << 4 | digit)
            high = nil
        } else {
            high = digit
        }
    }
    return bytes
}

@Test func checksumMatchesRFC1071Example() {
    // RFC 1071 §3: 0001 + f203 + f4f5 + f6f7 = 2ddf0, folded ddf2, complemented 220d.
    #expect(InternetChecksum.of(hex("00 01 f2 03 f4 f5 f6 f7")[...]) == 0x220D)
    // Split at an odd boundary, the sum must not change.
    var split = InternetChecksum()
    split.add(hex("00 01 f2")[...])
    split.add(hex("03 f4 f5 f6 f7")[...])
    #expect(split.value == 0x220D)
    // Odd length pads with a zero byte: 0x0100 + 0x0200 -> 0x0300, complement fcff.
    #expect(InternetChecksum.of([0x01, 0x00, 0x02][...]) == 0xFCFF)
}

/// The word-at-a-time sum against the definition (big-endian 16-bit words,
/// odd tail padded), for every length up to 80 and longer random buffers,
/// whole and split into pieces at random (odd) boundaries.
@Test func checksumEqualsTheByteWiseDefinition() {
    func reference(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt64 = 0
        var index = 0
        while index < bytes.count {
            sum += UInt64(bytes[index]) << 8 | (index + 1 < bytes.count ? UInt64(bytes[index + 1]) : 0)
            index += 2
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }
    var generator = SystemRandomNumberGenerator()
    var lengths = Array(0...80) + [1459, 1460, 1500, 9000, 65535]
    for _ in 0..<50 { lengths.append(Int.random(in: 81...4000, using: &generator)) }
    for length in lengths {
        for pattern in 0..<3 {
            let bytes: [UInt8] = (0..<length).map { index in
                switch pattern {
                case 0: return UInt8.random(in: 0...255, using: &generator)
                case 1: return 0xFF
                default: return UInt8(truncatingIfNeeded: index)
                }
            }
            #expect(InternetChecksum.of(bytes[...]) == reference(bytes), "length \(length) pattern \(pattern)")
            var pieces = InternetChecksum()
            var start = 0
            while start < length {
                let end = min(length, start + Int.random(in: 1...37, using: &generator))
                pieces.add(bytes[start..<end])
                start = end
            }
            #expect(pieces.value == reference(bytes), "length \(length) in pieces")
        }
    }
    #expect(InternetChecksum.of([UInt8](repeating: 0, count: 64)[...]) == 0xFFFF)
}

@Test func ipv4HeaderChecksumKnownVector() throws {
    // 4500+0073+0000+4000+4011+c0a8+0001+c0a8+00c7 = 2479c -> 479e -> ~ = b861.
    let bytes = hex("45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7") + [UInt8](repeating: 0xAB, count: 0x73 - 20)
    let (header, payload) = try IPv4Header.parse(bytes[...])
    #expect(header.source == IPv4Address(192, 168, 0, 1))
    #expect(header.destination == IPv4Address(192, 168, 0, 199))
    #expect(header.protocol == .udp)
    #expect(header.timeToLive == 64)
    #expect(header.dontFragment && !header.moreFragments && header.fragmentOffset == 0)
    #expect(payload.count == 0x73 - 20)
    var built: [UInt8] = []
    header.write(to: &built)
    #expect(built == Array(bytes[0..<20]))
}

@Test func ipv4RoundTripWithOptionsAndFragmentFields() throws {
    var header = IPv4Header(protocol: .tcp, source: IPv4Address(10, 0, 0, 1), destination: IPv4Address(10, 0, 0, 2), timeToLive: 7)
    header.options = [0x94, 0x04, 0x00]  // router alert, 3 bytes: padded to 4
    header.identification = 0xBEEF
    header.moreFragments = true
    header.fragmentOffset = 185
    header.totalLength = UInt16(header.headerLength + 4)
    var bytes: [UInt8] = []
    header.write(to: &bytes)
    #expect(bytes.count == 24)
    #expect(bytes[0] == 0x46)
    bytes += [1, 2, 3, 4]
    let (parsed, payload) = try IPv4Header.parse(bytes[...])
    #expect(parsed.options == [0x94, 0x04, 0x00, 0x00])
    #expect(parsed.identification == 0xBEEF && parsed.moreFragments && parsed.fragmentOffset == 185 && parsed.timeToLive == 7)
    #expect(Array(payload) == [1, 2, 3, 4])
}

@Test func ipv4ParserRejectsBadInput() {
    let good = hex("45 00 00 14 00 00 40 00 40 11 00 00 c0 a8 00 01 c0 a8 00 c7")
    #expect(throws: PacketError.truncated(.ipv4, needed: 20, available: 19)) { try IPv4Header.parse(good[0..<19]) }
    var version6 = good
    version6[0] = 0x65
    #expect(throws: PacketError.unsupported(.ipv4, value: 6)) { try IPv4Header.parse(version6[...]) }
    var shortIHL = good
    shortIHL[0] = 0x44
    #expect(throws: PacketError.badLength(.ipv4, field: 16, available: 20)) { try IPv4Header.parse(shortIHL[...]) }
    var longIHL = good
    longIHL[0] = 0x4F
    #expect(throws: PacketError.truncated(.ipv4, needed: 60, available: 20)) { try IPv4Header.parse(longIHL[...]) }
    var longTotal = good
    longTotal[3] = 0x40
    #expect(throws: PacketError.badLength(.ipv4, field: 64, available: 20)) { try IPv4Header.parse(longTotal[...]) }
    // Checksum field zero: the sum over the header is 4500+0014+4000+4011+c0a8+0001+c0a8+00c7 = 2473d -> 473f, so the check computes ~473f = b8c0.
    #expect(throws: PacketError.badChecksum(.ipv4, computed: 0xB8C0)) { try IPv4Header.parse(good[...]) }
}

@Test func ethernetRoundTripAndErrors() throws {
    let header = EthernetHeader(destination: .broadcast, source: MACAddress(2, 0, 0, 0, 0, 1), etherType: .arp)
    var bytes: [UInt8] = []
    header.write(to: &bytes)
    #expect(bytes == hex("ff ff ff ff ff ff 02 00 00 00 00 01 08 06"))
    let (parsed, payload) = try EthernetHeader.parse((bytes + [9])[...])
    #expect(parsed == header)
    #expect(Array(payload) == [9])
    #expect(throws: PacketError.truncated(.ethernet, needed: 14, available: 13)) { try EthernetHeader.parse(bytes[0..<13]) }
    var llc = bytes
    llc[12] = 0x00
    llc[13] = 0x40
    #expect(throws: PacketError.unsupported(.ethernet, value: 0x40)) { try EthernetHeader.parse(llc[...]) }
}

@Test func arpRoundTripKnownLayout() throws {
    let packet = ARPPacket(operation: .request, senderHardwareAddress: MACAddress(2, 0, 0, 0, 0, 1), senderProtocolAddress: IPv4Address(10, 0, 0, 1), targetHardwareAddress: MACAddress(0, 0, 0, 0, 0, 0), targetProtocolAddress: IPv4Address(10, 0, 0, 2))
    var bytes: [UInt8] = []
    packet.write(to: &bytes)
    // RFC 826 layout: htype 1, ptype 0800, hlen 6, plen 4, op 1, sha, spa, tha, tpa.
    #expect(bytes == hex("0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a000002"))
    #expect(try ARPPacket.parse(bytes[...]) == packet)
    #expect(throws: PacketError.truncated(.arp, needed: 28, available: 27)) { try ARPPacket.parse(bytes[0..<27]) }
    var badOperation = bytes
    badOperation[7] = 9
    #expect(throws: PacketError.unsupported(.arp, value: 9)) { try ARPPacket.parse(badOperation[...]) }
    var badLength = bytes
    badLength[4] = 8
    #expect(throws: PacketError.badLength(.arp, field: 8, available: 6)) { try ARPPacket.parse(badLength[...]) }
    #expect(ARPPacket.announcement(of: IPv4Address(10, 0, 0, 1), from: MACAddress(2, 0, 0, 0, 0, 1)).isGratuitous)
}

@Test func icmpEchoKnownChecksum() throws {
    // 0800 + 0000 + 0001 + 0001 + 6162 + 6364 = ccc8 -> ~ = 3337.
    var bytes: [UInt8] = []
    ICMPMessage.echoRequest(identifier: 1, sequence: 1, data: Array("abcd".utf8)).write(to: &bytes)
    #expect(bytes == hex("08 00 33 37 00 01 00 01 61 62 63 64"))
    let parsed = try ICMPMessage.parse(bytes[...])
    #expect(parsed.type == 8 && parsed.identifier == 1 && parsed.sequence == 1 && parsed.body == Array("abcd".utf8))
    var corrupted = bytes
    corrupted[11] ^= 1
    #expect(throws: PacketError.badChecksum(.icmp, computed: 0xFFFE)) { try ICMPMessage.parse(corrupted[...]) }
    #expect(throws: PacketError.truncated(.icmp, needed: 8, available: 7)) { try ICMPMessage.parse(bytes[0..<7]) }
}

@Test func icmpUnreachableQuotesHeaderAndEightBytes() {
    let datagram = [UInt8](0..<40)
    let message = ICMPMessage.destinationUnreachable(.port, quoting: datagram[...], headerLength: 20)
    #expect(message.type == 3 && message.code == 3 && message.body == Array(0..<28) && message.isError)
}

@Test func udpKnownChecksumAndRoundTrip() throws {
    // Pseudo-header c0a8+0001+c0a8+00c7+0011+000a = 18233; header 04d2+0050+000a+0000 = 052c;
    // data 6869: total 1efc8 -> efc9 -> ~ = 1036.
    let source = IPv4Address(192, 168, 0, 1)
    let destination = IPv4Address(192, 168, 0, 199)
    let bytes = UDPHeader.datagram(sourcePort: 1234, destinationPort: 80, payload: Array("hi".utf8)[...], source: source, destination: destination)
    #expect(bytes == hex("04 d2 00 50 00 0a 10 36 68 69"))
    let (header, payload) = try UDPHeader.parse(bytes[...], source: source, destination: destination)
    #expect(header.sourcePort == 1234 && header.destinationPort == 80 && header.length == 10 && Array(payload) == Array("hi".utf8))
    // The pseudo-header binds the addresses: a different destination fails.
    #expect(throws: PacketError.self) { try UDPHeader.parse(bytes[...], source: source, destination: IPv4Address(192, 168, 0, 198)) }
    var noChecksum = bytes
    noChecksum[6] = 0
    noChecksum[7] = 0
    #expect(throws: Never.self) { try UDPHeader.parse(noChecksum[...], source: source, destination: IPv4Address(1, 2, 3, 4)) }
    var badLength = bytes
    badLength[5] = 11
    #expect(throws: PacketError.badLength(.udp, field: 11, available: 10)) { try UDPHeader.parse(badLength[...], source: source, destination: destination) }
    badLength[5] = 7
    #expect(throws: PacketError.badLength(.udp, field: 7, available: 10)) { try UDPHeader.parse(badLength[...], source: source, destination: destination) }
    #expect(throws: PacketError.truncated(.udp, needed: 8, available: 5)) { try UDPHeader.parse(bytes[0..<5], source: source, destination: destination) }
}

@Test func tcpSynKnownChecksum() throws {
    // 10.0.0.1:40000 -> 10.0.0.2:80, seq 1, SYN, window ffff, MSS 1460 (020405b4).
    // Pseudo-header 0a00+0001+0a00+0002+0006+0018 = 1421; header words
    // 9c40+0050+0000+0001+0000+0000+6002+ffff+0000+0000+0204+05b4 = 2044a;
    // together 2186b -> 186d -> ~ = e792.
    var header = TCPHeader(sourcePort: 40000, destinationPort: 80, sequenceNumber: 1, acknowledgmentNumber: 0, flags: .syn, window: 0xFFFF)
    header.options.maximumSegmentSize = 1460
    let bytes = header.segment(payload: [], source: IPv4Address(10, 0, 0, 1), destination: IPv4Address(10, 0, 0, 2))
    #expect(bytes == hex("9c40 0050 00000001 00000000 6002 ffff e792 0000 020405b4"))
}

@Test func tcpOptionsRoundTrip() throws {
    let source = IPv4Address(10, 0, 0, 1)
    let destination = IPv4Address(10, 0, 0, 2)
    var header = TCPHeader(sourcePort: 1, destinationPort: 2, sequenceNumber: 0xFFFF_FFF0, acknowledgmentNumber: 77, flags: [.syn, .ack], window: 1234)
    header.options.maximumSegmentSize = 1460
    header.options.windowScale = 7
    header.options.sackPermitted = true
    header.options.timestamps = (0x0102_0304, 0x0A0B_0C0D)
    let bytes = header.segment(payload: [9, 8, 7][...], source: source, destination: destination)
    // MSS(4) + NOP,WS(4) + SACKOK,TS(12) = 20 option bytes: data offset 10 words.
    #expect(bytes[12] == 0xA0)
    #expect(Array(bytes[20..<40]) == hex("020405b4 01030307 0402 080a 01020304 0a0b0c0d"))
    let (parsed, payload) = try TCPHeader.parse(bytes[...], source: source, destination: destination)
    #expect(parsed == header)
    #expect(Array(payload) == [9, 8, 7])

    var sack = TCPHeader(sourcePort: 1, destinationPort: 2, sequenceNumber: 5, acknowledgmentNumber: 6, flags: .ack, window: 1)
    sack.options.sackBlocks = [TCPSackBlock(left: 100, right: 200), TCPSackBlock(left: 300, right: 400)]
    sack.options.timestamps = (1, 2)
    let sackBytes = sack.segment(payload: [], source: source, destination: destination)
    #expect(try TCPHeader.parse(sackBytes[...], source: source, destination: destination).header == sack)
}

@Test func tcpParserRejectsMalformedHeadersAndOptions() throws {
    let source = IPv4Address(10, 0, 0, 1)
    let destination = IPv4Address(10, 0, 0, 2)
    func segment(options: [UInt8]) -> [UInt8] {
        // Builds a header whose option area is exactly `options`, with a valid checksum.
        var bytes = hex("0001 0002 00000005 00000006") + [UInt8((20 + options.count) / 4) << 4, 0x10] + hex("0001 0000 0000") + options
        var sum = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: .tcp, length: bytes.count)
        sum.add(bytes[...])
        bytes[16] = UInt8(sum.value >> 8)
        bytes[17] = UInt8(sum.value & 0xFF)
        return bytes
    }
    let plain = segment(options: [])
    #expect(throws: PacketError.truncated(.tcp, needed: 20, available: 19)) { try TCPHeader.parse(plain[0..<19], source: source, destination: destination) }
    var shortOffset = plain
    shortOffset[12] = 0x40
    #expect(throws: PacketError.badLength(.tcp, field: 16, available: 20)) { try TCPHeader.parse(shortOffset[...], source: source, destination: destination) }
    var longOffset = plain
    longOffset[12] = 0x60
    #expect(throws: PacketError.badLength(.tcp, field: 24, available: 20)) { try TCPHeader.parse(longOffset[...], source: source, destination: destination) }
    // MSS with length 3, an option running past the header, a zero-length option.
    #expect(throws: PacketError.badOption(.tcp, kind: 2, offset: 0)) { try TCPHeader.parse(segment(options: [2, 3, 0, 0])[...], source: source, destination: destination) }
    #expect(throws: PacketError.badOption(.tcp, kind: 8, offset: 1)) { try TCPHeader.parse(segment(options: [1, 8, 10, 0])[...], source: source, destination: destination) }
    #expect(throws: PacketError.badOption(.tcp, kind: 99, offset: 0)) { try TCPHeader.parse(segment(options: [99, 0, 0, 0])[...], source: source, destination: destination) }
    #expect(throws: PacketError.badOption(.tcp, kind: 5, offset: 0)) { try TCPHeader.parse(segment(options: [5, 6, 0, 0, 0, 0, 0, 0])[...], source: source, destination: destination) }
    // Unknown options with a sane length are skipped; EOL ends parsing.
    let unknown = segment(options: [30, 4, 1, 1, 0, 2, 4, 5])
    #expect(try TCPHeader.parse(unknown[...], source: source, destination: destination).header.options == TCPOptions())
    var corrupted = plain
    corrupted[5] ^= 0x40
    #expect(throws: PacketError.self) { try TCPHeader.parse(corrupted[...], source: source, destination: destination) }
}

@Test func addressesParseAndPrint() {
    #expect(IPv4Address("192.0.2.1") == IPv4Address(192, 0, 2, 1))
    #expect(IPv4Address("192.0.2.1")?.description == "192.0.2.1")
    for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "a.b.c.d", "1.2.3.4 ", "0001.2.3.4"] {
        #expect(IPv4Address(bad) == nil, "\(bad)")
    }
    #expect(IPv4Address.mask(prefixLength: 24) == IPv4Address(255, 255, 255, 0))
    #expect(IPv4Address.mask(prefixLength: 0) == IPv4Address(0, 0, 0, 0))
}

@Test func sequenceNumbersCompareAcrossWrap() {
    let high = SequenceNumber(0xFFFF_FFF0)
    let wrapped = high + 0x20
    #expect(wrapped.rawValue == 0x10)
    #expect(high < wrapped && wrapped > high)
    #expect(wrapped - high == 0x20 && high - wrapped == -0x20)
    #expect(SequenceNumber(5) <= SequenceNumber(5) && !(SequenceNumber(5) < SequenceNumber(5)))
    #expect(SequenceNumber(0) > SequenceNumber(0x8000_0001))
}
