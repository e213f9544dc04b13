// The TCP header and options (RFC 9293 §3.1-3.2; window scale and timestamps RFC 7323 §2-3; SACK RFC 2018).

/// TCP control bits.
public struct TCPFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static var fin: TCPFlags { TCPFlags(rawValue: 0x01) }
    public static var syn: TCPFlags { TCPFlags(rawValue: 0x02) }
    public static var rst: TCPFlags { TCPFlags(rawValue: 0x04) }
    public static var psh: TCPFlags { TCPFlags(rawValue: 0x08) }
    public static var ack: TCPFlags { TCPFlags(rawValue: 0x10) }
    public static var urg: TCPFlags { TCPFlags(rawValue: 0x20) }
    public static var ece: TCPFlags { TCPFlags(rawValue: 0x40) }
    public static var cwr: TCPFlags { TCPFlags(rawValue: 0x80) }
}

/// One SACK block: the left edge and the sequence number after the right edge.
public struct TCPSackBlock: Equatable, Sendable {
    public var left: UInt32
    public var right: UInt32
    public init(left: UInt32, right: UInt32) {
        self.left = left
        self.right = right
    }
}

/// The options this stack understands; unknown options are skipped on parse.
public struct TCPOptions: Equatable, Sendable {
    /// Maximum segment size (kind 2), only in SYN segments.
    public var maximumSegmentSize: UInt16?
    /// Window scale shift count (kind 3), only in SYN segments.
    public var windowScale: UInt8?
    /// SACK permitted (kind 4), only in SYN segments.
    public var sackPermitted = false
    /// SACK blocks (kind 5).
    public var sackBlocks: [TCPSackBlock] = []
    /// TSval and TSecr (kind 8).
    public var timestamps: (value: UInt32, echoReply: UInt32)?

    public init() {}

    public static func == (lhs: TCPOptions, rhs: TCPOptions) -> Bool {
        lhs.maximumSegmentSize == rhs.maximumSegmentSize && lhs.windowScale == rhs.windowScale
            && lhs.sackPermitted == rhs.sackPermitted && lhs.sackBlocks == rhs.sackBlocks
            && lhs.timestamps?.value == rhs.timestamps?.value && lhs.timestamps?.echoReply == rhs.timestamps?.echoReply
    }

    /// Encoded length, padded to a multiple of 4.
    public var encodedLength: Int {
        var length = 0
        if maximumSegmentSize != nil { length += 4 }
        if windowScale != nil { length += 4 }  // NOP + 3
        if sackPermitted && timestamps != nil {
            length += 12  // SACK-permitted rides in the timestamps option's NOPs
        } else {
            if sackPermitted { length += 4 }
            if timestamps != nil { length += 12 }
        }
        if !sackBlocks.isEmpty { length += 4 + 8 * sackBlocks.count }
        return length
    }

    func write(to bytes: inout [UInt8]) {
        if let mss = maximumSegmentSize {
            bytes.append(2)
            bytes.append(4)
            bytes.append(uint16: mss)
        }
        if let shift = windowScale {
            bytes.append(1)
            bytes.append(3)
            bytes.append(3)
            bytes.append(shift)
        }
        if let stamps = timestamps {
            if sackPermitted {
                bytes.append(4)
                bytes.append(2)
            } else {
                bytes.append(1)
                bytes.append(1)
            }
            bytes.append(8)
            bytes.append(10)
            bytes.append(uint32: stamps.value)
            bytes.append(uint32: stamps.echoReply)
        } else if sackPermitted {
            bytes.append(1)
            bytes.append(1)
            bytes.append(4)
            bytes.append(2)
        }
        if !sackBlocks.isEmpty {
            bytes.append(1)
            bytes.append(1)
            bytes.append(5)
            bytes.append(UInt8(2 + 8 * sackBlocks.count))
            for block in sackBlocks {
                bytes.append(uint32: block.left)
                bytes.append(uint32: block.right)
            }
        }
    }

    static func parse(_ area: ArraySlice<UInt8>) throws(PacketError) -> TCPOptions {
        var options = TCPOptions()
        var offset = 0
        while offset < area.count {
            let kind = area.byte(at: offset)
            if kind == 0 { break }
            if kind == 1 {
                offset += 1
                continue
            }
            guard offset + 1 < area.count else { throw .badOption(.tcp, kind: kind, offset: offset) }
            let length = Int(area.byte(at: offset + 1))
            guard length >= 2, offset + length <= area.count else { throw .badOption(.tcp, kind: kind, offset: offset) }
            switch kind {
            case 2:
                guard length == 4 else { throw .badOption(.tcp, kind: kind, offset: offset) }
                options.maximumSegmentSize = area.uint16(at: offset + 2)
            case 3:
                guard length == 3 else { throw .badOption(.tcp, kind: kind, offset: offset) }
                options.windowScale = area.byte(at: offset + 2)
            case 4:
                guard length == 2 else { throw .badOption(.tcp, kind: kind, offset: offset) }
                options.sackPermitted = true
            case 5:
                guard (length - 2) % 8 == 0, length > 2 else { throw .badOption(.tcp, kind: kind, offset: offset) }
                options.sackBlocks = []
                var blockOffset = offset + 2
                while blockOffset < offset + length {
                    options.sackBlocks.append(TCPSackBlock(left: area.uint32(at: blockOffset), right: area.uint32(at: blockOffset + 4)))
                    blockOffset += 8
                }
            case 8:
                guard length == 10 else { throw .badOption(.tcp, kind: kind, offset: offset) }
                options.timestamps = (area.uint32(at: offset + 2), area.uint32(at: offset + 6))
            default:
                break  // RFC 9293 §3.1: unknown options are ignored.
            }
            offset += length
        }
        return options
    }
}

/// A TCP header with parsed options.
public struct TCPHeader: Equatable, Sendable {
    public static let minimumLength = 20

    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sequenceNumber: UInt32
    public var acknowledgmentNumber: UInt32
    public var flags: TCPFlags
    /// The window field as carried (before window scaling).
    public var window: UInt16
    /// As received; `segment(...)` computes a fresh one.
    public var checksum: UInt16 = 0
    public var urgentPointer: UInt16 = 0
    public var options = TCPOptions()

    public init(sourcePort: UInt16, destinationPort: UInt16, sequenceNumber: UInt32, acknowledgmentNumber: UInt32, flags: TCPFlags, window: UInt16) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.sequenceNumber = sequenceNumber
        self.acknowledgmentNumber = acknowledgmentNumber
        self.flags = flags
        self.window = window
    }

    public var headerLength: Int { Self.minimumLength + (options.encodedLength + 3) / 4 * 4 }

    /// Parses a segment carried from `source` to `destination`, verifying the
    /// pseudo-header checksum over the whole segment.
    public static func parse(_ bytes: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address) throws(PacketError) -> (header: TCPHeader, payload: ArraySlice<UInt8>) {
        guard bytes.count >= minimumLength else { throw .truncated(.tcp, needed: minimumLength, available: bytes.count) }
        let dataOffset = Int(bytes.byte(at: 12) >> 4) * 4
        guard dataOffset >= minimumLength, dataOffset <= bytes.count else { throw .badLength(.tcp, field: dataOffset, available: bytes.count) }
        var sum = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: .tcp, length: bytes.count)
        sum.add(bytes)
        guard sum.value == 0 else { throw .badChecksum(.tcp, computed: sum.value) }
        var header = TCPHeader(
            sourcePort: bytes.uint16(at: 0), destinationPort: bytes.uint16(at: 2),
            sequenceNumber: bytes.uint32(at: 4), acknowledgmentNumber: bytes.uint32(at: 8),
            flags: TCPFlags(rawValue: bytes.byte(at: 13)), window: bytes.uint16(at: 14))
        header.checksum = bytes.uint16(at: 16)
        header.urgentPointer = bytes.uint16(at: 18)
        header.options = try TCPOptions.parse(bytes.bytes(at: minimumLength, count: dataOffset - minimumLength))
        return (header, bytes.dropFirst(dataOffset))
    }

    /// Appends header and payload with the checksum for the given addresses.
    public func write(payload: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address, to bytes: inout [UInt8]) {
        let start = bytes.count
        let length = headerLength
        bytes.append(uint16: sourcePort)
        bytes.append(uint16: destinationPort)
        bytes.append(uint32: sequenceNumber)
        bytes.append(uint32: acknowledgmentNumber)
        bytes.append(UInt8(length / 4) << 4)
        bytes.append(flags.rawValue)
        bytes.append(uint16: window)
        bytes.append(uint16: 0)
        bytes.append(uint16: urgentPointer)
        options.write(to: &bytes)
        while bytes.count - start < length { bytes.append(0) }
        bytes.append(contentsOf: payload)
        var sum = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: .tcp, length: bytes.count - start)
        sum.add(bytes[start...])
        bytes.set(uint16: sum.value, at: start + 16)
    }

    /// The segment as bytes.
    public func segment(payload: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(headerLength + payload.count)
        write(payload: payload, source: source, destination: destination, to: &bytes)
        return bytes
    }

    public static func == (lhs: TCPHeader, rhs: TCPHeader) -> Bool {
        lhs.sourcePort == rhs.sourcePort && lhs.destinationPort == rhs.destinationPort
            && lhs.sequenceNumber == rhs.sequenceNumber && lhs.acknowledgmentNumber == rhs.acknowledgmentNumber
            && lhs.flags == rhs.flags && lhs.window == rhs.window && lhs.urgentPointer == rhs.urgentPointer
            && lhs.options == rhs.options
    }
}
