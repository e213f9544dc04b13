// The Internet checksum: 16-bit one's complement of the one's complement sum (RFC 1071).

/// Accumulates the one's complement sum of a byte sequence split over several
/// pieces (pseudo-header, header, payload) and produces the checksum field.
public struct InternetChecksum: Sendable {
    /// Deferred-carry sum: 64 bits hold 2^48 words before folding matters.
    private var sum: UInt64 = 0
    /// Whether an odd number of bytes has been added so far, so the next byte
    /// is the low half of a 16-bit word.
    private var odd = false

    public init() {}

    /// Adds one 16-bit word in host order.
    public mutating func add(_ word: UInt16) {
        if odd {
            // Keep the word aligned to the byte stream.
            sum &+= UInt64(word >> 8) | UInt64(word & 0xFF) << 8
        } else {
            sum &+= UInt64(word)
        }
    }

    /// Adds a 32-bit value as two words (an IPv4 address in the pseudo-header).
    public mutating func add(_ value: UInt32) {
        add(UInt16(truncatingIfNeeded: value >> 16))
        add(UInt16(truncatingIfNeeded: value))
    }

    /// Adds bytes in network order.
    public mutating func add(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { add(bytes: $0) }
    }

    /// Adds bytes in network order.
    public mutating func add(bytes buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        var index = 0
        let count = buffer.count
        if odd && count > 0 {
            sum &+= UInt64(buffer[0])
            index = 1
            odd = false
        }
        // Eight bytes per step, loaded in the machine's (little-endian)
        // order: the one's complement sum does not depend on byte order
        // (RFC 1071 §2(B)), so the sum of the byte-swapped words, folded,
        // is the byte-swapped sum of the network-order words. Each step adds
        // two 32-bit halves (2^16 ≡ 1 modulo 0xFFFF), far from overflowing.
        var swapped: UInt64 = 0
        while index + 8 <= count {
            let word = base.loadUnaligned(fromByteOffset: index, as: UInt64.self).littleEndian
            swapped &+= (word & 0xFFFF_FFFF) &+ (word >> 32)
            index += 8
        }
        while swapped > 0xFFFF { swapped = (swapped & 0xFFFF) &+ (swapped >> 16) }
        var local = UInt64(UInt16(truncatingIfNeeded: swapped).byteSwapped)
        while index + 1 < count {
            local &+= UInt64(buffer[index]) << 8 | UInt64(buffer[index + 1])
            index += 2
        }
        sum &+= local
        if index < count {
            sum &+= UInt64(buffer[index]) << 8
            odd = true
        }
    }

    /// The folded one's complement sum, before complementing.
    public var folded: UInt16 {
        var value = sum
        while value > 0xFFFF { value = (value & 0xFFFF) + (value >> 16) }
        return UInt16(value)
    }

    /// The value for the checksum field: the complement of the folded sum.
    public var value: UInt16 { ~folded }

    /// The checksum of a single byte range.
    public static func of(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var checksum = InternetChecksum()
        checksum.add(bytes)
        return checksum.value
    }

    /// The sum over the IPv4 pseudo-header used by UDP and TCP (RFC 768, RFC 9293 §3.1).
    public static func pseudoHeader(source: IPv4Address, destination: IPv4Address, protocol: IPProtocol, length: Int) -> InternetChecksum {
        var checksum = InternetChecksum()
        checksum.add(source.rawValue)
        checksum.add(destination.rawValue)
        checksum.add(UInt16(`protocol`.rawValue))
        checksum.add(UInt16(truncatingIfNeeded: length))
        return checksum
    }
}
