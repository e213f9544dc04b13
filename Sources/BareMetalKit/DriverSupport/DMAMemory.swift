// DMAMemory: memory that devices read and write by physical address, and the
// barriers that order the driver's accesses against the device's.

/// Memory shared with bus-mastering devices.
///
/// The guest's conformer hands out heap memory (identity-mapped below 4 GiB);
/// tests hand out memory from an arena whose "physical" addresses differ from
/// its pointers, so a driver that passes a pointer where a physical address
/// belongs is caught.
public protocol DMAMemory {
    /// Zeroed memory that is physically contiguous, or nil when exhausted.
    /// `alignment` is a power of two no larger than 4096.
    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer?

    /// Returns memory obtained from `allocate`. The caller guarantees that no
    /// device still owns it.
    func deallocate(_ pointer: UnsafeMutableRawPointer)

    /// The bus address a device uses for the byte at `pointer`. The caller
    /// guarantees that `pointer` lies in memory from `allocate`, or in other
    /// memory this conformer documents as device-reachable.
    func physicalAddress(of pointer: UnsafeRawPointer) -> UInt64

    /// Orders the driver's earlier stores to shared memory before its later
    /// stores and before register writes (Linux calls this `wmb`).
    func storeBarrier()

    /// Orders the driver's earlier loads from shared memory before its later
    /// loads (`rmb`).
    func loadBarrier()

    /// Orders all earlier loads and stores before all later ones (`mb`).
    func fullBarrier()
}

/// Little-endian accessors on raw shared memory (x86 and every virtio 1.x
/// structure are little-endian; these exist so the intent is visible).
extension UnsafeMutableRawPointer {
    @inline(__always) func loadLE16(_ offset: Int) -> UInt16 {
        UInt16(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inline(__always) func loadLE32(_ offset: Int) -> UInt32 {
        UInt32(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inline(__always) func loadLE64(_ offset: Int) -> UInt64 {
        UInt64(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
    @inline(__always) func storeLE16(_ offset: Int, _ value: UInt16) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inline(__always) func storeLE32(_ offset: Int, _ value: UInt32) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inline(__always) func storeLE64(_ offset: Int, _ value: UInt64) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self)
    }
}
