// Big-endian (network byte order) field access shared by every wire format (RFC 1700 "Data Notations").

extension ArraySlice where Element == UInt8 {
    /// The byte `offset` bytes past the start of the slice.
    @inline(__always)
    func byte(at offset: Int) -> UInt8 { self[startIndex + offset] }

    @inline(__always)
    func uint16(at offset: Int) -> UInt16 {
        UInt16(self[startIndex + offset]) << 8 | UInt16(self[startIndex + offset + 1])
    }

    @inline(__always)
    func uint32(at offset: Int) -> UInt32 {
        UInt32(uint16(at: offset)) << 16 | UInt32(uint16(at: offset + 2))
    }

    func macAddress(at offset: Int) -> MACAddress {
        let base = startIndex + offset
        return MACAddress(self[base], self[base + 1], self[base + 2], self[base + 3], self[base + 4], self[base + 5])
    }

    func ipv4Address(at offset: Int) -> IPv4Address { IPv4Address(rawValue: uint32(at: offset)) }

    /// The slice `offset..<offset+count` relative to the start.
    func bytes(at offset: Int, count: Int) -> ArraySlice<UInt8> {
        self[(startIndex + offset)..<(startIndex + offset + count)]
    }
}

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func append(uint16 value: UInt16) {
        append(UInt8(truncatingIfNeeded: value >> 8))
        append(UInt8(truncatingIfNeeded: value))
    }

    @inline(__always)
    mutating func append(uint32 value: UInt32) {
        append(uint16: UInt16(truncatingIfNeeded: value >> 16))
        append(uint16: UInt16(truncatingIfNeeded: value))
    }

    mutating func append(mac: MACAddress) {
        append(mac.bytes.0)
        append(mac.bytes.1)
        append(mac.bytes.2)
        append(mac.bytes.3)
        append(mac.bytes.4)
        append(mac.bytes.5)
    }

    mutating func append(ipv4 address: IPv4Address) { append(uint32: address.rawValue) }

    @inline(__always)
    mutating func set(uint16 value: UInt16, at offset: Int) {
        self[offset] = UInt8(truncatingIfNeeded: value >> 8)
        self[offset + 1] = UInt8(truncatingIfNeeded: value)
    }

    mutating func set(mac: MACAddress, at offset: Int) {
        self[offset] = mac.bytes.0
        self[offset + 1] = mac.bytes.1
        self[offset + 2] = mac.bytes.2
        self[offset + 3] = mac.bytes.3
        self[offset + 4] = mac.bytes.4
        self[offset + 5] = mac.bytes.5
    }
}
