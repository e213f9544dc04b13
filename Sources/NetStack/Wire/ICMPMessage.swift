// ICMP for IPv4: echo, destination unreachable, time exceeded (RFC 792; RFC 1122 §3.2.2).

/// An ICMP message: type, code, the 4-byte rest-of-header and the body.
public struct ICMPMessage: Equatable, Sendable {
    public static let headerLength = 8

    public var type: UInt8
    public var code: UInt8
    /// Bytes 4..<8: identifier and sequence number for echo, unused (zero) or
    /// next-hop MTU for destination unreachable.
    public var restOfHeader: UInt32
    /// Echo data, or the original IP header plus 8 bytes for error messages.
    public var body: [UInt8]

    public static let echoReplyType: UInt8 = 0
    public static let destinationUnreachableType: UInt8 = 3
    public static let echoRequestType: UInt8 = 8
    public static let timeExceededType: UInt8 = 11

    /// Destination unreachable codes (RFC 792, RFC 1122 §3.2.2.1).
    public enum UnreachableCode: UInt8, Sendable {
        case network = 0, host = 1, `protocol` = 2, port = 3, fragmentationNeeded = 4
    }

    public init(type: UInt8, code: UInt8, restOfHeader: UInt32, body: [UInt8]) {
        self.type = type
        self.code = code
        self.restOfHeader = restOfHeader
        self.body = body
    }

    public static func echoRequest(identifier: UInt16, sequence: UInt16, data: [UInt8]) -> ICMPMessage {
        ICMPMessage(type: echoRequestType, code: 0, restOfHeader: UInt32(identifier) << 16 | UInt32(sequence), body: data)
    }

    public static func echoReply(identifier: UInt16, sequence: UInt16, data: [UInt8]) -> ICMPMessage {
        ICMPMessage(type: echoReplyType, code: 0, restOfHeader: UInt32(identifier) << 16 | UInt32(sequence), body: data)
    }

    /// A destination unreachable message quoting the offending datagram: its
    /// header and the first 8 bytes of its payload.
    public static func destinationUnreachable(_ code: UnreachableCode, quoting datagram: ArraySlice<UInt8>, headerLength: Int) -> ICMPMessage {
        let quoted = datagram.prefix(headerLength + 8)
        return ICMPMessage(type: destinationUnreachableType, code: code.rawValue, restOfHeader: 0, body: Array(quoted))
    }

    public var identifier: UInt16 { UInt16(truncatingIfNeeded: restOfHeader >> 16) }
    public var sequence: UInt16 { UInt16(truncatingIfNeeded: restOfHeader) }
    public var isError: Bool { type == 3 || type == 4 || type == 5 || type == 11 || type == 12 }

    /// Parses and verifies the checksum over the whole message.
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(PacketError) -> ICMPMessage {
        guard bytes.count >= headerLength else { throw .truncated(.icmp, needed: headerLength, available: bytes.count) }
        let computed = InternetChecksum.of(bytes)
        guard computed == 0 else { throw .badChecksum(.icmp, computed: computed) }
        return ICMPMessage(type: bytes.byte(at: 0), code: bytes.byte(at: 1), restOfHeader: bytes.uint32(at: 4), body: Array(bytes.dropFirst(headerLength)))
    }

    public func write(to bytes: inout [UInt8]) {
        let start = bytes.count
        bytes.append(type)
        bytes.append(code)
        bytes.append(uint16: 0)
        bytes.append(uint32: restOfHeader)
        bytes.append(contentsOf: body)
        bytes.set(uint16: InternetChecksum.of(bytes[start...]), at: start + 2)
    }
}
