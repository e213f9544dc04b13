// The IPv4 header (RFC 791 §3.1; header checksum per RFC 1071).

/// An IPv4 header including options.
public struct IPv4Header: Equatable, Sendable {
    public static let minimumLength = 20
    /// Flag bits in the 16-bit flags/fragment-offset word.
    static let dontFragmentBit: UInt16 = 0x4000
    static let moreFragmentsBit: UInt16 = 0x2000

    /// Differentiated services code point and ECN, the old TOS byte.
    public var typeOfService: UInt8 = 0
    /// Header plus payload, in bytes.
    public var totalLength: UInt16 = 0
    public var identification: UInt16 = 0
    public var dontFragment = false
    public var moreFragments = false
    /// Fragment offset in 8-byte units.
    public var fragmentOffset: UInt16 = 0
    public var timeToLive: UInt8 = 64
    public var `protocol`: IPProtocol
    /// The checksum as received; `write` computes a fresh one.
    public var checksum: UInt16 = 0
    public var source: IPv4Address
    public var destination: IPv4Address
    /// Raw options; `write` pads them to a multiple of 4 bytes.
    public var options: [UInt8] = []

    public init(protocol: IPProtocol, source: IPv4Address, destination: IPv4Address, timeToLive: UInt8 = 64) {
        self.protocol = `protocol`
        self.source = source
        self.destination = destination
        self.timeToLive = timeToLive
    }

    /// Header length in bytes, options padded.
    public var headerLength: Int { Self.minimumLength + (options.count + 3) / 4 * 4 }

    public var isFragment: Bool { moreFragments || fragmentOffset != 0 }

    /// Parses and verifies a header. The payload ends at `totalLength`, so link
    /// padding after it is dropped.
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(PacketError) -> (header: IPv4Header, payload: ArraySlice<UInt8>) {
        guard bytes.count >= minimumLength else { throw .truncated(.ipv4, needed: minimumLength, available: bytes.count) }
        let first = bytes.byte(at: 0)
        guard first >> 4 == 4 else { throw .unsupported(.ipv4, value: Int(first >> 4)) }
        let headerLength = Int(first & 0x0F) * 4
        guard headerLength >= minimumLength else { throw .badLength(.ipv4, field: headerLength, available: bytes.count) }
        guard headerLength <= bytes.count else { throw .truncated(.ipv4, needed: headerLength, available: bytes.count) }
        let totalLength = Int(bytes.uint16(at: 2))
        guard totalLength >= headerLength, totalLength <= bytes.count else {
            throw .badLength(.ipv4, field: totalLength, available: bytes.count)
        }
        let computed = InternetChecksum.of(bytes.bytes(at: 0, count: headerLength))
        guard computed == 0 else { throw .badChecksum(.ipv4, computed: computed) }
        var header = IPv4Header(protocol: IPProtocol(rawValue: bytes.byte(at: 9)), source: bytes.ipv4Address(at: 12), destination: bytes.ipv4Address(at: 16), timeToLive: bytes.byte(at: 8))
        header.typeOfService = bytes.byte(at: 1)
        header.totalLength = UInt16(totalLength)
        header.identification = bytes.uint16(at: 4)
        let fragment = bytes.uint16(at: 6)
        header.dontFragment = fragment & dontFragmentBit != 0
        header.moreFragments = fragment & moreFragmentsBit != 0
        header.fragmentOffset = fragment & 0x1FFF
        header.checksum = bytes.uint16(at: 10)
        header.options = Array(bytes.bytes(at: minimumLength, count: headerLength - minimumLength))
        return (header, bytes.bytes(at: headerLength, count: totalLength - headerLength))
    }

    /// Appends the header with a freshly computed checksum. `totalLength` must
    /// already account for the payload.
    public func write(to bytes: inout [UInt8]) {
        let start = bytes.count
        let length = headerLength
        bytes.append(UInt8(0x40 | (length / 4)))
        bytes.append(typeOfService)
        bytes.append(uint16: totalLength)
        bytes.append(uint16: identification)
        var fragment = fragmentOffset & 0x1FFF
        if dontFragment { fragment |= Self.dontFragmentBit }
        if moreFragments { fragment |= Self.moreFragmentsBit }
        bytes.append(uint16: fragment)
        bytes.append(timeToLive)
        bytes.append(`protocol`.rawValue)
        bytes.append(uint16: 0)
        bytes.append(ipv4: source)
        bytes.append(ipv4: destination)
        bytes.append(contentsOf: options)
        // Option padding is End of Option List (zero) bytes.
        for _ in 0..<(length - Self.minimumLength - options.count) { bytes.append(0) }
        let checksum = InternetChecksum.of(bytes[start..<(start + length)])
        bytes.set(uint16: checksum, at: start + 10)
    }
}
