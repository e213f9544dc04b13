// XenPVTraps: the PV replacement for the IDT (Xen public/arch-x86/xen.h
// trap_info and HYPERVISOR_set_trap_table; xen.h set_callbacks). A PV
// kernel may not LIDT: it gives Xen a virtual IDT of handler addresses
// and the event and failsafe callbacks, all entered in the flat kernel
// code segment (arch-x86/xen-x86_64.h FLAT_KERNEL_CS).
import CXen

/// Building and installing the trap table and the callbacks.
public enum XenPVTraps {
    /// The exception vectors given a handler: 0–19 without NMI (2, which
    /// Xen delivers through CALLBACKTYPE_nmi) and the reserved 15.
    public static let vectors: [UInt8] = [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19]
    /// Entries a table needs: one per vector and the sentinel.
    public static var entryCount: Int { 19 }
    /// trap_info.flags bit 2: mask events on entry, like an interrupt gate.
    public static var masksEvents: UInt8 { 4 }

    /// Fills `table` (at least `entryCount` entries) with a handler per
    /// vector, `handler(vector)` giving its address, and the sentinel.
    /// Breakpoint (3) may be raised by INT3 from the kernel (DPL 3); other
    /// vectors only by the CPU (DPL 0).
    public static func fill(_ table: UnsafeMutableBufferPointer<trap_info>, handler: (UInt8) -> UInt64) -> Int {
        precondition(table.count >= entryCount, "trap table too small")
        var index = 0
        for vector in vectors {
            table[index] = trap_info(
                vector: vector, flags: (vector == 3 ? 3 : 0) | masksEvents, cs: UInt16(FLAT_KERNEL_CS),
                address: UInt(handler(vector)))
            index += 1
        }
        table[index] = trap_info(vector: 0, flags: 0, cs: 0, address: 0)
        return index + 1
    }

    /// Installs `table` and the two callbacks.
    public static func install<H: XenPVHypercalls>(
        table: UnsafeBufferPointer<trap_info>, eventCallback: UInt64, failsafeCallback: UInt64, hypervisor: inout H
    ) throws(XenPVError) {
        try hypervisor.installTrapTable(table)
        try hypervisor.registerCallbacks(event: eventCallback, failsafe: failsafeCallback)
    }
}
