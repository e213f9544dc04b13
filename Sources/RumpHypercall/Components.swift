// rumpuser_component_*: helpers for the host halves of rump kernel drivers
// (NetBSD lib/librumpuser/rumpuser_component.h).

import CRumpUser

/// Releases the calling thread's CPU before it blocks in the host; the
/// returned cookie goes to rumpuser_component_schedule.
@_spi(RumpUserABI) @_cdecl("rumpuser_component_unschedule")
public func rumpuserComponentUnschedule() -> UnsafeMutableRawPointer? {
    UnsafeMutableRawPointer(bitPattern: Int(crumpuser_unschedule(nil)))
}

@_spi(RumpUserABI) @_cdecl("rumpuser_component_schedule")
public func rumpuserComponentSchedule(_ cookie: UnsafeMutableRawPointer?) {
    crumpuser_schedule(Int32(truncatingIfNeeded: Int(bitPattern: cookie)), nil)
}

/// Host errno → NetBSD errno, for components returning host errors.
@_spi(RumpUserABI) @_cdecl("rumpuser_component_errtrans")
public func rumpuserComponentErrtrans(_ hostError: Int32) -> Int32 {
    netbsdErrno(fromHost: hostError)
}

/// Gives the calling host thread a rump kernel lwp of its own.
@_spi(RumpUserABI) @_cdecl("rumpuser_component_kthread")
public func rumpuserComponentKthread() {
    crumpuser_hyp_schedule()
    _ = crumpuser_hyp_newlwp(0)
    crumpuser_hyp_unschedule()
}

@_spi(RumpUserABI) @_cdecl("rumpuser_component_curlwp")
public func rumpuserComponentCurlwp() -> OpaquePointer? {
    crumpuser_hyp_schedule()
    let lwp = crumpuser_hyp_curlwp()
    crumpuser_hyp_unschedule()
    return lwp
}

@_spi(RumpUserABI) @_cdecl("rumpuser_component_switchlwp")
public func rumpuserComponentSwitchlwp(_ lwp: OpaquePointer?) {
    crumpuser_hyp_schedule()
    crumpuser_hyp_switch(lwp)
    crumpuser_hyp_unschedule()
}

@_spi(RumpUserABI) @_cdecl("rumpuser_component_kthread_release")
public func rumpuserComponentKthreadRelease() {
    crumpuser_hyp_schedule()
    crumpuser_hyp_release()
    crumpuser_hyp_unschedule()
}

/// Interrupt context for a host thread: a virtual CPU through hyp_schedule
/// (a thread with no lwp gets a temporary one from the kernel).
@_spi(RumpUserABI) @_cdecl("rumpuser_component_schedule_intr")
public func rumpuserComponentScheduleIntr() {
    crumpuser_hyp_schedule()
}

/// Ends interrupt context: hyp_unschedule gives the CPU back and drops a
/// temporary lwp.
@_spi(RumpUserABI) @_cdecl("rumpuser_component_unschedule_intr")
public func rumpuserComponentUnscheduleIntr() {
    crumpuser_hyp_unschedule()
}
