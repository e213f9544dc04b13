// Errors of the wire-format parsers (every header in this module).

/// The header a parse error refers to.
public enum ProtocolLayer: Equatable, Sendable {
    case ethernet, arp, ipv4, icmp, udp, tcp, dhcp
}

/// Why bytes did not parse as a header, with the values needed to debug it.
public enum PacketError: Error, Equatable, Sendable {
    /// Fewer bytes than the fixed header (or a declared length) needs.
    case truncated(ProtocolLayer, needed: Int, available: Int)
    /// A length field contradicts the header or the bytes present.
    case badLength(ProtocolLayer, field: Int, available: Int)
    /// The checksum does not verify; `computed` is the sum's complement over the
    /// received bytes (zero for a correct packet).
    case badChecksum(ProtocolLayer, computed: UInt16)
    /// A version, hardware or protocol type this stack does not speak.
    case unsupported(ProtocolLayer, value: Int)
    /// A malformed option at `offset` within the options area.
    case badOption(ProtocolLayer, kind: UInt8, offset: Int)
}
