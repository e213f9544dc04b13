// LocalAPIC: the processor's local APIC in xAPIC mode (MMIO at the
// IA32_APIC_BASE address) or x2APIC mode (MSRs 0x800–0x8FF) when CPUID.1:
// ECX[21] offers it (Intel SDM vol. 3A §11.4, §11.12): enable with the
// spurious vector, EOI, ID, the in-service bits, inter-processor interrupts.
#if hasFeature(Embedded)
import CPUPrimitives

/// The running CPU's local APIC.
public struct LocalAPIC: Sendable {
    /// IA32_APIC_BASE (MSR 0x1B): bit 11 global enable, bit 10 x2APIC
    /// enable, bits 51:12 base.
    static var baseMSR: UInt32 { 0x1B }
    static var x2APICICR: UInt32 { 0x830 }

    /// x2APIC mode (MSR access) rather than xAPIC (MMIO).
    public let isX2APIC: Bool
    /// The xAPIC register window (unused in x2APIC mode).
    public let base: UInt64

    /// Enables the APIC globally (and x2APIC mode when `x2APIC`), reads the
    /// base. The xAPIC window must be mapped uncached (the 32-bit PCI hole
    /// is).
    public init(x2APIC: Bool) {
        var value = cpu_rdmsr(Self.baseMSR)
        // Disabled → x2APIC directly is an invalid transition (#GP, SDM
        // §11.12.5): enable xAPIC mode first, then EXTD.
        if value & 1 << 11 == 0 {
            value |= 1 << 11
            cpu_wrmsr(Self.baseMSR, value)
        }
        if x2APIC && value & 1 << 10 == 0 {
            value |= 1 << 10
            cpu_wrmsr(Self.baseMSR, value)
        }
        isX2APIC = x2APIC
        base = value & 0x000F_FFFF_FFFF_F000
    }

    @inline(__always) public func read(_ offset: Int) -> UInt32 {
        if isX2APIC { return UInt32(truncatingIfNeeded: cpu_rdmsr(LocalAPICRegister.msr(offset))) }
        return cpu_mmio_read32(UInt(base) &+ UInt(offset))
    }

    @inline(__always) public func write(_ offset: Int, _ value: UInt32) {
        if isX2APIC {
            cpu_wrmsr(LocalAPICRegister.msr(offset), UInt64(value))
        } else {
            cpu_mmio_write32(UInt(base) &+ UInt(offset), value)
        }
    }

    /// The APIC ID: bits 31:24 of the ID register in xAPIC mode, all 32
    /// bits in x2APIC mode.
    public var id: UInt32 { isX2APIC ? read(LocalAPICRegister.id) : read(LocalAPICRegister.id) >> 24 }

    /// Version register bits 7:0 and the number of LVT entries.
    public var version: UInt32 { read(LocalAPICRegister.version) }

    /// Software-enables the APIC (SVR bit 8) with `spuriousVector`, accepts
    /// every priority (TPR 0), masks LINT0 (the 8259s are masked too) and
    /// sets LINT1 to NMI as on PC systems, routes APIC errors to
    /// `errorVector` and clears the error status.
    public func enable(spuriousVector: UInt8, errorVector: UInt8) {
        write(LocalAPICRegister.spuriousVector, UInt32(spuriousVector) | 1 << 8)
        write(LocalAPICRegister.taskPriority, 0)
        write(LocalAPICRegister.lint0, LocalVectorTable.masked)
        write(LocalAPICRegister.lint1, LocalVectorTable.nmi)
        write(LocalAPICRegister.errorVector, UInt32(errorVector))
        write(LocalAPICRegister.errorStatus, 0)
        write(LocalAPICRegister.errorStatus, 0)
    }

    /// Ends the interrupt being serviced (the highest in-service vector).
    @inline(__always) public func endOfInterrupt() { write(LocalAPICRegister.endOfInterrupt, 0) }

    /// Whether `vector` is in service (ISR bit set): it was delivered by
    /// the APIC and needs an EOI.
    public func isInService(_ vector: UInt8) -> Bool {
        let register = LocalAPICRegister.inService + Int(vector >> 5) * 0x10
        return read(register) & (UInt32(1) << UInt32(vector & 31)) != 0
    }

    /// Reads and clears the Error Status Register (write, then read).
    public func errorStatus() -> UInt32 {
        write(LocalAPICRegister.errorStatus, 0)
        return read(LocalAPICRegister.errorStatus)
    }

    /// Sends an inter-processor interrupt (SMP bring-up uses INIT and
    /// STARTUP through this; a fixed vector to `.this` is a self-IPI).
    /// In xAPIC mode waits (bounded) until the previous IPI left.
    public func send(_ command: InterruptCommand) {
        if isX2APIC {
            cpu_wrmsr(Self.x2APICICR, command.x2APICValue)
            return
        }
        var spins = 0
        while read(LocalAPICRegister.interruptCommandLow) & (1 << 12) != 0 && spins < 1_000_000 {
            cpu_pause()
            spins += 1
        }
        write(LocalAPICRegister.interruptCommandHigh, command.xAPICHigh)
        write(LocalAPICRegister.interruptCommandLow, command.low)
    }
}
#endif
