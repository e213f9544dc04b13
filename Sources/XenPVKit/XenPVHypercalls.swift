// XenPVHypercalls: the hypercalls only a PV kernel makes (Xen public/xen.h
// __HYPERVISOR_set_trap_table, set_callbacks, set_segment_base,
// xen_version; arch-x86/xen.h trap_info; arch-x86/xen-x86_64.h SEGBASE_*),
// beside the common `Hypercalls`, so the PV runtime's registration code
// runs against a model in host tests.
import CXen

/// The PV-only hypercalls, raw ABI shapes like `Hypercalls`.
public protocol XenPVHypercalls: Hypercalls {
    /// `__HYPERVISOR_set_trap_table`: `traps` points at `trap_info`
    /// entries ended by one whose `address` is 0.
    mutating func setTrapTable(_ traps: UnsafePointer<trap_info>) -> Int
    /// `__HYPERVISOR_set_callbacks` (x86-64: event, failsafe and syscall
    /// entry addresses; 0 leaves syscall unset).
    mutating func setCallbacks(event: UInt64, failsafe: UInt64, syscall: UInt64) -> Int
    /// `__HYPERVISOR_set_segment_base` (`SEGBASE_FS`, `SEGBASE_GS_KERNEL`, ...).
    mutating func setSegmentBase(_ which: UInt32, _ base: UInt64) -> Int
    /// `__HYPERVISOR_xen_version` with `XENVER_version` and no buffer:
    /// the cheapest hypercall, made after unmasking events so that Xen
    /// delivers an upcall that became pending while they were masked.
    mutating func xenVersion() -> Int
}

/// A PV hypercall failed.
public enum XenPVHypercall: Equatable, Sendable {
    case setTrapTable, setCallbacks, setSegmentBase
}

/// Which segment base `set_segment_base` changes (xen-x86_64.h).
public enum XenSegmentBase: UInt32, Sendable {
    /// `SEGBASE_FS`: the thread pointer of x86-64 ELF TLS.
    case fs = 0
    /// `SEGBASE_GS_KERNEL`: GS in guest kernel mode (the per-CPU block).
    case gsKernel = 2
}

/// Errors of the PV runtime's set-up; each carries what Xen said.
public enum XenPVError: Error, Equatable, Sendable {
    /// A PV hypercall returned `status` (a negative Xen errno).
    case refused(XenPVHypercall, status: Int)
    /// A common hypercall failed.
    case hypercall(HypercallError)
    /// The page-table builder ran out of mapped pages for new tables.
    case noPageForPageTable(virtualAddress: UInt64)
    /// An existing page-table entry names a frame that is not one of the
    /// bootstrap or new page-table pages.
    case unknownPageTable(machineFrame: UInt64, level: Int)
    /// Xen applied only `applied` of `requested` updates of a batch.
    case partialUpdate(requested: Int, applied: Int)
    /// The domain is larger than this runtime maps (one L3 table: 512 GiB).
    case tooManyPages(UInt64)
    /// The P2M list has an invalid entry for pseudo-physical frame `pfn`.
    case invalidFrame(pfn: UInt64, machineFrame: UInt64)
}

extension XenPVHypercalls {
    /// Installs the trap table; `set_trap_table`.
    public mutating func installTrapTable(_ traps: UnsafeBufferPointer<trap_info>) throws(XenPVError) {
        guard let base = traps.baseAddress, let last = traps.last, last.address == 0 else {
            // The table must end with its sentinel; refuse before Xen reads past it.
            throw .refused(.setTrapTable, status: -Int(XEN_EINVAL.rawValue))
        }
        let status = setTrapTable(base)
        if status < 0 { throw .refused(.setTrapTable, status: status) }
    }

    /// Registers the event and failsafe callbacks; `set_callbacks`.
    public mutating func registerCallbacks(event: UInt64, failsafe: UInt64) throws(XenPVError) {
        let status = setCallbacks(event: event, failsafe: failsafe, syscall: 0)
        if status < 0 { throw .refused(.setCallbacks, status: status) }
    }

    /// Sets FS or kernel GS base; `set_segment_base`.
    public mutating func setBase(_ which: XenSegmentBase, _ base: UInt64) throws(XenPVError) {
        let status = setSegmentBase(which.rawValue, base)
        if status < 0 { throw .refused(.setSegmentBase, status: status) }
    }
}

#if hasFeature(Embedded)
extension HypercallPage: XenPVHypercalls {
    public func setTrapTable(_ traps: UnsafePointer<trap_info>) -> Int {
        call(__HYPERVISOR_set_trap_table, UInt(bitPattern: traps))
    }
    public func setCallbacks(event: UInt64, failsafe: UInt64, syscall: UInt64) -> Int {
        call(__HYPERVISOR_set_callbacks, UInt(event), UInt(failsafe), UInt(syscall))
    }
    public func setSegmentBase(_ which: UInt32, _ base: UInt64) -> Int {
        call(__HYPERVISOR_set_segment_base, UInt(which), UInt(base))
    }
    public func xenVersion() -> Int {
        call(__HYPERVISOR_xen_version, 0, 0)
    }
}
#endif
