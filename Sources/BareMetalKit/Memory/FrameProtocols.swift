// FrameProtocols: how memory code obtains physical frames and reaches them
// through pointers, so one implementation runs on the CPU's identity map in
// the guest and on heap memory in host tests (4 KiB frames, Intel SDM vol. 3 §4.5).

/// Size of a base page frame.
public enum PageSize {
    public static var small: UInt64 { 0x1000 }
    public static var large: UInt64 { 0x20_0000 }
    public static var huge: UInt64 { 0x4000_0000 }
}

/// Turns the physical address of memory into a pointer the running code can
/// use. The guest's conformer is the identity map; tests use an offset into a
/// heap buffer.
public protocol FrameMapping {
    /// A pointer to the byte at `address`. The caller guarantees that the
    /// address lies in memory the mapping covers.
    func pointer(to address: PhysicalAddress) -> UnsafeMutableRawPointer
}

/// A mapping that can also tell which physical address a pointer reaches.
public protocol ReversibleFrameMapping: FrameMapping {
    /// The physical address of the byte `pointer` points to. The caller
    /// guarantees that the pointer lies in memory the mapping covers.
    func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress
}

/// Hands out and takes back zeroed-or-not 4 KiB physical frames.
public protocol FrameAllocator {
    /// A 4 KiB-aligned frame, or nil when memory is exhausted.
    mutating func allocateFrame() -> PhysicalAddress?
    /// Returns a frame obtained from `allocateFrame`.
    mutating func deallocateFrame(_ frame: PhysicalAddress)
}

/// Physical memory mapped one-to-one at virtual addresses (the boot page
/// tables map the first 4 GiB so).
public struct IdentityFrameMapping: ReversibleFrameMapping {
    @inline(__always) public init() {}
    @inline(__always) public func pointer(to address: PhysicalAddress) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(address.rawValue))!
    }
    @inline(__always) public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress {
        PhysicalAddress(UInt64(UInt(bitPattern: pointer)))
    }
}

/// Physical memory seen through a fixed offset: physical `base` is at `pointer`.
public struct OffsetFrameMapping: ReversibleFrameMapping {
    public let base: PhysicalAddress
    public let pointer: UnsafeMutableRawPointer

    /// The caller guarantees that every physical address it later passes
    /// lies in memory reachable from `pointer` at offset `address - base`.
    public init(base: PhysicalAddress, pointer: UnsafeMutableRawPointer) {
        self.base = base
        self.pointer = pointer
    }

    @inline(__always) public func pointer(to address: PhysicalAddress) -> UnsafeMutableRawPointer {
        pointer + Int(Int64(bitPattern: address.rawValue &- base.rawValue))
    }
    @inline(__always) public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress {
        PhysicalAddress(base.rawValue &+ UInt64(bitPattern: Int64(UnsafeRawPointer(self.pointer).distance(to: pointer))))
    }
}
