// TCP sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4, RFC 1982 serial-number comparison).

/// A 32-bit sequence number compared in a window of 2^31.
public struct SequenceNumber: Hashable, Sendable {
    public var rawValue: UInt32
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }

    public static func + (lhs: SequenceNumber, rhs: Int) -> SequenceNumber {
        SequenceNumber(lhs.rawValue &+ UInt32(truncatingIfNeeded: rhs))
    }

    public static func - (lhs: SequenceNumber, rhs: Int) -> SequenceNumber {
        SequenceNumber(lhs.rawValue &- UInt32(truncatingIfNeeded: rhs))
    }

    /// The signed distance from `rhs` to `lhs`.
    public static func - (lhs: SequenceNumber, rhs: SequenceNumber) -> Int {
        Int(Int32(bitPattern: lhs.rawValue &- rhs.rawValue))
    }

    public static func += (lhs: inout SequenceNumber, rhs: Int) { lhs = lhs + rhs }

    public static func < (lhs: SequenceNumber, rhs: SequenceNumber) -> Bool { lhs - rhs < 0 }
    public static func <= (lhs: SequenceNumber, rhs: SequenceNumber) -> Bool { lhs - rhs <= 0 }
    public static func > (lhs: SequenceNumber, rhs: SequenceNumber) -> Bool { lhs - rhs > 0 }
    public static func >= (lhs: SequenceNumber, rhs: SequenceNumber) -> Bool { lhs - rhs >= 0 }

    public static func max(_ a: SequenceNumber, _ b: SequenceNumber) -> SequenceNumber { a > b ? a : b }
    public static func min(_ a: SequenceNumber, _ b: SequenceNumber) -> SequenceNumber { a < b ? a : b }
}
