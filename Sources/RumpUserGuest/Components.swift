// rumpuser_component_*: helpers for the platform halves of rump kernel
// drivers (rumpuser_component.h, shared with the host), on guest threads.
// The same semantics as the host library (Sources/RumpHypercall/
// Components.swift): unschedule/schedule carry the big-lock count in the
// cookie; kthread/curlwp/switchlwp/kthread_release run their lwp upcall
// with a CPU taken for the moment; schedule_intr/unschedule_intr are
// hyp_schedule/hyp_unschedule (a thread without an lwp runs on a temporary
// one the kernel binds and drops).
//
// The platform's own threads that enter the kernel use the same calls
// (`Component`): the rump PCI interrupt thread (RumpPCIInterrupts, hooked
// up at rumpuser_init) and the block I/O worker.
import CRumpUserGuest

enum Component {
    /// Gives the calling thread a kernel lwp of its own; returns without a CPU.
    static func makeKernelThread() {
        Upcalls.table.hyp_schedule?()
        _ = Upcalls.table.hyp_lwproc_newlwp?(0)
        Upcalls.table.hyp_unschedule?()
    }

    /// Takes a virtual CPU for a thread that holds none (interrupt context;
    /// a thread with no lwp gets a temporary one from the kernel).
    @inline(__always)
    static func enter() { Upcalls.table.hyp_schedule?() }

    /// Gives it back (the kernel drops a temporary lwp).
    @inline(__always)
    static func leave() { Upcalls.table.hyp_unschedule?() }

    /// Highest NetBSD errno (ENOTRECOVERABLE, NetBSD 9's ELAST).
    static var lastErrno: Int32 { 98 }
}

/// Releases the calling thread's CPU before it waits in the platform; the
/// cookie (the big-lock count) goes to rumpuser_component_schedule.
@_cdecl("rumpuser_component_unschedule")
public func rumpuserComponentUnschedule() -> UnsafeMutableRawPointer? {
    UnsafeMutableRawPointer(bitPattern: Int(Upcalls.unschedule()))
}

/// Takes a CPU again with the big-lock count of `cookie` (NULL: none, for a
/// component thread entering the kernel from outside).
@_cdecl("rumpuser_component_schedule")
public func rumpuserComponentSchedule(_ cookie: UnsafeMutableRawPointer?) {
    Upcalls.schedule(Int32(truncatingIfNeeded: Int(bitPattern: cookie)))
}

/// Platform error → NetBSD errno. The guest platform already speaks NetBSD
/// numbers (as NetBSD's own errtrans on a NetBSD host, it is the identity);
/// a value that is no NetBSD errno becomes EINVAL.
@_cdecl("rumpuser_component_errtrans")
public func rumpuserComponentErrtrans(_ error: Int32) -> Int32 {
    error >= 0 && error <= Component.lastErrno ? error : NetBSDError.EINVAL
}

/// Gives the calling guest thread (one the kernel did not create) a rump
/// kernel lwp of its own.
@_cdecl("rumpuser_component_kthread")
public func rumpuserComponentKthread() {
    Component.makeKernelThread()
}

@_cdecl("rumpuser_component_curlwp")
public func rumpuserComponentCurlwp() -> OpaquePointer? {
    Upcalls.table.hyp_schedule?()
    let lwp = Upcalls.table.hyp_lwproc_curlwp?()
    Upcalls.table.hyp_unschedule?()
    return lwp
}

@_cdecl("rumpuser_component_switchlwp")
public func rumpuserComponentSwitchlwp(_ lwp: OpaquePointer?) {
    Upcalls.table.hyp_schedule?()
    Upcalls.table.hyp_lwproc_switch?(lwp)
    Upcalls.table.hyp_unschedule?()
}

/// Releases the lwp rumpuser_component_kthread gave the thread.
@_cdecl("rumpuser_component_kthread_release")
public func rumpuserComponentKthreadRelease() {
    Upcalls.table.hyp_schedule?()
    Upcalls.table.hyp_lwproc_release?()
    Upcalls.table.hyp_unschedule?()
}

@_cdecl("rumpuser_component_schedule_intr")
public func rumpuserComponentScheduleIntr() {
    Component.enter()
}

@_cdecl("rumpuser_component_unschedule_intr")
public func rumpuserComponentUnscheduleIntr() {
    Component.leave()
}
