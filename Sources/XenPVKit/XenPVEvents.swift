// XenPVEvents: interrupt masking, idle and the timer of a PV vCPU (Xen
// public/xen.h vcpu_info.evtchn_upcall_mask/evtchn_upcall_pending,
// sched.h SCHEDOP_block, vcpu.h VCPUOP_set_singleshot_timer, xen.h
// set_timer_op and VIRQ_TIMER). A PV kernel may not execute CLI, STI or
// HLT: its interrupt flag is the mask byte in its vcpu_info, and its halt
// is SCHEDOP_block, which unmasks and checks for pending events atomically.
import BareMetalKit
import CXen

/// The interrupt flag of a PV vCPU, in RFLAGS form (bit 9 set = events
/// enabled), so callers written for PUSHF/CLI/STI keep working.
public struct XenPVInterruptFlag {
    /// RFLAGS.IF.
    public static var enabledBit: UInt64 { 1 << 9 }

    let mask: UnsafeMutableRawPointer
    let pending: UnsafeMutableRawPointer

    /// The caller guarantees `vcpuInfo` points at this vCPU's `vcpu_info`
    /// (inside shared info) for as long as the flag is used.
    public init(vcpuInfo: UnsafeMutableRawPointer) {
        mask = vcpuInfo + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask
        pending = vcpuInfo + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending
    }

    /// `vcpu_info` of vCPU `vcpu` in shared info.
    public static func vcpuInfo(sharedInfo: UnsafeMutableRawPointer, vcpu: Int = 0) -> UnsafeMutableRawPointer {
        sharedInfo + CXEN_OFFSETOF_shared_info_vcpu_info + vcpu * MemoryLayout<vcpu_info>.size
    }

    /// Events enabled (mask byte 0).
    public var isEnabled: Bool { cxen_load8(mask) == 0 }

    /// Whether Xen has marked an upcall pending.
    public var upcallPending: Bool { cxen_load8(pending) != 0 }

    /// Masks events; returns the previous state in RFLAGS form.
    @inline(__always)
    public func saveAndDisable() -> UInt64 {
        let was = cxen_load8(mask)
        cxen_store8(mask, 1)
        cxen_mb()
        return was == 0 ? Self.enabledBit : 0
    }

    @inline(__always)
    public func disable() {
        cxen_store8(mask, 1)
        cxen_mb()
    }

    /// Unmasks events. An event that arrived while they were masked set
    /// `evtchn_upcall_pending` without an upcall; a hypercall makes Xen
    /// deliver it on the way back.
    @inline(__always)
    public func enable<H: XenPVHypercalls>(hypervisor: inout H) {
        cxen_mb()
        cxen_store8(mask, 0)
        cxen_mb()
        if cxen_load8(pending) != 0 { _ = hypervisor.xenVersion() }
    }

    /// Unmasks if `flags` (from `saveAndDisable`) had events enabled.
    @inline(__always)
    public func restore<H: XenPVHypercalls>(_ flags: UInt64, hypervisor: inout H) {
        if flags & Self.enabledBit != 0 { enable(hypervisor: &hypervisor) }
    }

    /// The idle wait, entered with events masked: `SCHEDOP_block` unmasks,
    /// sleeps unless an event is pending, and Xen runs the event callback
    /// before returning. Returns with events masked again.
    public func block<H: XenPVHypercalls>(hypervisor: inout H) {
        hypervisor.block()
        disable()
    }
}

/// The event callback's work (xen.h 2-level ABI): acknowledge the upcall,
/// take the selector, and clear each pending port that is not masked.
public enum XenPVEventAcknowledgement {
    /// Acknowledges vCPU 0's upcall; returns how many ports were pending
    /// and unmasked (now cleared). Masked pending ports stay pending.
    @discardableResult
    public static func acknowledge(sharedInfo: UnsafeMutableRawPointer) -> Int {
        let vcpu = XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo)
        cxen_store8(vcpu + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending, 0)
        cxen_mb()
        var selector = cxen_xchg64(vcpu + CXEN_OFFSETOF_vcpu_info_evtchn_pending_sel, 0)
        var cleared = 0
        while selector != 0 {
            let word = selector.trailingZeroBitCount
            selector &= selector &- 1
            let pending = sharedInfo + CXEN_OFFSETOF_shared_info_evtchn_pending + word * 8
            let mask = sharedInfo + CXEN_OFFSETOF_shared_info_evtchn_mask + word * 8
            let ready = cxen_load64(pending) & ~cxen_load64(mask)
            if ready != 0 {
                cxen_and64(pending, ~ready)
                cleared += ready.nonzeroBitCount
            }
        }
        return cleared
    }
}

/// The PV event callback's work once the domain has devices: the pending
/// ports go through the same `XenEvents` table the PVH upcall uses, so a
/// bound port's handler wakes its thread and a port without handler is
/// masked again; the timer's port is bound there with a handler that does
/// nothing (ending the block is all it is for). Before that table exists
/// (start of day, or a domain without devices) the upcall is only
/// acknowledged (`XenPVEventAcknowledgement`).
public enum XenPVEventCallback {
    /// Runs the callback for vCPU 0; returns how many pending ports it took.
    @discardableResult
    public static func handle<H: Hypercalls>(sharedInfo: UnsafeMutableRawPointer, events: XenEvents<H>?) -> Int {
        guard let events else { return XenPVEventAcknowledgement.acknowledge(sharedInfo: sharedInfo) }
        return events.dispatch()
    }

    /// Binds the timer's port in `events` (which masked every port when it
    /// took over shared info) with a handler that does nothing, unmasking it.
    public static func keepTimer<H: Hypercalls>(_ timer: XenPVTimer, in events: XenEvents<H>) throws(EventChannelError) {
        try events.bind(timer.port) { _ in }
    }
}

/// What the PV timer could not do.
public enum XenPVTimerError: Error, Equatable, Sendable {
    /// Binding `VIRQ_TIMER` failed.
    case bind(HypercallError)
    /// `VCPUOP_set_singleshot_timer` refused (other than `-ENOSYS`).
    case singleshot(HypercallError)
    /// `set_timer_op` refused.
    case legacy(HypercallError)
    /// No consistent `vcpu_time_info` to convert a TSC deadline with.
    case noTimeRecord
}

/// The one-shot timer of vCPU 0: `VIRQ_TIMER` bound to a port (which the
/// event callback sees when it fires), armed for an absolute Xen system
/// time with `VCPUOP_set_singleshot_timer`, or `set_timer_op` where Xen
/// lacks the per-vCPU call.
public struct XenPVTimer: Equatable, Sendable {
    public let port: EventChannelPort
    public private(set) var usesLegacyTimerOp = false
    /// Arming requests made (statistics).
    public private(set) var armed: UInt64 = 0

    /// Binds `VIRQ_TIMER` on vCPU 0.
    public static func start<H: Hypercalls>(hypervisor: inout H) throws(XenPVTimerError) -> XenPVTimer {
        do throws(HypercallError) {
            return XenPVTimer(port: try hypervisor.bindVIRQ(UInt32(VIRQ_TIMER), vcpu: 0))
        } catch {
            throw .bind(error)
        }
    }

    init(port: EventChannelPort) { self.port = port }

    /// Arms the timer for Xen system time `deadline` (nanoseconds). A Xen
    /// without the per-vCPU call (`-ENOSYS`) gets `set_timer_op` from then on.
    public mutating func arm<H: Hypercalls>(systemTime deadline: UInt64, hypervisor: inout H) throws(XenPVTimerError) {
        armed &+= 1
        let value = max(deadline, 1)  // 0 would cancel
        if !usesLegacyTimerOp {
            do throws(HypercallError) {
                try hypervisor.setSingleshotTimer(vcpu: 0, deadline: value)
                return
            } catch {
                guard case .failed(_, _, let status) = error, status == -Int(XEN_ENOSYS.rawValue) else {
                    throw .singleshot(error)
                }
                usesLegacyTimerOp = true
            }
        }
        do throws(HypercallError) {
            try hypervisor.setTimer(deadline: value)
        } catch {
            throw .legacy(error)
        }
    }

    /// Arms the timer for TSC value `deadline`, converted to system time
    /// with vCPU 0's `vcpu_time_info`.
    public mutating func arm<H: Hypercalls>(
        tsc deadline: UInt64, sharedInfo: UnsafeRawPointer, hypervisor: inout H
    ) throws(XenPVTimerError) {
        guard let record = XenTime.record(sharedInfo: sharedInfo) else { throw .noTimeRecord }
        try arm(systemTime: Self.systemTime(atTSC: deadline, record: record), hypervisor: &hypervisor)
    }

    /// Xen system time at TSC value `tsc` (pvclock: `system_time` plus the
    /// scaled TSC delta; a TSC before the record's stamp gives its time).
    public static func systemTime(atTSC tsc: UInt64, record: PVClockTimeInfo) -> UInt64 {
        tsc <= record.tscTimestamp ? record.systemTime : record.nanoseconds(atTSC: tsc)
    }
}
