// Ethernet II framing (RFC 894; IEEE 802.3 with the DIX type field).

/// The Ethernet type field (IEEE 802 numbers).
public struct EtherType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static var ipv4: EtherType { EtherType(rawValue: 0x0800) }
    public static var arp: EtherType { EtherType(rawValue: 0x0806) }
    public static var ipv6: EtherType { EtherType(rawValue: 0x86DD) }
}

/// The 14-byte Ethernet II header (no FCS: drivers strip and add it).
public struct EthernetHeader: Equatable, Sendable {
    public static let length = 14

    public var destination: MACAddress
    public var source: MACAddress
    public var etherType: EtherType

    public init(destination: MACAddress, source: MACAddress, etherType: EtherType) {
        self.destination = destination
        self.source = source
        self.etherType = etherType
    }

    /// Parses the header; the payload may include padding to the 60-byte minimum frame.
    public static func parse(_ frame: ArraySlice<UInt8>) throws(PacketError) -> (header: EthernetHeader, payload: ArraySlice<UInt8>) {
        guard frame.count >= length else { throw .truncated(.ethernet, needed: length, available: frame.count) }
        let type = frame.uint16(at: 12)
        // Values up to 1500 are 802.3 lengths (LLC frames), not types.
        guard type >= 0x0600 else { throw .unsupported(.ethernet, value: Int(type)) }
        let header = EthernetHeader(destination: frame.macAddress(at: 0), source: frame.macAddress(at: 6), etherType: EtherType(rawValue: type))
        return (header, frame[(frame.startIndex + length)...])
    }

    /// Appends the header to `bytes`.
    public func write(to bytes: inout [UInt8]) {
        bytes.append(mac: destination)
        bytes.append(mac: source)
        bytes.append(uint16: etherType.rawValue)
    }
}
