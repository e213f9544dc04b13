// Services: clocks, parameters, console, termination, signals and entropy
// of the guest rumpuser implementation (rumpuser(3) sections "Clocks",
// "Parameters", "Termination", "Console output", "Random pool").
import BareMetalKit
import CRumpUserGuest
import Rumprun

// MARK: Clocks

@_cdecl("rumpuser_clock_gettime")
public func rumpuserClockGettime(_ clock: Int32, _ seconds: UnsafeMutablePointer<Int64>?, _ nanoseconds: UnsafeMutablePointer<Int>?) -> Int32 {
    let now: UInt64
    switch UInt32(bitPattern: clock) {
    case RUMPUSER_CLOCK_RELWALL.rawValue: now = Clock.wall
    case RUMPUSER_CLOCK_ABSMONO.rawValue: now = Clock.monotonic
    default: return NetBSDError.EINVAL
    }
    seconds?.pointee = Int64(now / 1_000_000_000)
    nanoseconds?.pointee = Int(now % 1_000_000_000)
    return 0
}

/// RELWALL sleeps for a duration, ABSMONO until a monotonic time; both on
/// the guest's monotonic clock, with the virtual CPU released.
@_cdecl("rumpuser_clock_sleep")
public func rumpuserClockSleep(_ clock: Int32, _ seconds: Int64, _ nanoseconds: Int) -> Int32 {
    guard seconds >= 0, nanoseconds >= 0, nanoseconds < 1_000_000_000 else { return NetBSDError.EINVAL }
    let (product, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
    let span = overflow ? UInt64.max : product.addingReportingOverflow(UInt64(nanoseconds)).overflow ? UInt64.max : product + UInt64(nanoseconds)
    let deadline: UInt64
    switch UInt32(bitPattern: clock) {
    case RUMPUSER_CLOCK_RELWALL.rawValue:
        let (sum, late) = Clock.monotonic.addingReportingOverflow(span)
        deadline = late ? UInt64.max : sum
    case RUMPUSER_CLOCK_ABSMONO.rawValue:
        deadline = span
    default:
        return NetBSDError.EINVAL
    }
    Upcalls.blocking {
        var now = Clock.monotonic
        while now < deadline {
            ThreadRuntime.sleep(until: timerDeadline(deadline, now: now))
            now = Clock.monotonic
        }
    }
    return 0
}

// MARK: Parameters

/// `_RUMPUSER_NCPU`: the CPUs the guest runs threads on (every CPU that
/// came up at boot). `_RUMPUSER_HOSTNAME`: the guest
/// configuration's host name, truncated to the buffer. Other names starting
/// with `_` are unknown (EINVAL); the rest are environment variables of the
/// guest configuration (unset: ENOENT; too long for the buffer: ERANGE).
@_cdecl("rumpuser_getparam")
public func rumpuserGetparam(_ name: UnsafePointer<CChar>?, _ buffer: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    guard let name, let buffer else { return NetBSDError.EINVAL }
    let key = bytes(of: name)
    let output = buffer.assumingMemoryBound(to: UInt8.self)
    func store(_ value: [UInt8], truncate: Bool) -> Int32 {
        guard length > 0 else { return NetBSDError.ERANGE }
        if value.count + 1 > length && !truncate { return NetBSDError.ERANGE }
        let count = min(value.count, length - 1)
        for index in 0..<count { output[index] = value[index] }
        output[count] = 0
        return 0
    }
    if key == bytes(of: "_RUMPUSER_NCPU") {
        return store(Array(String(GuestRumpUser.processorCount).utf8), truncate: false)
    }
    if key == bytes(of: "_RUMPUSER_HOSTNAME") {
        return store(Array(Rumprun.hostname.utf8), truncate: true)
    }
    if key.first == UInt8(ascii: "_") { return NetBSDError.EINVAL }
    guard let value = Rumprun.environment(String(decoding: key, as: UTF8.self)) else { return NetBSDError.ENOENT }
    return store(Array(value.utf8), truncate: false)
}

// MARK: Console and termination

@_cdecl("rumpuser_putchar")
public func rumpuserPutchar(_ character: Int32) {
    _ = putchar(character)
}

/// RUMPUSER_PANIC stops the guest with a panic report (launcher status
/// 120); any other value is the guest's exit status.
@_cdecl("rumpuser_exit")
public func rumpuserExit(_ status: Int32) -> Never {
    if status == RUMPUSER_PANIC { Platform.panic("rump kernel panic (rumpuser_exit)") }
    Platform.exit(status)
}

/// There is no host process: `pid` is ignored (the guest is the process).
/// Signal 0 checks existence; signals whose default action is to be ignored
/// or to stop the process do nothing (no job control); the others end the
/// guest as their default action would, with a panic report naming them.
@_cdecl("rumpuser_kill")
public func rumpuserKill(_ pid: Int64, _ signal: Int32) -> Int32 {
    switch signal {
    case 0: return 0
    // NetBSD: SIGURG 16, SIGSTOP 17, SIGTSTP 18, SIGCONT 19, SIGCHLD 20,
    // SIGTTIN 21, SIGTTOU 22, SIGIO 23, SIGWINCH 28, SIGINFO 29, SIGPWR 32.
    case 16...23, 28, 29, 32: return 0
    case 1...32:
        Platform.write("rumpuser: killed by signal ")
        Platform.writeDecimal(UInt64(signal))
        Platform.write("\n")
        Platform.panic("rump kernel killed by a signal (rumpuser_kill)")
    default:
        return NetBSDError.EINVAL
    }
}

// MARK: Entropy

/// Fills the whole buffer from the platform generator (arc4random_buf);
/// it never blocks, so RANDOM_HARD and RANDOM_NOWAIT change nothing.
@_cdecl("rumpuser_getrandom")
public func rumpuserGetrandom(_ buffer: UnsafeMutableRawPointer?, _ length: Int, _ flags: Int32, _ returned: UnsafeMutablePointer<Int>?) -> Int32 {
    guard let returned else { return NetBSDError.EINVAL }
    returned.pointee = 0
    guard flags & ~(RUMPUSER_RANDOM_HARD | RUMPUSER_RANDOM_NOWAIT) == 0 else { return NetBSDError.EINVAL }
    guard length > 0 else { return 0 }
    guard let buffer else { return NetBSDError.EINVAL }
    arc4random_buf(buffer, length)
    returned.pointee = length
    return 0
}

// MARK: Dynamic loading, daemonizing, syscall proxy

// rumpuser_dl_bootstrap is C (CRumpUserGuest): it walks the link sets.

/// A unikernel has no parent to detach from: both steps succeed at once.
@_cdecl("rumpuser_daemonize_begin")
public func rumpuserDaemonizeBegin() -> Int32 { 0 }

@_cdecl("rumpuser_daemonize_done")
public func rumpuserDaemonizeDone(_ error: Int32) -> Int32 { 0 }

/// The syscall proxy needs sockets: refused with EOPNOTSUPP.
@_cdecl("rumpuser_sp_init")
public func rumpuserSpInit(_ url: UnsafePointer<CChar>?, _ ostype: UnsafePointer<CChar>?, _ osrelease: UnsafePointer<CChar>?, _ machine: UnsafePointer<CChar>?) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_copyin")
public func rumpuserSpCopyin(_ arg: UnsafeMutableRawPointer?, _ raddr: UnsafeRawPointer?, _ laddr: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_copyinstr")
public func rumpuserSpCopyinstr(_ arg: UnsafeMutableRawPointer?, _ raddr: UnsafeRawPointer?, _ laddr: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_copyout")
public func rumpuserSpCopyout(_ arg: UnsafeMutableRawPointer?, _ laddr: UnsafeRawPointer?, _ raddr: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_copyoutstr")
public func rumpuserSpCopyoutstr(_ arg: UnsafeMutableRawPointer?, _ laddr: UnsafeRawPointer?, _ raddr: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_anonmmap")
public func rumpuserSpAnonmmap(_ arg: UnsafeMutableRawPointer?, _ length: Int, _ result: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_raise")
public func rumpuserSpRaise(_ arg: UnsafeMutableRawPointer?, _ signal: Int32) -> Int32 {
    NetBSDError.EOPNOTSUPP
}

@_cdecl("rumpuser_sp_fini")
public func rumpuserSpFini(_ arg: UnsafeMutableRawPointer?) {}

/// Facts about the guest implementation for applications and tests.
public enum GuestRumpUser {
    /// What `_RUMPUSER_NCPU` reports: the CPUs the scheduler runs threads on.
    public static var processorCount: Int { ThreadRuntime.processorsForThreads }
}
