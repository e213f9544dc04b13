// IPv4 addresses and protocol numbers (RFC 791 §3.1, RFC 1122 §3.2.1.3, IANA protocol numbers).

@_exported import DeviceInterfaces

/// An IPv4 address in host order.
public struct IPv4Address: Hashable, Comparable, Sendable {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad text ("192.0.2.1"); nil for anything else.
    public init?(_ text: String) {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for byte in text.utf8 {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            } else if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                part = part * 10 + UInt32(byte - UInt8(ascii: "0"))
                digits += 1
                guard part <= 255, digits <= 3 else { return nil }
            } else {
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        rawValue = value << 8 | part
    }

    /// 0.0.0.0: "this host" as a source, "any address" when binding.
    public static var any: IPv4Address { IPv4Address(rawValue: 0) }
    /// 255.255.255.255: limited broadcast.
    public static var broadcast: IPv4Address { IPv4Address(rawValue: 0xFFFF_FFFF) }

    public var isMulticast: Bool { rawValue >> 28 == 0xE }
    public var isLoopback: Bool { rawValue >> 24 == 127 }

    /// The four bytes, most significant first.
    public var octets: (UInt8, UInt8, UInt8, UInt8) {
        (UInt8(rawValue >> 24), UInt8(truncatingIfNeeded: rawValue >> 16), UInt8(truncatingIfNeeded: rawValue >> 8), UInt8(truncatingIfNeeded: rawValue))
    }

    /// Dotted-quad text.
    public var description: String {
        let o = octets
        return String(o.0) + "." + String(o.1) + "." + String(o.2) + "." + String(o.3)
    }

    /// The network mask of a prefix length 0...32.
    public static func mask(prefixLength: Int) -> IPv4Address {
        precondition(prefixLength >= 0 && prefixLength <= 32, "prefix length out of range")
        return IPv4Address(rawValue: prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength))
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The IPv4 protocol field (IANA "Assigned Internet Protocol Numbers").
public struct IPProtocol: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static var icmp: IPProtocol { IPProtocol(rawValue: 1) }
    public static var tcp: IPProtocol { IPProtocol(rawValue: 6) }
    public static var udp: IPProtocol { IPProtocol(rawValue: 17) }
}

/// An address and port pair.
public struct IPv4Endpoint: Hashable, Sendable {
    public var address: IPv4Address
    public var port: UInt16
    public init(address: IPv4Address, port: UInt16) {
        self.address = address
        self.port = port
    }
}
