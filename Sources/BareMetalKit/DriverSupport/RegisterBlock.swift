// RegisterBlock: a window of device registers (memory-mapped or I/O ports)
// addressed by byte offset, so drivers run against hardware in the guest and
// against device models in host tests.

/// A device register window: memory-mapped I/O or a range of I/O ports.
///
/// Every access is a single, uncached, side-effecting access of the given
/// width at `base + offset`; conformers must neither merge, split nor
/// reorder accesses. Offsets are bytes from the start of the window. The
/// caller keeps every access inside the window and naturally aligned.
public protocol RegisterBlock {
    func read8(at offset: Int) -> UInt8
    func read16(at offset: Int) -> UInt16
    func read32(at offset: Int) -> UInt32
    func write8(at offset: Int, _ value: UInt8)
    func write16(at offset: Int, _ value: UInt16)
    func write32(at offset: Int, _ value: UInt32)
}

extension RegisterBlock {
    /// A 64-bit field read as two 32-bit accesses, low half first (virtio 1.2
    /// §4.1.3.1 allows this for 64-bit fields).
    @inline(__always)
    public func read64(at offset: Int) -> UInt64 {
        let low = UInt64(read32(at: offset))
        let high = UInt64(read32(at: offset + 4))
        return high << 32 | low
    }

    /// A 64-bit field written as two 32-bit accesses, low half first.
    @inline(__always)
    public func write64(at offset: Int, _ value: UInt64) {
        write32(at: offset, UInt32(truncatingIfNeeded: value))
        write32(at: offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }
}

/// Turns a physical address range (a PCI memory BAR, an ECAM window) into a
/// register window. The guest's conformer uses the identity map; tests return
/// windows onto device models.
public protocol MemoryMappedIO {
    associatedtype Registers: RegisterBlock
    /// A window onto `length` bytes of device memory at `physicalAddress`.
    /// The caller guarantees that the range belongs to a device.
    func map(physicalAddress: UInt64, length: UInt64) -> Registers
}

/// Opens I/O-port windows (PCI I/O BARs, the legacy virtio header, the
/// 0xCF8/0xCFC configuration mechanism).
public protocol PortIOSpace {
    associatedtype Registers: RegisterBlock
    /// A window onto the `length` ports starting at `port`.
    func ports(at port: UInt16, length: Int) -> Registers
}
