// The UDP header and its pseudo-header checksum (RFC 768; RFC 1122 §4.1.3.4).

/// A UDP header.
public struct UDPHeader: Equatable, Sendable {
    public static let length = 8

    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// Header plus data, in bytes.
    public var length: UInt16
    /// As received; zero means the sender computed none.
    public var checksum: UInt16

    public init(sourcePort: UInt16, destinationPort: UInt16, length: UInt16, checksum: UInt16 = 0) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.checksum = checksum
    }

    /// Parses a datagram carried from `source` to `destination` and verifies
    /// its checksum unless the sender sent none.
    public static func parse(_ bytes: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address) throws(PacketError) -> (header: UDPHeader, payload: ArraySlice<UInt8>) {
        guard bytes.count >= length else { throw .truncated(.udp, needed: length, available: bytes.count) }
        let declared = Int(bytes.uint16(at: 4))
        guard declared >= length, declared <= bytes.count else { throw .badLength(.udp, field: declared, available: bytes.count) }
        let datagram = bytes.bytes(at: 0, count: declared)
        let header = UDPHeader(sourcePort: bytes.uint16(at: 0), destinationPort: bytes.uint16(at: 2), length: UInt16(declared), checksum: bytes.uint16(at: 6))
        if header.checksum != 0 {
            var sum = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: .udp, length: declared)
            sum.add(datagram)
            guard sum.value == 0 else { throw .badChecksum(.udp, computed: sum.value) }
        }
        return (header, datagram.dropFirst(length))
    }

    /// Builds a whole datagram with its checksum.
    public static func datagram(sourcePort: UInt16, destinationPort: UInt16, payload: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address) -> [UInt8] {
        let total = length + payload.count
        var bytes: [UInt8] = []
        bytes.reserveCapacity(total)
        bytes.append(uint16: sourcePort)
        bytes.append(uint16: destinationPort)
        bytes.append(uint16: UInt16(truncatingIfNeeded: total))
        bytes.append(uint16: 0)
        bytes.append(contentsOf: payload)
        var sum = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: .udp, length: total)
        sum.add(bytes[...])
        // A computed zero is sent as all ones: zero means "no checksum".
        let value = sum.value
        bytes.set(uint16: value == 0 ? 0xFFFF : value, at: 6)
        return bytes
    }
}
