// Addresses: distinct types for physical and virtual addresses and the
// canonical-address rule of 4-level paging (Intel SDM vol. 3 §4.5, vol. 1 §3.3.7.1).

/// A physical memory address.
public struct PhysicalAddress: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: UInt64

    @inline(__always) public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inline(__always) public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The address `byteCount` bytes further on (wrapping is a caller bug).
    @inline(__always) public func advanced(by byteCount: UInt64) -> Self { Self(rawValue + byteCount) }

    /// Whether the address is a multiple of `alignment` (a power of two).
    @inline(__always) public func isAligned(to alignment: UInt64) -> Bool { rawValue & (alignment &- 1) == 0 }

    /// The address rounded down to a multiple of `alignment` (a power of two).
    @inline(__always) public func alignedDown(to alignment: UInt64) -> Self { Self(rawValue & ~(alignment &- 1)) }

    /// The address rounded up to a multiple of `alignment` (a power of two).
    @inline(__always) public func alignedUp(to alignment: UInt64) -> Self {
        Self((rawValue &+ alignment &- 1) & ~(alignment &- 1))
    }
}

/// A virtual (linear) address in the 48-bit canonical space of 4-level paging.
public struct VirtualAddress: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: UInt64

    @inline(__always) public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inline(__always) public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Bits 63:47 all equal, as 4-level paging requires (SDM vol. 1 §3.3.7.1).
    public var isCanonical: Bool {
        let top = rawValue >> 47
        return top == 0 || top == 0x1_FFFF
    }

    /// The canonical form of a 48-bit address: bit 47 copied into bits 63:48.
    public static func canonical(_ address: UInt64) -> Self {
        Self(UInt64(bitPattern: Int64(bitPattern: address << 16) >> 16))
    }

    @inline(__always) public func advanced(by byteCount: UInt64) -> Self { Self(rawValue &+ byteCount) }
    @inline(__always) public func isAligned(to alignment: UInt64) -> Bool { rawValue & (alignment &- 1) == 0 }
    @inline(__always) public func alignedDown(to alignment: UInt64) -> Self { Self(rawValue & ~(alignment &- 1)) }
    @inline(__always) public func alignedUp(to alignment: UInt64) -> Self {
        Self((rawValue &+ alignment &- 1) & ~(alignment &- 1))
    }

    /// The 9-bit table index this address selects at `level` (4 = PML4,
    /// 3 = page-directory-pointer table, 2 = page directory, 1 = page table).
    @inline(__always) public func tableIndex(level: Int) -> Int {
        Int((rawValue >> UInt64(12 + 9 * (level - 1))) & 0x1FF)
    }
}

/// A half-open range of physical addresses.
public struct PhysicalRange: Hashable, Sendable {
    public var start: PhysicalAddress
    public var end: PhysicalAddress

    /// `[start, end)`; an `end` below `start` gives an empty range at `start`.
    public init(start: PhysicalAddress, end: PhysicalAddress) {
        self.start = start
        self.end = max(start, end)
    }

    public init(start: UInt64, byteCount: UInt64) {
        self.init(start: PhysicalAddress(start), end: PhysicalAddress(start &+ byteCount < start ? UInt64.max : start &+ byteCount))
    }

    public var byteCount: UInt64 { end.rawValue - start.rawValue }
    public var isEmpty: Bool { start == end }

    public func contains(_ address: PhysicalAddress) -> Bool { address >= start && address < end }

    public func overlaps(_ other: PhysicalRange) -> Bool { start < other.end && other.start < end }

    /// The intersection, empty (at `start`) when the ranges do not overlap.
    public func clamped(to other: PhysicalRange) -> PhysicalRange {
        PhysicalRange(start: max(start, other.start), end: min(end, other.end))
    }
}
