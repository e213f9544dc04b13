// GuestHardware: the guest world's conformers to the hardware-access
// protocols: volatile MMIO, `in`/`out` instructions, heap-backed DMA memory.
#if hasFeature(Embedded)
import CPUPrimitives
import _Volatile

/// Memory-mapped registers reached through the boot identity map (the first
/// 4 GiB). Every access is one volatile load or store.
public struct MMIORegisters: RegisterBlock {
    public let base: UInt

    /// The caller guarantees that `base` is a mapped device address.
    @inline(__always) public init(base: UInt) { self.base = base }

    @inline(__always) public func read8(at offset: Int) -> UInt8 {
        VolatileMappedRegister<UInt8>(unsafeBitPattern: base &+ UInt(offset)).load()
    }
    @inline(__always) public func read16(at offset: Int) -> UInt16 {
        VolatileMappedRegister<UInt16>(unsafeBitPattern: base &+ UInt(offset)).load()
    }
    @inline(__always) public func read32(at offset: Int) -> UInt32 {
        VolatileMappedRegister<UInt32>(unsafeBitPattern: base &+ UInt(offset)).load()
    }
    @inline(__always) public func write8(at offset: Int, _ value: UInt8) {
        VolatileMappedRegister<UInt8>(unsafeBitPattern: base &+ UInt(offset)).store(value)
    }
    @inline(__always) public func write16(at offset: Int, _ value: UInt16) {
        VolatileMappedRegister<UInt16>(unsafeBitPattern: base &+ UInt(offset)).store(value)
    }
    @inline(__always) public func write32(at offset: Int, _ value: UInt32) {
        VolatileMappedRegister<UInt32>(unsafeBitPattern: base &+ UInt(offset)).store(value)
    }
}

/// Device memory below 4 GiB, reached through the boot identity map.
public struct IdentityMappedIO: MemoryMappedIO {
    @inline(__always) public init() {}
    /// Addresses at or above 4 GiB are not mapped by the boot page tables;
    /// the caller guarantees the range lies below 4 GiB (the PCI probe
    /// checks this before mapping a BAR).
    @inline(__always) public func map(physicalAddress: UInt64, length: UInt64) -> MMIORegisters {
        MMIORegisters(base: UInt(physicalAddress))
    }
}

/// A range of x86 I/O ports, accessed with `in`/`out`.
public struct PortRegisters: RegisterBlock {
    public let base: UInt16

    @inline(__always) public init(base: UInt16) { self.base = base }

    @inline(__always) public func read8(at offset: Int) -> UInt8 { cpu_inb(base &+ UInt16(offset)) }
    @inline(__always) public func read16(at offset: Int) -> UInt16 { cpu_inw(base &+ UInt16(offset)) }
    @inline(__always) public func read32(at offset: Int) -> UInt32 { cpu_inl(base &+ UInt16(offset)) }
    @inline(__always) public func write8(at offset: Int, _ value: UInt8) { cpu_outb(base &+ UInt16(offset), value) }
    @inline(__always) public func write16(at offset: Int, _ value: UInt16) { cpu_outw(base &+ UInt16(offset), value) }
    @inline(__always) public func write32(at offset: Int, _ value: UInt32) { cpu_outl(base &+ UInt16(offset), value) }
}

/// The CPU's I/O address space.
public struct HardwarePortSpace: PortIOSpace {
    @inline(__always) public init() {}
    @inline(__always) public func ports(at port: UInt16, length: Int) -> PortRegisters { PortRegisters(base: port) }
}

/// Heap memory as DMA memory: the guest's heap lies in identity-mapped RAM
/// below 4 GiB, so a pointer's bits are its physical address.
public struct HeapDMAMemory: DMAMemory {
    @inline(__always) public init() {}

    public func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: alignment)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        return memory
    }

    public func deallocate(_ pointer: UnsafeMutableRawPointer) { pointer.deallocate() }

    @inline(__always) public func physicalAddress(of pointer: UnsafeRawPointer) -> UInt64 {
        UInt64(UInt(bitPattern: pointer))
    }

    // x86 keeps stores in order and loads in order for write-back memory
    // (Intel SDM vol. 3 §9.2.2); only the compiler must be stopped. A store
    // followed by a load of another location needs MFENCE.
    @inline(__always) public func storeBarrier() { cpu_compiler_barrier() }
    @inline(__always) public func loadBarrier() { cpu_compiler_barrier() }
    @inline(__always) public func fullBarrier() { cpu_memory_barrier() }
}
#endif
