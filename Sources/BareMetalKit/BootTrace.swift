// BootTrace: the TSC at the end of each step of bmk_boot_main, so a
// benchmark can say where boot time goes (Benchmarks/platform prints the
// steps; the thread runtime's start is the rest, up to `main`). Recording costs one RDTSC and a store per step.
#if hasFeature(Embedded)
import CPUPrimitives

/// The steps of the hw boot path, in order.
public enum BootStep: Int, CaseIterable, Sendable {
    /// Console and the first exception handlers.
    case console
    /// Boot information, page allocator, page tables, GDT/TSS/IST stacks, heap.
    case memory
    /// Entropy pool seeding and the stack guard.
    case random
    /// Boot information parsed in full and the guest configuration read.
    case configuration
    /// IDT vectors, local APIC, IOAPICs.
    case interrupts
    /// Clock calibration and AP start-up (`Processors.startAll`).
    case processors

    public var name: StaticString {
        switch self {
        case .console: return "console"
        case .memory: return "memory"
        case .random: return "random"
        case .configuration: return "configuration"
        case .interrupts: return "interrupts"
        case .processors: return "clock+processors"
        }
    }
}

public enum BootTrace {
    nonisolated(unsafe) static var stamps: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)

    static func mark(_ step: BootStep) {
        let now = cpu_rdtsc()
        withUnsafeMutableBytes(of: &stamps) { $0.storeBytes(of: now, toByteOffset: step.rawValue * 8, as: UInt64.self) }
    }

    /// TSC at the end of `step` (0 when the boot has not got there).
    public static func timestamp(after step: BootStep) -> UInt64 {
        withUnsafeBytes(of: stamps) { $0.load(fromByteOffset: step.rawValue * 8, as: UInt64.self) }
    }

    /// TSC at the start of `step`: the end of the previous one, or the
    /// image's first instruction for the first step.
    public static func timestamp(before step: BootStep) -> UInt64 {
        step.rawValue == 0 ? Platform.bootTimestamp : timestamp(after: BootStep(rawValue: step.rawValue - 1)!)
    }
}
#endif
